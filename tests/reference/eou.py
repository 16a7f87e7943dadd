"""Parakeet realtime EOU: the cache-aware RNNT whose own `<EOU>` token ends the utterance.

`nvidia/parakeet_realtime_eou_120m-v1` writes `<EOU>` when the speaker has finished an
utterance and `<EOB>` after a backchannel ("uh-huh"). Everything else is the Nemotron
path, so this adapter is `CacheAwareRNNTAdapter` naming its markers through the
per-utterance pipeline's `end_marker` hook (`utterances.py`, shared with Nemotron): for
each stream, the step's new tokens are searched for the two markers; on a hit the marker
is removed from the text, the utterance is ended (NeMo's own final path: words, segments,
text processing) and that stream's decoder restarts for the next utterance.

What is reset, and why: only the RNNT decoder (its hypothesis, i.e. prediction-network
state and tokens). The encoder cache and the feature buffer continue — the next utterance
keeps its acoustic left context and no audio is dropped or re-fed, while the decoder
starts from the start symbol exactly as in training, where every utterance is decoded on
its own. (NeMo's voice-agent example resets the encoder cache too; that throws away up to
70 frames of left context on every turn and would cost a new slot.) Stream time carries on
across resets: the new hypothesis counts frames from zero, so the state's global offset is
moved to the frames already seen.

NeMo's blank-run endpointing is off by default here (the model decides); a positive
`endpoint_silence_ms` brings it back as a backstop, its finals then carry no end_of_turn.
"""

from __future__ import annotations

from typing import Callable, Optional

from pipecat_nvasr.protocol import Final

from services.engine.adapter import StepItem, StepOutput
from reference.cache_aware import CacheAwareRNNTAdapter

from services.adapters.vectorised_eou import EOB_PIECE, EOU_CHUNK_MS, EOU_PIECE  # noqa: E402


class EOUAdapter(CacheAwareRNNTAdapter):
    """Cache-aware RNNT streaming where the model's `<EOU>`/`<EOB>` tokens end utterances.

    `on_eou(latency_s)` (set by the worker to feed `/metrics`) is called for every
    utterance ended by `<EOU>`: stream time from the end of its last word to the end of
    the audio chunk whose step emitted the token — when the event can first be sent.
    """

    def __init__(
        self,
        model: str,
        chunk_ms: int = 160,
        max_streams: int = 256,
        device: str = "cpu",
        dtype: str = "float32",
        endpoint_silence_ms: int = 0,
        on_eou: Optional[Callable[[float], None]] = None,
    ):
        if chunk_ms not in EOU_CHUNK_MS:
            raise ValueError(f"parakeet-realtime streams in chunks of {EOU_CHUNK_MS} ms, not {chunk_ms}")
        super().__init__(model, chunk_ms, max_streams, device, dtype, endpoint_silence_ms)
        self.on_eou = on_eou
        tokenizer = self.pipeline.asr_model.asr_model.tokenizer
        eou_id, eob_id = tokenizer.token_to_id(EOU_PIECE), tokenizer.token_to_id(EOB_PIECE)
        if eou_id is None or eou_id == tokenizer.token_to_id("<unk>") or eou_id == eob_id:
            raise ValueError(f"{model} has no {EOU_PIECE}/{EOB_PIECE} tokens: not an EOU model")
        self.pipeline.__class__ = _eou_pipeline_class(type(self.pipeline))
        self.pipeline.init_eou(eou_id=eou_id, eob_id=eob_id)

    def _pipeline_config(self, model, chunk_ms, max_streams, device, compute_dtype, endpoint_silence_ms) -> dict:
        """Always the model's trained context [70,1] (80 ms lookahead); 80 ms chunks shift it
        by one encoder frame per step instead of two, as NeMo's own EOU voice agent does."""
        cfg = super()._pipeline_config(model, 160, max_streams, device, compute_dtype, endpoint_silence_ms)
        if chunk_ms == 80:
            cfg["streaming"]["chunk_size_in_secs"] = 0.08
        return cfg

    def release(self, stream_id: int) -> None:
        super().release(stream_id)
        self.pipeline.eou_events.pop(stream_id, None)

    def _convert(self, item: StepItem, out) -> StepOutput:
        marker = self.pipeline.eou_events.pop(item.stream_id, None)
        result = super()._convert(item, out)
        if marker is None or not result.finals:
            return result  # an <EOU> on silence ends nothing the client saw
        final: Final = result.finals[-1]
        if marker == EOB_PIECE:
            final.backchannel = True
        else:
            final.end_of_turn = True
            if self.on_eou is not None and item.stream_id >= 0:  # not the warm-up stream
                now = self._processed[item.stream_id] / self.sample_rate
                self.on_eou(max(0.0, now - final.end))
        return result


_classes: dict[type, type] = {}


def _eou_pipeline_class(base: type) -> type:
    """NeMo's CacheAwareRNNTPipeline with marker-aware decoding (built lazily: NeMo is heavy)."""
    if base in _classes:
        return _classes[base]

    class EOUCacheAwareRNNTPipeline(base):
        def init_eou(self, eou_id: int, eob_id: int) -> None:
            self.marker_ids = {eou_id: EOU_PIECE, eob_id: EOB_PIECE}
            self.eou_events: dict[int, str] = {}  # stream → marker that ended its utterance this step
            self._marker: Optional[str] = None

        def run_greedy_decoder(self, state, request, hyp) -> bool:
            """The base step (it restarts the decoder when `end_marker` names a marker);
            remember which marker ended this stream's utterance, for the adapter."""
            self._marker = None
            ended = super().run_greedy_decoder(state, request, hyp)
            if self._marker is not None:
                self.eou_events[request.stream_id] = self._marker
            return ended

        def end_marker(self, output: dict, labels: list[int]) -> Optional[str]:
            self._marker = self._strip_markers(output, labels)
            return self._marker

        def _strip_markers(self, output: dict, labels: list[int]) -> Optional[str]:
            """Remove <EOU>/<EOB> from a step's tokens; return the one seen (<EOU> wins)."""
            tokens = output["tokens"]
            found = {self.marker_ids[t] for t in tokens if t in self.marker_ids}
            if not found:
                return None
            keep = [i for i, t in enumerate(tokens) if t not in self.marker_ids]
            for key in ("tokens", "timesteps", "confidences"):
                output[key] = [output[key][i] for i in keep]
            output["last_token"] = output["tokens"][-1] if keep else None
            output["last_token_idx"] = output["timesteps"][-1] if keep else None
            labels[:] = [self.blank_id if t in self.marker_ids else t for t in labels]
            return EOU_PIECE if EOU_PIECE in found else EOB_PIECE

    EOUCacheAwareRNNTPipeline.__name__ = f"EOU{base.__name__}"
    _classes[base] = EOUCacheAwareRNNTPipeline
    return EOUCacheAwareRNNTPipeline
