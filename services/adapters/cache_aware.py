"""Cache-aware FastConformer-RNNT streaming (Nemotron-Speech, Parakeet realtime) on NeMo's
multi-stream inference pipeline.

NeMo 3.0's `CacheAwareRNNTPipeline` already keeps each stream's encoder cache in a slot of
one preallocated tensor, its feature buffer and its RNNT hypothesis, and runs any set of
streams in one batched `transcribe_step`. This adapter only translates: our StepItems
into NeMo Frames, NeMo's step outputs into protocol events, and our release into freeing
the stream's slots (NeMo frees them only on a last frame).

The workers default to `vectorised.py` (same results, a fraction of the host time per stream);
this adapter stays selectable (`--decoder-path nemo`) as the reference and for comparison.
"""

from __future__ import annotations

import logging

import numpy as np

from pipecat_nvasr.protocol import BoostPhrase, Final, Partial, Word

from ..engine.adapter import StepItem, StepOutput, StreamingAdapter
from .utterances import utterance_pipeline_class

logger = logging.getLogger(__name__)

# chunk (ms) → att_context_size [left, right] in encoder frames (80 ms each)
# chunk → att_context_size. 320 ms: chunked_limited attention needs left % (right + 1) == 0, so
# no [70, 3]; a model trained with another left context for 320 ms gets its own (`served_context`).
CHUNK_CONTEXTS = {80: [70, 0], 160: [70, 1], 320: [68, 3], 560: [70, 6], 1120: [70, 13]}


def served_context(trained: list, wanted: list) -> list:
    """`wanted`, or the model's own context with the same look-ahead (chunk size) if it has another left."""
    trained = [list(c) for c in trained]
    if list(wanted) in trained:
        return list(wanted)
    same = [c for c in trained if c[1] == wanted[1]]
    if not same:
        chunks = sorted(80 * (c[1] + 1) for c in trained)
        raise ValueError(f"the model was not trained for {80 * (wanted[1] + 1)} ms chunks; it takes {chunks} ms")
    return same[0]


def pipeline_config(
    model: str,
    chunk_ms: int,
    max_streams: int,
    device: str = "cpu",
    compute_dtype: str = "float32",
    endpoint_silence_ms: int = 720,
    boosting: bool = True,
) -> dict:
    """The NeMo inference-pipeline config for one cache-aware RNNT model."""
    if chunk_ms not in CHUNK_CONTEXTS:
        raise ValueError(f"chunk_ms must be one of {sorted(CHUNK_CONTEXTS)}, not {chunk_ms}")
    return {
        "asr_decoding_type": "rnnt",
        "pipeline_type": "cache_aware",
        "asr": {
            "model_name": model,
            "device": device,
            "device_id": 0,
            "compute_dtype": compute_dtype,
            "use_amp": False,
            "decoding": {
                "strategy": "greedy_batch",
                "greedy": {
                    "max_symbols": 10,
                    "preserve_frame_confidence": True,
                    "enable_per_stream_biasing": boosting,
                },
            },
        },
        "confidence": {"exclude_blank": True, "aggregation": "mean", "method_cfg": {"name": "max_prob"}},
        "streaming": {
            "sample_rate": 16000,
            "batch_size": max_streams,
            "num_slots": max_streams,
            "att_context_size": CHUNK_CONTEXTS[chunk_ms],
            "use_cache": True,
            "use_feat_cache": True,
            "word_boundary_tolerance": 4,
            "request_type": "frame",
            "chunk_size_in_secs": None,
        },
        # NeMo ends an utterance after this much trailing silence (blank run). Residue tokens
        # must stay 0: with a residue, a first token landing in the last slot of a blank-filled
        # label buffer is skipped by the check and the utterance ends after its first piece.
        "endpointing": {"stop_history_eou": endpoint_silence_ms, "residue_tokens_at_end": 0},
        "enable_itn": False,
        "enable_nmt": False,
        "asr_output_granularity": "word",
        "return_tail_result": False,
        "itn": {"batch_size": 32, "n_jobs": 1, "left_padding_size": 4},
        "nmt": None,
        "cache_dir": None,
        "lang": "en",
    }


