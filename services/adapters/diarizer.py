"""Streaming Sortformer diarization for many sessions: one state row per session, one batched call.

Every session's speaker cache, FIFO, silence profile, feature left context and audio tail live
in preallocated tensors on the model's device; a step gathers the stepping sessions' rows, runs
`sortformer_step.model_step` (NeMo's `forward_streaming_step` + `streaming_update_async` as
batched tensor ops: a fixed number of ops whatever the number of sessions) and returns the new
rows in a `commit`, so a failed step leaves every session as it was.

Per session and step the caller gives one chunk of audio followed by up to `right_context`
frames of the audio after it (the look-ahead; the caller holds the chunk back until it has
them, or gives fewer at the end of a stream or utterance). Features are computed like the ASR
front end: the window plus one hop of the previous audio, through the model's own
preprocessor made deterministic; audio is never normalised (the streaming path never is). A
session's first chunk has no left context; it shares the call (the offset is per row).

The step's inputs go up from pinned host buffers (non-blocking on CUDA); the only download is
the speaker probabilities the host needs to decide who speaks. `impl="nemo"` runs NeMo's own
`forward_streaming_step` instead, grouped by offsets (the reference, and the benchmark's baseline).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .diarizer_settings import DiarizerSettings

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
                 dtype: str = "float32", settings: DiarizerSettings = DiarizerSettings(), impl: str = "vectorised"):
        if impl not in ("vectorised", "nemo"):
            raise ValueError(f"diarizer impl must be 'vectorised' or 'nemo', got {impl!r}")
        self.impl = impl
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
        settings.check(self.frames_per_chunk, self.n_speakers, int(modules.spkcache_sil_frames_per_spk))
        self.settings = settings
        # the settings on the model itself, so NeMo's own path (impl="nemo") runs with them too
        modules.chunk_len = self.frames_per_chunk
        modules.chunk_left_context = settings.left_context
        modules.chunk_right_context = settings.right_context
        modules.fifo_len = settings.fifo_len
        modules.spkcache_len = settings.spkcache_len
        modules.spkcache_update_period = settings.update_period
        self.right_frames = settings.right_context
        self.right_samples = settings.right_context * self.frame_samples
        self.window_samples = chunk_samples + self.right_samples
        self.left_features = settings.left_context * self.subsampling
        self.right_features = settings.right_context * self.subsampling
        n_mels = int(featurizer.nfilt)
        with torch.inference_mode():
            state = modules.init_streaming_state(max_sessions, async_streaming=True, device=device)
            state.fifo_preds = torch.zeros((max_sessions, modules.fifo_len, self.n_speakers), device=device)
            self.state = {k: self._cast(getattr(state, k)) for k in STATE_FIELDS}
            self.audio_tail = torch.zeros(max_sessions, self.hop, dtype=torch.float32, device=device)
            self.left = torch.zeros(max_sessions, self.left_features, n_mels, dtype=self.dtype, device=device)
        pin = device.type == "cuda"
        # one upload per step: the window audio, and the per-row integers
        self._audio_host = torch.zeros(max_sessions, self.window_samples, dtype=torch.float32, pin_memory=pin)
        self._ints_host = torch.zeros(5, max_sessions, dtype=torch.int64, pin_memory=pin)
        self._audio = self._audio_host.numpy()
        self._ints = self._ints_host.numpy()

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def reset(self, slots: list[int]) -> None:
        """Slots given to new sessions start empty (the zeros of a fresh streaming state)."""
        if not slots:
            return
        idx = torch.tensor(slots, device=self.device)
        with torch.inference_mode():
            for tensor in (*self.state.values(), self.audio_tail, self.left):
                tensor.index_fill_(0, idx, 0)

    def copy_rows(self, sources: list[int], targets: list[int]) -> None:
        """Rows `targets` become exact copies of rows `sources` (a session's forked copy)."""
        src = torch.tensor(sources, device=self.device)
        dst = torch.tensor(targets, device=self.device)
        with torch.inference_mode():
            for tensor in (*self.state.values(), self.audio_tail, self.left):
                tensor.index_copy_(0, dst, tensor.index_select(0, src))

    def step(self, slots: np.ndarray, audio: list, valid: np.ndarray,
             first: np.ndarray) -> tuple[np.ndarray, Callable[[], None]]:
        """Speaker probabilities [n, frames_per_chunk, n_speakers] of one chunk per session, and
        the `commit` that stores the sessions' new states.

        `audio[i]`: session i's chunk followed by its look-ahead (at most `window_samples`;
        `valid[i]` of them); a window shorter than a chunk is a stream's short last chunk.
        `first`: the session's first chunk."""
        n = len(slots)
        chunk_valid = np.minimum(valid, self.chunk_samples)
        right = np.where(valid >= self.chunk_samples,
                         np.minimum((valid - self.chunk_samples) // self.frame_samples, self.right_frames), 0)
        ints = self._ints
        ints[0, :n] = slots
        ints[1, :n] = self.hop + valid  # signal samples
        ints[2, :n] = self.chunk_features + right * self.subsampling + np.where(first, 0, self.left_features)
        ints[3, :n] = np.where(first, 0, self.settings.left_context)  # left frames, per row
        ints[4, :n] = right
        window = self._audio
        for i in range(n):
            k = int(valid[i])
            window[i, :k] = audio[i][:k]
            window[i, k:] = 0.0
        with torch.inference_mode():
            probs, commit = self.device_step(n, first, right)
            host = probs.float().cpu().numpy()  # the step's one download: who speaks
        # frames past a short last chunk's audio are padding: no activity there
        valid_frames = -(-chunk_valid // self.frame_samples)
        host[np.arange(self.frames_per_chunk)[None, :] >= valid_frames[:, None]] = 0.0
        return host, commit

    def device_step(self, n: int, first: np.ndarray, right: np.ndarray):
        """The step on the device from the filled host buffers: (probs on the device, commit)."""
        dev = self.device
        ints = self._ints_host[:, :n].to(dev, non_blocking=True)
        audio = self._audio_host[:n].to(dev, non_blocking=True)
        idx, signal_len, feature_len, left, _ = ints.unbind(0)
        signal = torch.cat([self.audio_tail.index_select(0, idx), audio], dim=1)
        feats, _ = self.model.preprocessor(input_signal=signal, length=signal_len)
        width = self.chunk_features + self.right_features
        feats = feats[:, :, 1 : 1 + width].transpose(1, 2).to(self.dtype)  # [n, time, mels]
        old_left = self.left.index_select(0, idx)
        x = torch.cat([old_left, feats], dim=1)
        # a first chunk has no left context: its features start at frame 0 (the rest is masked)
        t = torch.arange(x.shape[1], device=dev).unsqueeze(0)
        shift = torch.where(left > 0, 0, self.left_features).unsqueeze(1)
        x = torch.gather(x, 1, (t + shift).clamp(max=x.shape[1] - 1).unsqueeze(2).expand(-1, -1, x.shape[2]))
        rows = {k: v.index_select(0, idx) for k, v in self.state.items()}
        if self.impl == "vectorised":
            from .sortformer_step import model_step

            new_state, probs = model_step(self.model, x, feature_len, left, rows, self.frames_per_chunk)
        else:
            new_state, probs = self._nemo_step(x, first, right, rows)
        tail = audio[:, self.chunk_samples - self.hop : self.chunk_samples]
        history = torch.cat([old_left, feats[:, : self.chunk_features]], dim=1)
        new_left = history[:, history.shape[1] - self.left_features:]

        def commit() -> None:
            with torch.inference_mode():
                self.left.index_copy_(0, idx, new_left)
                self.audio_tail.index_copy_(0, idx, tail)
                for k, t in new_state.items():
                    self.state[k].index_copy_(0, idx, self._cast(t))

        return probs, commit

    def _nemo_step(self, x, first: np.ndarray, right: np.ndarray, rows: dict):
        """NeMo's `forward_streaming_step`, one call per (first chunk, right context) group."""
        from nemo.collections.asr.modules.sortformer_modules import StreamingSortformerState

        n = x.shape[0]
        probs = torch.zeros(n, self.frames_per_chunk, self.n_speakers, dtype=self.dtype, device=self.device)
        new_state = {k: t.clone() for k, t in rows.items()}
        for is_first, rc in sorted({(bool(f), int(r)) for f, r in zip(first, right)}):
            group = np.flatnonzero((first == is_first) & (right == rc))
            g = torch.from_numpy(group).to(self.device)
            left = 0 if is_first else self.left_features
            width = left + self.chunk_features + rc * self.subsampling
            state = StreamingSortformerState()
            for k, t in rows.items():
                setattr(state, k, t.index_select(0, g))
            lengths = torch.full((len(group),), width, dtype=torch.long, device=self.device)
            empty = torch.zeros((len(group), 0, self.n_speakers), dtype=self.dtype, device=self.device)
            state, preds = self.model.forward_streaming_step(x.index_select(0, g)[:, :width], lengths, state, empty,
                                                             left_offset=left, right_offset=rc * self.subsampling)
            probs.index_copy_(0, g, preds.to(self.dtype))
            for k, t in new_state.items():
                t.index_copy_(0, g, self._cast(getattr(state, k)))
        return new_state, probs
