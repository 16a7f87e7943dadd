"""The streaming front end: one log-mel extraction for every chunk of a step, and each
stream's feature buffer (pre-encode context + chunk) kept in its slot.

Bit for bit what NeMo's `BatchedCacheFeatureBufferer` computes, without its per-stream
audio buffers and Python loops: a chunk's features come from the chunk plus the last 10 ms
(one STFT hop) of the stream's previous audio, through the model's own preprocessor (made
deterministic: no dither, no padding, float32); the newest `chunk` frames are shifted into
the stream's buffer. A new slot starts with zero audio look-back and zero features — the
zero fill the encoder saw in training (see `CacheAwareRNNTAdapter._pad_stream_starts_like_training`).
"""

from __future__ import annotations

from typing import Optional

import torch

from .slots import SlotStore


class FeatureFrontend:
    def __init__(self, preprocessor, sample_rate: int, chunk_secs: float, buffer_secs: float, window_stride: float):
        self.preprocessor = preprocessor
        # NeMo's bufferer truncates these float quotients: (0.09 + 0.08) / 0.01 = 16.99… → 16 frames at
        # 80 ms chunks, one short, and the encoder then emits nothing. Rounded, every chunk size gets
        # the frames it means (160/560/1120 ms: the same numbers as NeMo's).
        self.lookback = int(window_stride * sample_rate)
        self.chunk_samples = round(chunk_secs * sample_rate)
        self.chunk_frames = round(chunk_secs / window_stride)
        self.buffer_frames = round(buffer_secs / window_stride)
        self.extract_frames = self.chunk_frames + 1  # NeMo's `plus_one` (buffer longer than chunk)

    def step(self, store: SlotStore, idx: torch.Tensor, audio: torch.Tensor, valid: torch.Tensor):
        """Features of one chunk per row (`audio` [B, chunk], zero-padded past `valid` samples);
        returns each row's whole feature buffer [B, F, T], its right padding in frames, and the
        `commit(rows=None)` that stores the rows' (or only batch rows `rows`') new buffers and
        audio look-back (called once the whole step succeeded, so a failed step leaves them as
        they were; a forked row is never stored)."""
        signal = torch.cat([store.audio_tail.index_select(0, idx), audio], dim=1)
        length = signal.shape[1] - (self.chunk_samples - valid)
        features, feature_len = self.preprocessor(input_signal=signal, length=length)
        if features.shape[2] > self.extract_frames:
            features = features[:, :, : self.extract_frames]
            feature_len = feature_len.clamp(max=self.extract_frames)
        right_pad = (features.shape[2] - feature_len).clamp(min=0)
        old = store.features.index_select(0, idx)
        buffers = torch.cat([old[:, :, self.chunk_frames:], features[:, :, -self.chunk_frames:]], dim=2)
        tail = audio[:, -self.lookback:]

        def commit(rows: Optional[torch.Tensor] = None) -> None:
            if rows is None:
                store.features.index_copy_(0, idx, buffers)
                store.audio_tail.index_copy_(0, idx, tail)
            else:
                store.features.index_copy_(0, idx[rows], buffers[rows])
                store.audio_tail.index_copy_(0, idx[rows], tail[rows])

        return buffers[:, :, -self.buffer_frames:], right_pad, commit
