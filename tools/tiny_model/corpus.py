"""Synthesise the tiny English corpus with espeak-ng (reproducible: every clip has its own seed).

Layout under tools/tiny_model/work/ (gitignored, rebuilt by this script):
  asr/{train,test}.jsonl      plain utterances, 0.1-0.5 s silence around the speech
  eou/train.jsonl             short/long trailing silence, mid-sentence pauses, 2-utterance clips
  eou/{test,test_pause}.jsonl held-out sentences: trailing silence / one mid-sentence pause
Every manifest line is NeMo style (audio_filepath, duration, text) plus the true speech boundaries
(`segments`: [[start, end, text], ...] in seconds) measured from espeak's own output, not guessed, and
`eou_after` (one flag per segment): whether the user's turn ends there. A mid-sentence pause splits one
utterance into two segments, the first of which does not end the turn.
"""
from __future__ import annotations

import io
import json
import random
import subprocess
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SR = 16000
VOICES = ["en-us", "en-gb", "en-gb-x-rp", "en-029"]
VARIANTS = ["", "+m3", "+f2", "+f4"]
PAUSE = (0.12, 0.3)  # mid-sentence pause (s): no <EOU> there


def synth(text: str, r: random.Random, voices: list[str] | None = None) -> np.ndarray:
    """espeak-ng speech for `text` at 16 kHz, random voice/variant/speed/pitch, edge silence trimmed.

    `voices`: espeak voice names to draw from (default: the English VOICES).
    """
    voice = r.choice(voices or VOICES) + r.choice(VARIANTS)
    cmd = ["espeak-ng", "-v", voice, "-s", str(r.randint(135, 195)), "-p", str(r.randint(30, 70)),
           "--stdout", text]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    x, sr = sf.read(io.BytesIO(raw), dtype="float32")
    x = soxr.resample(x, sr, SR)
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    return x[loud[0]: loud[-1] + 1]


def render(parts: list[tuple[float, str]], tail: float, seed: int, path: Path, paused: bool = False,
           voices: list[str] | None = None) -> dict:
    """Write one clip: for each (silence_before, text) the silence then the speech, then `tail` s.

    `paused`: the parts are one utterance cut by mid-sentence pauses, so only the last ends the turn.
    Returns the manifest entry with exact speech boundaries. Light white noise (SNR 25-45 dB) and a
    random gain make the silences not digitally silent.
    """
    r = random.Random(seed)
    pieces, segments, t = [], [], 0.0
    for gap, text in parts:
        speech = synth(text, r, voices) * r.uniform(0.5, 1.0)
        pieces += [np.zeros(int(gap * SR), np.float32), speech]
        t += int(gap * SR) / SR
        segments.append([round(t, 4), round(t + len(speech) / SR, 4), text])
        t += len(speech) / SR
    pieces.append(np.zeros(int(tail * SR), np.float32))
    x = np.concatenate(pieces)
    rms = float(np.sqrt(np.mean(np.concatenate(pieces[1::2]) ** 2)))
    noise = np.random.default_rng(seed).standard_normal(len(x)).astype(np.float32)
    x = x + noise * rms * 10 ** (-r.uniform(25, 45) / 20)
    x = np.clip(x, -1, 1)
    sf.write(path, x, SR, subtype="PCM_16")
    return {"audio_filepath": str(path), "duration": round(len(x) / SR, 4),
            "text": " ".join(s[2] for s in segments), "segments": segments,
            "eou_after": [not paused or i == len(segments) - 1 for i in range(len(segments))]}


def _job(args):
    return render(*args)


def _write(jobs: list, manifest: Path, procs: int = 2) -> list[dict]:
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with Pool(procs) as pool:
        rows = pool.map(_job, jobs, chunksize=32)
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def split_pause(text: str, r: random.Random) -> list[tuple[float, str]] | None:
    """Cut a sentence of >= 3 words at a random word boundary: one utterance with a short pause."""
    w = text.split()
    if len(w) < 3:
        return None
    k = r.randint(1, len(w) - 1)
    return [(r.uniform(0.1, 0.4), " ".join(w[:k])), (r.uniform(*PAUSE), " ".join(w[k:]))]


def build(work: Path, seed: int, n_train: int, n_test: int, n_eou: int, parts=("asr", "eou")) -> None:
    from sentences import split_sentences

    train, test = split_sentences(seed, n_train + 2 * n_eou, n_test)
    asr_train, eou_train = train[:n_train], train[n_train:]
    if "asr" in parts:
        r = random.Random(seed + 1)
        d = work / "asr" / "wav"
        d.mkdir(parents=True, exist_ok=True)
        mk = lambda i, text, split: ([(r.uniform(0.1, 0.5), text)], r.uniform(0.1, 0.5), seed * 1_000_003 + i,
                                     d / f"{split}_{i:05d}.wav")
        _write([mk(i, t, "tr") for i, t in enumerate(asr_train)], work / "asr" / "train.jsonl")
        _write([mk(100_000 + i, t, "te") for i, t in enumerate(test)], work / "asr" / "test.jsonl")
    if "eou" in parts:
        build_eou(work, seed, eou_train, test)
    if "eou2" in parts:  # a second mix: more pauses, <EOU> needed only 0.45-0.6 s after the speech
        build_eou(work, seed + 5, eou_train[::-1], None, name="eou2", p_pause=0.5, short_tail=(0.45, 0.6))


def build_eou(work: Path, seed: int, eou_train: list[str], test: list[str] | None, name: str = "eou",
              p_pause: float = 0.3, short_tail: tuple[float, float] = (0.35, 0.5)) -> None:
    """EOU clips: 55 % one utterance, 30 % one utterance with a mid-sentence pause, 15 % two utterances.

    Half the clips end 0.35-0.5 s after the speech (so <EOU> must come within that), half have 0.6-1.5 s
    of trailing silence (so nothing more is emitted in a long silence after <EOU>). The pauses
    (PAUSE, 120-300 ms) carry no <EOU>: the model learns to wait a little longer than a pause.
    """
    r = random.Random(seed + 2)
    d = work / name / "wav"
    d.mkdir(parents=True, exist_ok=True)
    jobs, it = [], iter(eou_train)
    for i in range(len(eou_train) // 2):
        text, c = next(it), r.random()
        parts = split_pause(text, r) if 0.85 - p_pause <= c < 0.85 else None
        paused = parts is not None
        if parts is None:
            parts = [(r.uniform(0.1, 0.4), text)]
            if c >= 0.85:
                parts.append((r.uniform(0.8, 1.5), next(it)))
        tail = r.uniform(*short_tail) if r.random() < 0.5 else r.uniform(0.6, 1.5)
        jobs.append((parts, tail, seed * 2_000_003 + i, d / f"tr_{i:05d}.wav", paused))
    _write(jobs, work / name / "train.jsonl")
    if test is None:
        return
    _write([([(0.3, t)], 1.0, seed * 3_000_017 + i, d / f"te_{i:05d}.wav") for i, t in enumerate(test)],
           work / "eou" / "test.jsonl")
    pause_jobs = []
    for i, t in enumerate(test):
        parts = split_pause(t, r)
        parts = [(0.3, parts[0][1]), (r.uniform(0.15, PAUSE[1]), parts[1][1])]
        pause_jobs.append((parts, 1.0, seed * 4_000_037 + i, d / f"tp_{i:05d}.wav", True))
    _write(pause_jobs, work / "eou" / "test_pause.jsonl")


def read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