class CacheAwareRNNTAdapter(StreamingAdapter):
    def __init__(
        self,
        model: str,
        chunk_ms: int = 160,
        max_streams: int = 256,
        device: str = "cpu",
        dtype: str = "float32",
        endpoint_silence_ms: int = 720,
    ):
        import torch
        from omegaconf import OmegaConf
        from nemo.collections.asr.inference.factory.cache_aware_pipeline_builder import (
            CacheAwarePipelineBuilder,
        )

        self._torch = torch
        self.model_name = model
        self.max_streams = max_streams
        compute = "float32" if dtype == "float64" else dtype
        cfg = self._pipeline_config(model, chunk_ms, max_streams, device, compute, endpoint_silence_ms)
        self.pipeline = CacheAwarePipelineBuilder.build(OmegaConf.create(cfg))
        self.pipeline.__class__ = utterance_pipeline_class(type(self.pipeline))
        self.pipeline.init_utterances()
        self._pad_stream_starts_like_training()
        if dtype == "float64":
            self._use_float64()
        self.sample_rate = self.pipeline.sample_rate
        self.chunk_samples = int(round(self.pipeline.chunk_size_in_secs * self.sample_rate))
        self._processed: dict[int, int] = {}  # stream → samples seen
        self._utterance_start: dict[int, float] = {}  # stream → where the current utterance began
        self.pipeline.open_session()

    def _pipeline_config(self, model, chunk_ms, max_streams, device, compute_dtype, endpoint_silence_ms) -> dict:
        """NeMo's pipeline config; a subclass may adjust it (the EOU model's 80 ms shift)."""
        return pipeline_config(model, chunk_ms, max_streams, device, compute_dtype, endpoint_silence_ms)

    def _pad_stream_starts_like_training(self) -> None:
        """Fill the feature frames before a stream's first audio with zeros, not log-mel silence.

        The encoder's first step also reads its pre-encode context: the feature frames before the
        stream starts. NeMo's pipeline fills them with the log-mel value of digital silence
        (-16.6), which a model never sees in front of an utterance in training: there the causal
        subsampling conv pads with zeros, and NeMo's `conformer_stream_step` path does the same.
        With the log-mel fill our RNNT test model wrote a spurious first word on about a third
        of held-out streams (13.3 % WER through the worker, 4.4 % with zeros; offline 4.0 %).
        """
        bufferer = self.pipeline.bufferer
        bufferer.ZERO_LEVEL_SPEC_DB_VAL = 0.0  # read whenever a slot is given to a new stream
        bufferer.feature_buffer.fill_(0.0)

    def _use_float64(self) -> None:
        """Reference precision on CPU: exact-token comparisons need it (fp32 near-ties flip)."""
        torch = self._torch
        wrapper = self.pipeline.asr_model
        wrapper.asr_model.double()
        wrapper.cast_dtype = torch.float64
        cm = self.pipeline.context_manager
        cm.cache_last_channel = cm.cache_last_channel.double()
        cm.cache_last_time = cm.cache_last_time.double()

    # ------------------------------------------------------------------ engine contract

    def step(self, items: list[StepItem]) -> list[StepOutput]:
        from nemo.collections.asr.inference.streaming.framing.request import Frame

        # an end_utterance item without samples needs no model call: its audio was stepped already
        stepped = [i for i in items if len(i.samples) or i.is_last or not i.end_utterance]
        outputs = dict(zip((i.stream_id for i in stepped), self._transcribe(stepped, Frame)))
        ended = self.pipeline.end_utterances_now([i.stream_id for i in items if i.end_utterance and not i.is_last])
        results = []
        for item in items:
            result = self._convert(item, outputs.get(item.stream_id))
            if item.stream_id in ended:
                result.finals += self._finals(item.stream_id, ended[item.stream_id])
            results.append(result)
        for item in items:
            if item.is_last:
                self._forget(item.stream_id)
        return results

    def _transcribe(self, items: list[StepItem], Frame) -> list:
        if not items:
            return []
        frames = []
        for item in items:
            samples = item.samples
            if len(samples) < self.chunk_samples:
                samples = np.pad(samples, (0, self.chunk_samples - len(samples)))
            if item.is_first:
                self._processed[item.stream_id] = 0
                self._utterance_start[item.stream_id] = 0.0
            frames.append(
                Frame(
                    samples=self._torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)),
                    stream_id=item.stream_id,
                    is_first=item.is_first,
                    is_last=item.is_last,
                    length=len(item.samples),
                    options=self._options(item.boost or []) if item.is_first else None,
                )
            )
            if not item.is_first and item.boost is not None:
                self._change_boost(item.stream_id, item.boost)
        return self.pipeline.transcribe_step(frames)

    def release(self, stream_id: int) -> None:
        p = self.pipeline
        slot = p.context_manager.streamidx2slotidx.get(stream_id)
        if slot is not None:
            p.context_manager._reset_slots([slot])  # NeMo frees slots only on a last frame
        slot = p.bufferer.streamidx2slotidx.get(stream_id)
        if slot is not None:
            p.bufferer.free_slots([slot])
        state = p.get_state(stream_id)
        if state is not None and state.has_biasing_request():
            self._drop_biasing(state)
        p.delete_state(stream_id)
        self._forget(stream_id)

    def active_streams(self) -> int:
        return len(self.pipeline.context_manager.streamidx2slotidx) + len(self.pipeline._state_pool)

    # ------------------------------------------------------------------ helpers

    def _forget(self, stream_id: int) -> None:
        self._processed.pop(stream_id, None)
        self._utterance_start.pop(stream_id, None)

    def _options(self, boost: list[BoostPhrase]):
        from nemo.collections.asr.inference.streaming.framing.request_options import ASRRequestOptions

        if not boost:
            return ASRRequestOptions()
        from nemo.collections.asr.parts.context_biasing.biasing_multi_model import BiasingRequestItemConfig
        from nemo.collections.asr.parts.context_biasing.boosting_graph_batched import (
            BoostingTreeModelConfig,
        )

        tree = BoostingTreeModelConfig(key_phrases_list=[b.phrase for b in boost], use_triton=False)
        alpha = max(b.weight for b in boost)
        return ASRRequestOptions(
            biasing_cfg=BiasingRequestItemConfig(boosting_model_cfg=tree, boosting_model_alpha=alpha)
        )

    def _change_boost(self, stream_id: int, boost: list[BoostPhrase]) -> None:
        """New key phrases mid-stream: swap the stream's biasing model before its next step."""
        state = self.pipeline.get_state(stream_id)
        if state is None:
            return
        if state.has_biasing_request():
            self._drop_biasing(state)
        state.options.biasing_cfg = self._options(boost).biasing_cfg
        previous = state.get_previous_hypothesis()
        if previous is not None and state.options.biasing_cfg is None:
            previous.biasing_cfg = None

    def _drop_biasing(self, state) -> None:
        cfg = state.options.biasing_cfg
        try:
            computer = self.pipeline.asr_model.asr_model.decoding.decoding.decoding_computer
            if cfg.multi_model_id is not None and cfg.auto_manage_multi_model:
                cfg.remove_from_multi_model(biasing_multi_model=computer.biasing_multi_model)
        except AttributeError:
            pass

    def _convert(self, item: StepItem, out) -> StepOutput:
        """One stream's NeMo step output (None: it was not stepped) as our events."""
        sid = item.stream_id
        self._processed[sid] = self._processed.get(sid, 0) + len(item.samples)
        if out is None:
            return StepOutput()
        result = StepOutput(finals=self._finals(sid, out))
        partial = out.partial_transcript.strip()
        if partial and not (item.is_last or item.end_utterance):
            now = self._processed[sid] / self.sample_rate
            result.partial = Partial(text=partial, start=self._utterance_start.get(sid, 0.0), end=now)
        return result

    def _finals(self, sid: int, out) -> list[Final]:
        """The utterance NeMo's output ended, if any, in stream time."""
        now = self._processed.get(sid, 0) / self.sample_rate
        if not out.final_transcript.strip():
            return []
        words = [
            Word(
                word=s.text.strip(),
                start=round(min(s.start, now), 3),  # never past the audio heard so far
                end=round(min(s.end, now), 3),
                confidence=round(float(s.conf), 4),
            )
            for s in (out.final_segments or [])
            if s.text.strip()
        ]
        start = words[0].start if words else self._utterance_start.get(sid, 0.0)
        end = words[-1].end if words else now
        self._utterance_start[sid] = end
        return [Final(text=out.final_transcript.strip(), start=start, end=end, words=words)]
