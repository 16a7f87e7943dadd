"""Streaming Sortformer diarization for many sessions: one state slot per session, batched steps.

`SortformerEncLabelModel.forward_streaming_step` with `async_streaming` keeps every session's
speaker cache and FIFO in its own batch row, so sessions at different stages share one call.
This module keeps those rows (and each session's feature context) in preallocated tensors and
gathers / scatters them per step, as `slots.py` does for the ASR.

Per chunk a session gives the diarizer the chunk's log-mel frames plus `chunk_left_context`
encoder frames of the previous chunk's features (no right context: no look-ahead latency). A
session's first chunk has no left context, and the offset is one value per call, so first
chunks run as their own group (padding a first chunk with fake context changes everything
after it). Features are computed incrementally like the ASR front end (`features.py`): the
chunk plus one hop of the previous audio, through the model's own preprocessor made
deterministic. Audio is not normalised (the streaming path never is).

`step` does not write state back: it returns the speaker probabilities and a `commit` to call
once the whole multitalker step succeeded, so a failed step leaves every session as it was.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

STATE_FIELDS = ("spkcache", "spkcache_lengths", "spkcache_preds", "fifo", "fifo_lengths", "fifo_preds",
                "mean_sil_emb", "n_sil_frames")


def load_sortformer(name: str, device: torch.device):
    """The diarizer on `device` (the ASR's `torch.device`, e.g. cuda:1), refused unless a streaming Sortformer."""
    from nemo.collections.asr.models import SortformerEncLabelModel

    from .model_check import check_diarizer

    if name.endswith(".nemo"):
        model = SortformerEncLabelModel.restore_from(name, map_location=device)
    else:
        model = SortformerEncLabelModel.from_pretrained(name, map_location=device)
    check_diarizer(model, name)
    return model.eval()


class StreamingDiarizer:
    def __init__(self, model: str, max_sessions: int, chunk_samples: int, device: torch.device,
                 dtype: str = "float32"):
        self.model = m = load_sortformer(model, device)
        self.model_name = model
        self.device = device
        if dtype == "float64":
            m.double()
        self.dtype = torch.float64 if dtype == "float64" else torch.float32
        m.streaming_mode = True
        m.async_streaming = True
        featurizer = m.preprocessor.featurizer
        featurizer.dither = 0.0
        featurizer.pad_to = 0
        self.sample_rate = int(m.preprocessor._sample_rate)
        self.hop = int(featurizer.hop_length)
        self.subsampling = int(m.encoder.subsampling_factor)
        self.frame_samples = self.hop * self.subsampling  # one speaker-activity frame (80 ms)
        if chunk_samples % self.frame_samples:
            raise ValueError(f"chunks must be whole diarization frames of {self.frame_samples} samples")
        self.chunk_samples = chunk_samples
        self.chunk_features = chunk_samples // self.hop
        self.frames_per_chunk = chunk_samples // self.frame_samples
        modules = m.sortformer_modules
        self.n_speakers = int(modules.n_spk)
        modules.chunk_len = self.frames_per_chunk
        modules.chunk_right_context = 0
        self.left_features = int(modules.chunk_left_context) * self.subsampling
        n_feat = int(featurizer.nfilt)
        with torch.inference_mode():
            state = modules.init_streaming_state(max_sessions, async_streaming=True, device=device)
            state.fifo_preds = torch.zeros((max_sessions, modules.fifo_len, self.n_speakers), device=device)
            self.state = {k: self._cast(getattr(state, k)) for k in STATE_FIELDS}
            self.audio_tail = torch.zeros(max_sessions, self.hop, dtype=torch.float32, device=device)
            self.features = torch.zeros(max_sessions, n_feat, self.left_features + self.chunk_features,
                                        dtype=self.dtype, device=device)

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def reset(self, slots: list[int]) -> None:
        """Slots given to new sessions start empty (the zeros of a fresh streaming state)."""
        if not slots:
            return
        idx = torch.tensor(slots, device=self.device)
        with torch.inference_mode():
            for tensor in (*self.state.values(), self.audio_tail, self.features):
                tensor.index_fill_(0, idx, 0)

    def step(self, slots: np.ndarray, audio: torch.Tensor, valid: np.ndarray,
             first: np.ndarray) -> tuple[np.ndarray, Callable[[], None]]:
        """Speaker probabilities [n, frames_per_chunk, n_speakers] of one chunk per session
        (`audio` [n, chunk] zero-padded past `valid` samples; `first`: the session's first chunk),
        and the `commit` that stores the sessions' new states."""
        from nemo.collections.asr.modules.sortformer_modules import StreamingSortformerState

        n = len(slots)
        idx = torch.from_numpy(slots).to(self.device)
        with torch.inference_mode():
            audio = audio.float()  # the preprocessor computes in float32 whatever the model's dtype
            signal = torch.cat([self.audio_tail.index_select(0, idx), audio], dim=1)
            length = torch.from_numpy(signal.shape[1] - (self.chunk_samples - valid)).to(self.device)
            feats, _ = self.model.preprocessor(input_signal=signal, length=length)
            feats = feats[:, :, : self.chunk_features + 1][:, :, -self.chunk_features:].to(self.dtype)
            old = self.features.index_select(0, idx)
            buffers = torch.cat([old[:, :, self.chunk_features:], feats], dim=2)
            probs = torch.zeros(n, self.frames_per_chunk, self.n_speakers, dtype=self.dtype, device=self.device)
            new_state = {k: t.index_select(0, idx) for k, t in self.state.items()}
            groups = [(np.flatnonzero(first), 0), (np.flatnonzero(~first), self.left_features)]
            for rows, left in groups:
                if not len(rows):
                    continue
                rows_t = torch.from_numpy(rows).to(self.device)
                x = buffers.index_select(0, rows_t)[:, :, buffers.shape[2] - left - self.chunk_features:]
                state = StreamingSortformerState()
                for k, t in new_state.items():
                    setattr(state, k, t.index_select(0, rows_t))
                lengths = torch.full((len(rows),), x.shape[2], dtype=torch.long, device=self.device)
                empty = torch.zeros((len(rows), 0, self.n_speakers), dtype=self.dtype, device=self.device)
                state, preds = self.model.forward_streaming_step(
                    x.transpose(1, 2), lengths, state, empty, left_offset=left, right_offset=0
                )
                probs.index_copy_(0, rows_t, preds[:, : self.frames_per_chunk].to(self.dtype))
                for k, t in new_state.items():
                    t.index_copy_(0, rows_t, self._cast(getattr(state, k)))
        host = probs.float().cpu().numpy()
        # frames past a short last chunk's audio are padding: no activity there
        valid_frames = -(-valid // self.frame_samples)
        host[np.arange(self.frames_per_chunk)[None, :] >= valid_frames[:, None]] = 0.0

        def commit() -> None:
            with torch.inference_mode():
                self.features.index_copy_(0, idx, buffers)
                self.audio_tail.index_copy_(0, idx, audio[:, -self.hop:])
                for k, t in new_state.items():
                    self.state[k].index_copy_(0, idx, t)

        return host, commit
