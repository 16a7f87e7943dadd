"""Parakeet realtime EOU on the vectorised step: `<EOU>`/`<EOB>` end utterances.

The rules of `eou.py`, over the batch: a step's tokens are searched for the two markers
in one `np.isin`; markers never reach the text; a row that wrote one ends its utterance
(`<EOU>` wins over `<EOB>`): an `<EOU>` final carries `end_of_turn` and reports its latency
to `on_eou`, an `<EOB>` final is a backchannel. A marker on silence ends nothing visible.

The model decides when a turn ends; two backstops bound an utterance when it does not: a run of
`endpoint_silence_ms` blank frames after the utterance's last token (1.5 s by default) ends it
without `end_of_turn`, and `max_utterance_s` cuts an unbroken monologue (see vectorised.py).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from pipecat_nvasr.protocol import Final

from ..refusal import StartupRefusal
from .vectorised import VectorisedRNNTAdapter

EOU_PIECE = "<EOU>"
EOB_PIECE = "<EOB>"
EOU_CHUNK_MS = (80, 160)  # the model's trained context is [70,1]; 80 ms chunks shift it by one frame
EOU_BACKSTOP_MS = 1500  # blank run after the last token that ends an utterance the model did not end
EOB, EOU = 1, 2  # marker codes of VectorisedRNNTAdapter._account


class VectorisedEOUAdapter(VectorisedRNNTAdapter):
    eou_model = True
    worker = "the parakeet-realtime worker"

    def __init__(self, model: str, chunk_ms: int = 160, max_streams: int = 256, device: str = "cpu",
                 dtype: str = "float32", endpoint_silence_ms: int = EOU_BACKSTOP_MS,
                 on_eou: Optional[Callable[[float], None]] = None, amp: bool = False, boosting: bool = True,
                 max_utterance_s: Optional[float] = 30.0, cuda_graphs: bool = False):
        if chunk_ms not in EOU_CHUNK_MS:
            raise StartupRefusal(f"parakeet-realtime streams in chunks of {EOU_CHUNK_MS} ms, not {chunk_ms}")
        super().__init__(model, chunk_ms, max_streams, device, dtype, endpoint_silence_ms, amp, boosting,
                         max_utterance_s=max_utterance_s, cuda_graphs=cuda_graphs)
        self.on_eou = on_eou
        tokenizer = self.wrapper.tokenizer
        eou_id, eob_id = tokenizer.token_to_id(EOU_PIECE), tokenizer.token_to_id(EOB_PIECE)
        if eou_id is None or eou_id == tokenizer.token_to_id("<unk>") or eou_id == eob_id:
            raise StartupRefusal(f"the parakeet-realtime worker needs an end-of-utterance model; {model} "
                                 f"({type(self.wrapper.asr_model).__name__}) has no {EOU_PIECE}/{EOB_PIECE} tokens")
        self._eou_id = eou_id
        self._marker_array = np.array(sorted([eou_id, eob_id]), dtype=np.int64)

    def _pipeline_config(self, model, chunk_ms, max_streams, device, dtype, endpoint_silence_ms) -> dict:
        """The model's trained context [70,1]; 80 ms chunks shift it one encoder frame per step."""
        cfg = super()._pipeline_config(model, 160, max_streams, device, dtype, endpoint_silence_ms)
        if chunk_ms == 80:
            cfg["streaming"]["chunk_size_in_secs"] = 0.08
        return cfg

    def _mark(self, stream_id: int, final: Final, marker: int, now: float, plan) -> None:
        if marker == EOB:
            final.backchannel = True
        elif marker == EOU:
            final.end_of_turn = True
            if stream_id >= 0:  # not the warm-up stream
                plan.eou_latencies.append(max(0.0, now - final.end))
