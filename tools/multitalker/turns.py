"""Speaker turns of a conversation, cropped and labelled the way the multitalker worker will see them.

The worker opens one ASR stream per (session, speaker) when the diarizer first says that speaker is
active and closes it after 640 ms (8 frames) of the speaker's silence. So one training/eval example is
one TURN: a speaker's consecutive segments merged while the gap between them is < 0.64 s, cropped from
just before its first active frame to 0.64 s after its end, with per-frame targets over the crop.

Frame convention (the one the worker uses and training emulates, see `encode`): encoder output frame i
of a stream covers the stream's 80 ms frame i (samples [i*1280, (i+1)*1280) from the stream's first
sample), and its targets are that frame's activities: spk = the row's speaker, bg = any other speaker,
float 0/1. Crops start on 80 ms frame boundaries of the conversation so labels index directly.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conversations import FRAME, FRAME_S, labels_array

CLOSE_FRAMES = 8  # the worker closes a row after 8 silent frames (640 ms)
PRE_ENCODE_PAD = 9  # feature frames of zero look-back in front of a fresh stream ([70,1] pre-encode cache)
PRE_ENCODE_DROP = 2  # pre-encoded frames a cache-aware step drops ([70,1])


@dataclass
class Turn:
    conv: int  # row index in the manifest
    speaker: int  # reference speaker index (order of first speech)
    first: int  # first frame where the speaker is truly active
    end_frame: int  # frame index just past the turn's last segment end
    text: str


def audio_path(row: dict, manifest: Path) -> Path:
    """The row's WAV; manifests written in another worktree are found next to this manifest."""
    p = Path(row["audio_filepath"])
    if p.exists():
        return p
    local = manifest.parent / manifest.stem / p.name
    return local if local.exists() else manifest.parent / p


def turns_of(row: dict, conv: int, gap_s: float = CLOSE_FRAMES * FRAME_S) -> list[Turn]:
    """Merge each speaker's consecutive segments while the gap is < gap_s; ordered by start."""
    y = labels_array(row)
    out = []
    for spk in sorted({s[2] for s in row["segments"]}):
        segs = sorted([s for s in row["segments"] if s[2] == spk], key=lambda s: s[0])
        groups = [[segs[0]]]
        for s in segs[1:]:
            if s[0] - groups[-1][-1][1] < gap_s:
                groups[-1].append(s)
            else:
                groups.append([s])
        for g in groups:
            f0 = int(g[0][0] / FRAME_S)
            act = np.flatnonzero(y[f0:, spk] > 0)
            first = f0 + int(act[0]) if len(act) else f0
            end = int(np.ceil(g[-1][1] / FRAME_S))
            out.append(Turn(conv, spk, first, end, " ".join(s[3] for s in g)))
    return sorted(out, key=lambda t: t.first)


def targets(y: np.ndarray, spk: int, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(spk, bg) float32 (n,) from frame labels y (frames, speakers), frames start..start+n (0 past the end)."""
    seg = np.zeros((n, y.shape[1]), np.float32)
    part = y[start: start + n]
    seg[: len(part)] = part
    other = np.delete(seg, spk, axis=1)
    return seg[:, spk].copy(), (other.max(1) if other.shape[1] else np.zeros(n, np.float32)).astype(np.float32)


def crop_frames(turn: Turn, n_frames_conv: int, r: random.Random | None) -> tuple[int, int]:
    """[start, stop) frames of the crop: from 0-3 frames before the first active frame (sometimes one frame
    late) to 8 frames past the end, clipped to the conversation. r None: the deterministic eval crop
    (the chunk-aligned frame at or before the first active frame, as the worker opens)."""
    if r is None:
        start = turn.first - turn.first % 2
    else:
        start = turn.first + 1 if r.random() < 0.1 else turn.first - r.randint(0, 3)
    stop = min(n_frames_conv, turn.end_frame + CLOSE_FRAMES)
    return max(0, start), max(stop, start + 2)


def jitter(t: np.ndarray, r: random.Random, flip: float = 0.02) -> np.ndarray:
    """Diarizer-like errors: each on/off boundary moved by -1/0/+1 frame, a few frames flipped."""
    t = t.copy()
    edges = np.flatnonzero(np.diff(t) != 0) + 1
    for e in edges:
        d = r.choice((-1, 0, 0, 1))
        if d < 0 and e - 1 >= 0:
            t[e - 1] = t[e]
        elif d > 0 and e < len(t):
            t[e] = t[e - 1]
    for i in range(len(t)):
        if r.random() < flip:
            t[i] = 1.0 - t[i]
    return t


def crop_audio(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Samples of frames [start, stop), zero-padded when the conversation is shorter."""
    seg = x[start * FRAME: stop * FRAME]
    if len(seg) < (stop - start) * FRAME:
        seg = np.concatenate([seg, np.zeros((stop - start) * FRAME - len(seg), x.dtype)])
    return seg


def encode(model, audio, lengths, spk=None, bg=None):
    """Encoder forward exactly as a fresh cache-aware stream sees it, full sequence at once.

    A worker stream starts with PRE_ENCODE_PAD zero feature frames of look-back and every step drops
    PRE_ENCODE_DROP pre-encoded frames, so its encoder frame i covers audio frame i. Here: zero-pad the
    features, pre-encode, drop the first 2 frames, then set the targets (B, T) and run the layers
    (chunked-limited attention at the model's current context equals the step-by-step result).
    Returns (encoded (B, D, T), lengths).
    """
    import torch

    feats, flen = model.preprocessor(input_signal=audio, length=lengths)
    feats = torch.nn.functional.pad(feats, (PRE_ENCODE_PAD, 0))
    x, xlen = model.encoder.pre_encode(x=feats.transpose(1, 2), lengths=flen + PRE_ENCODE_PAD)
    x, xlen = x[:, PRE_ENCODE_DROP:], xlen.long() - PRE_ENCODE_DROP
    T = x.shape[1]
    if spk is not None:  # frames past a row's length are padding: right-pad the targets with zeros
        pad = max(0, T - spk.shape[1])
        spk, bg = (torch.nn.functional.pad(t, (0, pad))[:, :T].to(x.dtype) for t in (spk, bg))
        model.set_speaker_targets(spk, bg)
    return model.encoder(audio_signal=x, length=xlen, bypass_pre_encode=True)
