"""Batched greedy RNNT decoding that continues each row's own decoder state.

NeMo's label-looping greedy decoder (`GreedyBatchedRNNTLabelLoopingComputer`, the one
`greedy_batch` uses) already decodes a batch from a batched state; NeMo's pipeline reaches it
through per-stream `Hypothesis` objects (split the state into items after each step, merge
them back before the next, concatenate token tensors, re-scan whole hypotheses). Here the
state rows are gathered straight from the slot store and scattered back, and the step's new
tokens leave the device in ONE copy: [B, 3, L] (token, frame, confidence) plus lengths.

Per-stream key-phrase boosting is NeMo's own batched path: each row carries the id of its
boosting graph in NeMo's multi-model (-1: none) and the graph state lives in the slot.

On CUDA with graphs on, NeMo's computer (`cuda_graphs_impl`) keeps its buffers for the largest
batch it has seen and returns hypotheses AND decoding state with that many rows: the rows past
this step's batch are padding (encoder length 0). Its own callers cut them off; so do we —
exactly the step's rows of every returned tensor, whatever the decoder allocated
(tests/test_gpu_contracts.py runs NeMo's graph path on CPU to hold this).
"""

from __future__ import annotations

import numpy as np
import torch

from .slots import SlotStore


class BatchedGreedy:
    def __init__(self, computer):
        self.computer = computer

    @property
    def biasing(self):
        return self.computer.biasing_multi_model

    def step(self, store: SlotStore, idx: torch.Tensor, encoded: torch.Tensor, encoded_len: torch.Tensor,
             bias_ids: np.ndarray | None):
        """Decode encoder output [B, D, T] for slots `idx`; returns host arrays
        (lengths [B], tokens [B, L], frames [B, L] since the utterance's decoder began,
        confidences [B, L]) and the rows' new decoder state (the caller stores it with
        `store.put_decoder_rows` once the whole step succeeded)."""
        state = store.decoder_rows(idx)
        multi_ids = None
        if self.computer.per_stream_biasing_enabled:
            multi_ids = torch.from_numpy(bias_ids if bias_ids is not None else np.full(len(idx), -1)).to(idx.device)
        hyps, state = self.computer(
            x=encoded.transpose(1, 2), out_len=encoded_len, prev_batched_state=state, multi_biasing_ids=multi_ids
        )
        rows = len(idx)
        state = _first_rows(state, rows)
        lengths, tokens, frames, _, confidence = hyps.get_data_without_blank()
        lengths, tokens, frames = lengths[:rows], tokens[:rows], frames[:rows]
        confidence = confidence[:rows] if confidence is not None else None
        width = int(tokens.shape[1])
        if confidence is None:
            confidence = torch.zeros_like(tokens, dtype=torch.float64)
        packed = torch.cat(
            [
                lengths.to(torch.float64)[:, None],
                tokens.to(torch.float64),
                frames.to(torch.float64),
                confidence.to(torch.float64),
            ],
            dim=1,
        ).cpu()  # the step's one device → host copy
        host = packed.numpy()
        lengths = host[:, 0].astype(np.int64)
        used = int(lengths.max()) if len(lengths) else 0  # columns past the longest row are padding
        tokens = host[:, 1 : 1 + used].astype(np.int64)
        frames = host[:, 1 + width : 1 + width + used].astype(np.int64)
        confidence = host[:, 1 + 2 * width : 1 + 2 * width + used]
        return lengths, tokens, frames, confidence, state


def select_rows(state, rows: torch.Tensor):
    """The decoding state of batch rows `rows` (index tensor): what a step stores when some of
    its rows are forks, whose state is never stored."""
    from dataclasses import replace

    return replace(
        state,
        predictor_states=type(state.predictor_states)(s.index_select(1, rows) for s in state.predictor_states),
        predictor_outputs=state.predictor_outputs.index_select(0, rows),
        labels=state.labels.index_select(0, rows),
        decoded_lengths=state.decoded_lengths.index_select(0, rows),
        fusion_states_list=[f.index_select(0, rows) for f in state.fusion_states_list],
    )


def _first_rows(state, rows: int):
    """The decoding state of the step's `rows` only (NeMo's graph path pads it to its allocation)."""
    if state.labels.shape[0] == rows:
        return state
    from dataclasses import replace

    return replace(
        state,
        predictor_states=type(state.predictor_states)(s[:, :rows] for s in state.predictor_states),
        predictor_outputs=state.predictor_outputs[:rows],
        labels=state.labels[:rows],
        decoded_lengths=state.decoded_lengths[:rows],
        fusion_states_list=[f[:rows] for f in state.fusion_states_list],
    )
