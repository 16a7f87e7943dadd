"""Cache-aware FastConformer-RNNT streaming with a vectorised step (Nemotron, Parakeet realtime).

The same model, features, decoding and utterance rules as `CacheAwareRNNTAdapter` (NeMo's
`CacheAwareRNNTPipeline` + `utterances.py`), without its per-stream Python objects: every
stream's state is a row of preallocated tensors (`slots.py`), and a step is one feature
extraction (`features.py`), one `encoder.cache_aware_stream_step`, one batched greedy
label-looping decode continuing each row's decoder state (`greedy.py`), numpy endpointing
over the batch, and text only for streams that emitted tokens (`text.py`). Streams whose
last chunk this is run as a second group, as in NeMo (the encoder keeps all outputs for them).

Utterance rules (as `utterances.py`): an utterance ends on the stream's last chunk, on an end
marker token (`eou.py`'s `<EOU>`/`<EOB>`), or after `endpoint_silence_ms` of blank frames once
it has tokens; then only the decoder row restarts at <SOS> (encoder cache, feature context and
stream time carry on). A client finalize (`end_utterance`; its item may have no samples: no
model call) only splits the text: the utterance so far becomes a final, the decoder keeps its
state, and the next blank-run endpoint restarts it even without new tokens.
"""

from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np

from pipecat_nvasr.protocol import BoostPhrase, Final, Partial, Word

from ..engine.adapter import StepItem, StepOutput, StreamingAdapter
from .cache_aware import pipeline_config, served_context


def _wrapper_class():
    """NeMo's cache-aware RNNT model wrapper, also taking `random:` specs (built lazily: NeMo is heavy)."""
    from nemo.collections.asr.inference.model_wrappers.cache_aware_rnnt_inference_wrapper import (
        CacheAwareRNNTInferenceWrapper,
    )

    class ModelWrapper(CacheAwareRNNTInferenceWrapper):
        eou = False

        def load_model(self, model_name, map_location):
            from .. import random_models

            if not random_models.is_random(model_name):
                return CacheAwareRNNTInferenceWrapper.load_model(model_name, map_location)
            return random_models.build(model_name, eou=self.eou).to(map_location).eval()

    return ModelWrapper


