"""Every stream's model state in preallocated tensors, one row (slot) per stream.

A step gathers the rows of the streams it runs (`index_select`), runs them as one batch and
writes them back (`index_copy_`); streams left out of a step are untouched. Nothing per
stream is a Python object except the utterance's token lists, which only grow when the
stream emits tokens (see `text.py`).

Device tensors: encoder caches (NeMo's layout: layer first, slot second), the audio
look-back and feature buffer of the front end, the RNNT decoder state (prediction-network
state and output, last label, decoded frames, biasing-graph state). Host vectors (numpy,
indexed by slot): samples and encoder frames seen, frames where the utterance started,
blank frames since the last token, tokens in the utterance, split by a finalize, biasing model id.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


class SlotStore:
    def __init__(self, num_slots: int, encoder, sos_state, n_feat: int, feature_len: int,
                 lookback: int, dtype: torch.dtype, device: torch.device):
        self.num_slots = num_slots
        self.device = device
        self.slot_of: dict[int, int] = {}  # stream id → slot
        self._free = list(range(num_slots - 1, -1, -1))
        with torch.inference_mode():
            self.cache_channel, self.cache_time, self.cache_len = encoder.get_initial_cache_state(
                batch_size=num_slots, dtype=dtype, device=device
            )
            self.audio_tail = torch.zeros(num_slots, lookback, dtype=torch.float32, device=device)
            self.features = torch.zeros(num_slots, n_feat, feature_len, dtype=torch.float32, device=device)
            # decoder rows, initialised to the state after <SOS> (NeMo's label-looping state, batch 1)
            self.sos = sos_state
            self._pack = tuple if isinstance(sos_state.predictor_states, tuple) else list
            # host copies of the <SOS> label and graph states: a reset then needs no device sync
            self._sos_label = int(sos_state.labels[0])
            self._sos_fusion = [int(f[0]) for f in sos_state.fusion_states_list]
            self.pred_states = [s.repeat_interleave(num_slots, dim=1).clone() for s in sos_state.predictor_states]
            self.pred_out = sos_state.predictor_outputs.repeat(num_slots, 1, 1).clone()
            self.labels = sos_state.labels.repeat(num_slots).clone()
            self.decoded = torch.zeros(num_slots, dtype=torch.long, device=device)
            self.fusion = [f.repeat(num_slots).clone() for f in sos_state.fusion_states_list]
        # host vectors
        self.samples = np.zeros(num_slots, np.int64)  # client samples seen (unpadded)
        self.frames = np.zeros(num_slots, np.int64)  # encoder frames stepped
        self.utt_offset = np.zeros(num_slots, np.int64)  # frame where the utterance's decoder began
        self.utt_start = np.zeros(num_slots, np.float64)  # seconds where the utterance began
        self.silent = np.zeros(num_slots, np.int64)  # blank frames since the last token
        self.utt_tokens = np.zeros(num_slots, np.int64)  # tokens in the utterance so far
        self.split = np.zeros(num_slots, bool)  # a finalize split the text, the decoder kept its state
        self.bias_id = np.full(num_slots, -1, np.int64)  # NeMo multi-biasing model id, -1: none
        # tokens before this stream frame belong to an utterance a forked finalize already ended
        self.drop_before = np.zeros(num_slots, np.int64)

    def __len__(self) -> int:
        return len(self.slot_of)

    def free_slots(self, count: int) -> list[int]:
        """The slots the next `count` new streams will take, in order (nothing is taken yet)."""
        if count > len(self._free):
            raise RuntimeError(f"all {self.num_slots} model slots are in use")
        return self._free[len(self._free) - count:][::-1]

    def take(self, stream_id: int, slot: int) -> None:
        """Give a free slot to a new stream. Free slots hold a fresh stream's state already."""
        if stream_id in self.slot_of:  # a stream id reused without a release: start it over
            self.close(stream_id)
        self._free.remove(slot)
        self.slot_of[stream_id] = slot

    def close(self, stream_id: int) -> Optional[int]:
        """Free a stream's slot (`close_all` of one); its slot, or None if it held none."""
        freed = self.close_all([stream_id])
        return freed[0] if freed else None

    def close_all(self, stream_ids: list[int]) -> list[int]:
        """Free the streams' slots, resetting their rows to a fresh stream's: zero caches, audio
        look-back and features (the zero fill of training), the decoder at <SOS>, zero counters.
        One write per tensor for all of them (the rows that close in a step); streams holding no
        slot are skipped. Returns the slots freed."""
        slots = [self.slot_of.pop(stream_id) for stream_id in stream_ids if stream_id in self.slot_of]
        if not slots:
            return []
        idx = torch.tensor(slots).to(self.device, non_blocking=True)
        with torch.inference_mode():
            self.cache_channel.index_fill_(1, idx, 0.0)
            self.cache_time.index_fill_(1, idx, 0.0)
            self.cache_len.index_fill_(0, idx, 0)
            self.audio_tail.index_fill_(0, idx, 0.0)
            self.features.index_fill_(0, idx, 0.0)
        self.restart_decoder(idx)
        for array in (self.samples, self.frames, self.utt_offset, self.silent, self.utt_tokens):
            array[slots] = 0
        self.utt_start[slots] = 0.0
        self.split[slots] = False
        self.bias_id[slots] = -1
        self.drop_before[slots] = 0
        self._free.extend(slots)
        return slots

    def restart_decoder(self, idx: torch.Tensor) -> None:
        """Rows `idx` start a new utterance: prediction network back at <SOS>, no frames decoded."""
        with torch.inference_mode():
            for rows, sos in zip(self.pred_states, self.sos.predictor_states):
                rows.index_copy_(1, idx, sos.expand(-1, len(idx), -1).contiguous())
            self.pred_out.index_copy_(0, idx, self.sos.predictor_outputs.expand(len(idx), -1, -1).contiguous())
            self.labels.index_fill_(0, idx, self._sos_label)
            self.decoded.index_fill_(0, idx, 0)
            for rows, value in zip(self.fusion, self._sos_fusion):
                rows.index_fill_(0, idx, value)

    def copy_row(self, source: int, target: int) -> None:
        """Slot `target` becomes an exact copy of slot `source`, device rows and host vectors."""
        src = torch.tensor([source]).to(self.device, non_blocking=True)
        dst = torch.tensor([target]).to(self.device, non_blocking=True)
        with torch.inference_mode():
            for rows in (self.cache_channel, self.cache_time, *self.pred_states):
                rows.index_copy_(1, dst, rows.index_select(1, src))
            for rows in (self.cache_len, self.audio_tail, self.features, self.pred_out, self.labels, self.decoded,
                         *self.fusion):
                rows.index_copy_(0, dst, rows.index_select(0, src))
        for array in (self.samples, self.frames, self.utt_offset, self.utt_start, self.silent, self.utt_tokens,
                      self.split, self.bias_id, self.drop_before):
            array[target] = array[source]

    # ------------------------------------------------------------------ gather / scatter

    def encoder_rows(self, idx: torch.Tensor):
        return (self.cache_channel.index_select(1, idx), self.cache_time.index_select(1, idx),
                self.cache_len.index_select(0, idx))

    def put_encoder_rows(self, idx: torch.Tensor, channel, time, length) -> None:
        self.cache_channel.index_copy_(1, idx, channel.to(self.cache_channel.dtype))
        self.cache_time.index_copy_(1, idx, time.to(self.cache_time.dtype))
        self.cache_len.index_copy_(0, idx, length.to(self.cache_len.dtype))

    def decoder_rows(self, idx: torch.Tensor):
        from nemo.collections.asr.parts.submodules.transducer_decoding.label_looping_base import (
            BatchedLabelLoopingState,
        )

        return BatchedLabelLoopingState(
            predictor_states=self._pack(s.index_select(1, idx) for s in self.pred_states),
            predictor_outputs=self.pred_out.index_select(0, idx),
            labels=self.labels.index_select(0, idx),
            decoded_lengths=self.decoded.index_select(0, idx),
            fusion_states_list=[f.index_select(0, idx) for f in self.fusion],
            time_jumps=None,
        )

    def put_decoder_rows(self, idx: torch.Tensor, state) -> None:
        for rows, new in zip(self.pred_states, state.predictor_states):
            rows.index_copy_(1, idx, new.to(rows.dtype))
        self.pred_out.index_copy_(0, idx, state.predictor_outputs.to(self.pred_out.dtype))
        self.labels.index_copy_(0, idx, state.labels)
        self.decoded.index_copy_(0, idx, state.decoded_lengths)
        for rows, new in zip(self.fusion, state.fusion_states_list):
            rows.index_copy_(0, idx, new)