class VectorisedRNNTAdapter(StreamingAdapter):
    eou_model = False  # `random:` specs build the EOU model class (the EOU subclass)
    _eou_id = -1

    def __init__(self, model: str, chunk_ms: int = 160, max_streams: int = 256, device: str = "cpu",
                 dtype: str = "float32", endpoint_silence_ms: int = 720, amp: bool = False, boosting: bool = True):
        """`dtype` float64 is the exact reference on CPU; `amp` runs float32 weights under
        bfloat16 autocast; `boosting=False` drops per-stream key phrases (see docs/architecture.md)."""
        import torch
        from omegaconf import OmegaConf
        from nemo.collections.asr.inference.factory.cache_aware_pipeline_builder import CacheAwarePipelineBuilder
        from nemo.collections.asr.inference.utils.bpe_decoder import BPEDecoder
        from nemo.collections.asr.inference.utils.pipeline_utils import get_leading_punctuation_regex_pattern

        from .features import FeatureFrontend
        from .greedy import BatchedGreedy
        from .slots import SlotStore
        from .text import UtteranceText

        self._torch = torch
        self.model_name = model
        self.max_streams = max_streams
        self.endpoint_silence_ms = endpoint_silence_ms
        cfg = self._pipeline_config(model, chunk_ms, max_streams, device, dtype, endpoint_silence_ms)
        # boosting=False: no fusion model, so NeMo keeps its CUDA-graph greedy decoder on a GPU
        cfg["asr"]["decoding"]["greedy"]["enable_per_stream_biasing"] = boosting
        cfg = OmegaConf.create(cfg)
        compute = "float32" if dtype == "float64" else dtype
        wrapper_cls = _wrapper_class()
        wrapper_cls.eou = self.eou_model
        w = wrapper_cls(
            model_name=model, decoding_cfg=CacheAwarePipelineBuilder.get_rnnt_decoding_cfg(cfg), device=device,
            device_id=0, compute_dtype=compute, use_amp=amp,
        )
        self.wrapper = w
        if dtype == "float64":
            w.asr_model.double()
            w.cast_dtype = torch.float64
        self.device = w.device
        self.amp = amp
        self.compute_dtype = w.compute_dtype

        # streaming geometry: NeMo's CacheAwareRNNTPipeline.init_parameters, same expressions
        context = served_context(w.asr_model.encoder.att_context_size_all, list(cfg.streaming.att_context_size))
        cfg.streaming.att_context_size = context
        w.set_default_att_context_size(att_context_size=context)
        pre_encode = w.get_pre_encode_cache_size()
        model_chunk = w.get_chunk_size()
        model_chunk = model_chunk[1] if isinstance(model_chunk, list) else model_chunk
        window_stride = w.get_window_stride()
        subsampling = w.get_subsampling_factor()
        if cfg.streaming.get("chunk_size_in_secs") is not None:
            chunk_secs = cfg.streaming.chunk_size_in_secs
            self.frames_per_chunk = math.ceil(np.trunc(chunk_secs / window_stride) / subsampling)
            w.setup_streaming_params(chunk_size=model_chunk // subsampling, shift_size=self.frames_per_chunk)
        else:
            chunk_secs = model_chunk * window_stride
            self.frames_per_chunk = math.ceil(model_chunk / subsampling)
        pre_encode = pre_encode[1] if isinstance(pre_encode, list) else pre_encode
        buffer_secs = pre_encode * window_stride + model_chunk * window_stride
        self.sample_rate = cfg.streaming.sample_rate
        self.chunk_samples = int(round(chunk_secs * self.sample_rate))
        self.drop_extra = w.drop_extra_pre_encoded
        self.stride_ms = w.get_model_stride(in_milliseconds=True)
        self.encoder = w.asr_model.encoder

        preprocessor, preprocessor_cfg = w.create_preprocessor()
        self.frontend = FeatureFrontend(preprocessor, self.sample_rate, chunk_secs, buffer_secs, window_stride)
        computer = w.asr_model.decoding.decoding.decoding_computer
        self.greedy = BatchedGreedy(computer)
        with torch.inference_mode(), self._autocast():
            sos = computer._get_batched_decoding_state_after_sos(device=self.device, batch_size=1)
        self.store = SlotStore(max_streams, self.encoder, sos, preprocessor_cfg.features,
                               self.frontend.buffer_frames, self.frontend.lookback, w.cast_dtype, self.device)
        if self.store.features.shape[2] != int(buffer_secs / window_stride):
            raise RuntimeError("feature buffer length mismatch")
        puncts = w.supported_punctuation()
        bpe = BPEDecoder(vocabulary=w.get_vocabulary(), tokenizer=w.tokenizer,
                         confidence_aggregator=w.confidence_aggregator, asr_supported_puncts=puncts,
                         word_boundary_tolerance=cfg.streaming.word_boundary_tolerance,
                         token_duration_in_secs=w.get_model_stride(in_secs=True))
        self.text = UtteranceText(max_streams, w.get_vocabulary(), bpe, w.word_separator,
                                  get_leading_punctuation_regex_pattern(puncts))
        self._boost_cfg: dict[int, object] = {}  # slot → NeMo biasing config
        # the step's audio is written into a pinned host buffer and goes up without blocking; it is
        # rewritten only after the step's token copy has come back, i.e. after the upload finished
        pin = self.device.type == "cuda"
        self._audio_host = torch.zeros(max_streams, self.chunk_samples, dtype=torch.float32, pin_memory=pin)
        self._audio = self._audio_host.numpy()
        self._marker_array = np.zeros(0, np.int64)  # end-of-utterance marker tokens (EOU subclass)
        # seconds spent in the model's modules vs all of step(), for the benchmark's compute /
        # bookkeeping split (wall clock: on a GPU these time kernel launches, not kernels)
        self.seconds = {"features": 0.0, "encoder": 0.0, "decoder": 0.0, "step": 0.0}

    def _autocast(self):
        return self._torch.amp.autocast(device_type=self.device.type, dtype=self.compute_dtype, enabled=self.amp)

    def _pipeline_config(self, model, chunk_ms, max_streams, device, dtype, endpoint_silence_ms) -> dict:
        """NeMo's pipeline config (decoding, confidence, context); the EOU subclass adjusts it."""
        return pipeline_config(model, chunk_ms, max_streams, device, "float32", endpoint_silence_ms)

    # ------------------------------------------------------------------ engine contract

    def step(self, items: list[StepItem]) -> list[StepOutput]:
        started = time.perf_counter()
        outputs = self._step(items)
        self.seconds["step"] += time.perf_counter() - started
        return outputs

    def _step(self, items: list[StepItem]) -> list[StepOutput]:
        torch = self._torch
        store, chunk, count = self.store, self.chunk_samples, len(items)
        slots_all = np.full(count, -1, np.int64)  # each item's slot (-1: none)
        batch = []  # the items that are stepped
        valid = np.empty(count, np.int64)
        audio = self._audio
        last_rows = []
        for i, item in enumerate(items):
            if item.is_first:
                slot = store.open(item.stream_id)
                self._drop_boost(slot)
                if item.boost:
                    self._set_boost(slot, item.boost)
            else:
                slot = store.slot_of.get(item.stream_id, -1)
                if slot >= 0 and item.boost is not None:
                    self._set_boost(slot, item.boost)
            slots_all[i] = slot
            samples = item.samples
            k = len(samples)
            if slot < 0 or not (k or item.is_last or not item.end_utterance):
                continue  # a finalize with no new audio: no model call, the utterance is only split
            j = len(batch)
            batch.append(i)
            valid[j] = k
            audio[j, :k] = samples
            if k < chunk:
                audio[j, k:] = 0.0
            if item.is_last:
                last_rows.append(j)
        store.reset_opened()
        ended_all = np.zeros(count, bool)
        marker_all = np.zeros(count, np.int64)  # 0 none, 1 <EOB>, 2 <EOU>
        n = len(batch)
        if n:
            batch_rows = np.array(batch, np.int64)
            self._stepping = batch_rows  # batch row → item index, for `_condition`
            slots = slots_all[batch_rows]
            valid = valid[:n]
            ended = np.zeros(n, bool)
            ended[last_rows] = True
            marker = np.zeros(n, np.int64)
            with torch.inference_mode(), self._autocast():
                idx = torch.from_numpy(slots).to(self.device, non_blocking=True)
                audio_t = self._audio_host[:n].to(self.device, non_blocking=True)
                t0 = time.perf_counter()
                buffers, right_pad, commit = self.frontend.step(store, idx, audio_t,
                                                                torch.from_numpy(valid).to(self.device))
                commits = [commit]
                self.seconds["features"] += time.perf_counter() - t0
                if not last_rows:
                    groups = [(np.arange(n), False)]
                else:
                    is_last = np.zeros(n, bool)
                    is_last[last_rows] = True
                    groups = [(np.flatnonzero(~is_last), False), (np.flatnonzero(is_last), True)]
                for rows, keep_all in groups:
                    if len(rows):
                        commits.append(self._decode_group(rows, keep_all, slots, idx, buffers, right_pad, ended,
                                                          marker))
                # every model call is done: only now does any stream's state change (atomic step)
                for commit in commits:
                    commit()
            store.samples[slots] += valid
            store.frames[slots] += self.frames_per_chunk
            ended_all[batch_rows] = ended
            marker_all[batch_rows] = marker
        return self._outputs(items, slots_all, ended_all, marker_all)

    def _decode_group(self, rows, keep_all, slots, idx, buffers, right_pad, ended, marker):
        """Encode and decode one group of rows; returns the `commit` that stores their new state."""
        torch, store = self._torch, self.store
        if len(rows) != len(slots):
            rows_t = torch.from_numpy(rows).to(self.device)
            idx, buffers, right_pad = idx[rows_t], buffers[rows_t], right_pad[rows_t]
        signal = buffers.to(self.wrapper.cast_dtype)
        length = torch.full((len(rows),), signal.shape[2], dtype=torch.long, device=self.device)
        if keep_all:
            length = length - right_pad
        t0 = time.perf_counter()
        self._condition(self._stepping[rows])
        channel, lookback, cache_len = store.encoder_rows(idx)
        encoded, encoded_len, channel, lookback, cache_len = self.encoder.cache_aware_stream_step(
            processed_signal=signal, processed_signal_length=length, cache_last_channel=channel,
            cache_last_time=lookback, cache_last_channel_len=cache_len, keep_all_outputs=keep_all,
            drop_extra_pre_encoded=self.drop_extra,
        )
        encoded = self._after_encoder(encoded, self._stepping[rows])
        t1 = time.perf_counter()
        group_slots = slots[rows]
        bias = store.bias_id[group_slots] if self.greedy.computer.per_stream_biasing_enabled else None
        lengths, tokens, frames, confidence, state = self.greedy.step(store, idx, encoded, encoded_len, bias)
        self.seconds["encoder"] += t1 - t0
        self.seconds["decoder"] += time.perf_counter() - t1

        def commit() -> None:
            store.put_encoder_rows(idx, channel, lookback, cache_len)
            store.put_decoder_rows(idx, state)
            self._account(rows, group_slots, lengths, tokens, frames, confidence, ended, marker)

        return commit

    def _condition(self, items: np.ndarray) -> None:
        """Set per-row model inputs besides audio right before an encoder call whose rows are
        these step items (multitalker: speaker targets)."""

    def _after_encoder(self, encoded, items: np.ndarray):
        """The encoder output [B, D, T] of the rows (these step items) as the decoder gets it
        (multilingual: the language prompt is applied here, as in NeMo's prompt models)."""
        return encoded

    def _account(self, rows, group_slots, lengths, tokens, frames, confidence, ended, marker) -> None:
        """Vectorised utterance bookkeeping for one decoded group; text only for rows with tokens."""
        store, width = self.store, tokens.shape[1]
        present = np.arange(width)[None, :] < lengths[:, None]
        if len(self._marker_array):
            is_marker = present & np.isin(tokens, self._marker_array)
            found = is_marker.any(axis=1)
            if found.any():
                eou = (is_marker & (tokens == self._eou_id)).any(axis=1)
                marker[rows] = np.where(found, np.where(eou, 2, 1), 0)
                ended[rows] |= found
            keep = present & ~is_marker
        else:
            keep = present
        count = keep.sum(axis=1)
        # blank frames since the last token: NeMo's per-frame labels (the frame's last token or blank)
        frame_in_chunk = np.where(keep, frames % self.frames_per_chunk, -1)
        last_frame = frame_in_chunk.max(axis=1) if width else np.full(len(rows), -1)
        silent = np.where(last_frame >= 0, self.frames_per_chunk - 1 - last_frame,
                          store.silent[group_slots] + self.frames_per_chunk)
        store.silent[group_slots] = silent
        if self.endpoint_silence_ms and self.endpoint_silence_ms > 0:
            spoken = ((store.utt_tokens[group_slots] + count) > 0) | store.split[group_slots]
            ended[rows] |= spoken & (silent * self.stride_ms >= self.endpoint_silence_ms)
        store.utt_tokens[group_slots] += count
        with_tokens = np.flatnonzero(count)
        if len(with_tokens):
            np.clip(confidence, 0.0, 1.0, out=confidence)  # max_prob can round a hair above 1
            frames = frames + store.utt_offset[group_slots][:, None]  # stream frames
            # row-major boolean indexing keeps each row's tokens together and in order
            new_tokens, new_frames, new_conf = tokens[keep].tolist(), frames[keep].tolist(), confidence[keep].tolist()
            ends = np.cumsum(count[with_tokens]).tolist()
            extend, start = self.text.extend, 0
            for slot, end in zip(group_slots[with_tokens].tolist(), ends):
                extend(slot, new_tokens[start:end], new_frames[start:end], new_conf[start:end])
                start = end

    def _outputs(self, items, slots, ended, marker) -> list[StepOutput]:
        """Events per item: a final where the step ended the utterance (restarting the row's
        decoder), else the partial; then, for a finalize, the utterance so far as a final with
        the decoder left as it is (only the text is split, as NeMo's path does)."""
        store, partials = self.store, self.text.partial
        now_list = (store.samples[slots] / self.sample_rate).tolist()
        start_list = store.utt_start[slots].tolist()
        outputs, restart, split = [], [], []
        for i, (slot, end_now, now) in enumerate(zip(slots.tolist(), ended.tolist(), now_list)):
            item = items[i]
            if slot < 0:
                outputs.append(StepOutput())
                continue
            if end_now:
                out = StepOutput()
                final = self._final(slot, now)
                if final is not None:
                    out.finals.append(final)
                    self._mark(item, final, int(marker[i]), now)
                if item.is_last:
                    self._forget(item.stream_id, slot)
                    outputs.append(out)
                    continue
                restart.append(slot)
            else:
                text = partials[slot]
                show = text and not item.end_utterance
                out = StepOutput(partial=Partial(text=text, start=start_list[i], end=now) if show else None)
            if item.end_utterance:
                final = self._final(slot, now)
                if final is not None:
                    out.finals.append(final)
                split.append(slot)
            outputs.append(out)
        if restart:
            rows = np.array(restart, np.int64)
            self.store.restart_decoder(self._torch.from_numpy(rows).to(self.device))
            store.utt_offset[rows] = store.frames[rows]
            store.silent[rows] = 0
            store.utt_tokens[rows] = 0
            store.split[rows] = False
        if split:
            # the next blank-run endpoint restarts these decoders even without new tokens
            store.split[split] = True
            store.utt_tokens[split] = 0
        return outputs

    def _final(self, slot: int, now: float) -> Optional[Final]:
        store = self.store
        nemo_words = self.text.words(slot)
        self.text.clear(slot)
        line = self.text.sep.join(w.text for w in nemo_words).strip()
        if not line:
            return None
        words = [
            Word(word=w.text.strip(), start=round(min(w.start, now), 3), end=round(min(w.end, now), 3),
                 confidence=round(float(w.conf), 4))
            for w in nemo_words
            if w.text.strip()
        ]
        start = words[0].start if words else float(store.utt_start[slot])
        end = words[-1].end if words else now
        store.utt_start[slot] = end
        return Final(text=line, start=start, end=end, words=words)

    def _mark(self, item: StepItem, final: Final, marker: int, now: float) -> None:
        """What an end marker says about the final (the EOU subclass)."""

    def release(self, stream_id: int) -> None:
        slot = self.store.slot_of.get(stream_id)
        if slot is not None:
            self._forget(stream_id, slot)

    def active_streams(self) -> int:
        return len(self.store)

    # ------------------------------------------------------------------ helpers

    def _forget(self, stream_id: int, slot: int) -> None:
        self._drop_boost(slot)
        self.text.clear(slot)
        self.store.close(stream_id)

    def _set_boost(self, slot: int, boost: list[BoostPhrase]) -> None:
        """Key phrases for one stream: a boosting graph in NeMo's multi-model, chosen per row."""
        self._drop_boost(slot)
        if not boost:
            return
        computer = self.greedy.computer
        if not computer.per_stream_biasing_enabled:
            return
        from nemo.collections.asr.parts.context_biasing.biasing_multi_model import BiasingRequestItemConfig
        from nemo.collections.asr.parts.context_biasing.boosting_graph_batched import BoostingTreeModelConfig

        tree = BoostingTreeModelConfig(key_phrases_list=[b.phrase for b in boost], use_triton=False)
        cfg = BiasingRequestItemConfig(boosting_model_cfg=tree, boosting_model_alpha=max(b.weight for b in boost))
        cfg.add_to_multi_model(tokenizer=self.wrapper.tokenizer, biasing_multi_model=computer.biasing_multi_model)
        self._boost_cfg[slot] = cfg
        self.store.bias_id[slot] = cfg.multi_model_id

    def _drop_boost(self, slot: int) -> None:
        cfg = self._boost_cfg.pop(slot, None)
        if cfg is not None:
            cfg.remove_from_multi_model(biasing_multi_model=self.greedy.computer.biasing_multi_model)
        self.store.bias_id[slot] = -1
