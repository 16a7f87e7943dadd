"""Two-voice espeak-ng conversations with true per-speaker activity, for the multitalker worker's tiny models.

Each conversation has two clearly distinct voices (one male variant, one female variant, each with its own
fixed speed and pitch), 4-9 turns with pauses, and some overlap (at most MAX_OVERLAP of the speech time).
The frame labels (one row per 80 ms frame, one column per speaker, in order of first speech) come from
espeak's own waveforms: a frame is active for a speaker when at least half of it is inside that speaker's
speech (10 ms energy envelope, gaps under 150 ms inside an utterance closed).
Sentences come from tools/tiny_model (sentences.py, words.txt); held-out conversations use held-out
sentences, and a second held-out set uses voices never used in training.

Layout under tools/multitalker/work/ (gitignored): {train,test,test_voices}/NNNNN.wav and
{train,test,test_voices}.jsonl with audio_filepath, duration, speakers (voice strings), segments
([start, end, speaker, text]) and labels (80 ms frames, "01" strings one per frame).
"""
from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tiny_model"))
from corpus import SR  # noqa: E402
from sentences import split_sentences  # noqa: E402

FRAME_S = 0.08
FRAME = int(FRAME_S * SR)
MAX_OVERLAP = 0.20
# (base voice, variant) pools; the *_HELD ones never appear in training.
BASES = ["en-us", "en-gb", "en-gb-x-rp", "en-029", "en-gb-scotland"]
MALE = ["+m1", "+m2", "+m3", "+m4", "+m5", "+m7"]
FEMALE = ["+f1", "+f2", "+f3", "+f4"]
BASES_HELD = ["en-gb-x-gbclan", "en-gb-x-gbcwmd"]
MALE_HELD = ["+m6", "+m8"]
FEMALE_HELD = ["+f5"]


def pick_voices(r: random.Random, held: bool) -> list[dict]:
    """One male and one female voice (random order), each with its own speed and pitch range."""
    bases, male, female = (BASES_HELD, MALE_HELD, FEMALE_HELD) if held else (BASES, MALE, FEMALE)
    m = {"voice": r.choice(bases) + r.choice(male), "speed": r.randint(140, 185), "pitch": r.randint(25, 50)}
    f = {"voice": r.choice(bases) + r.choice(female), "speed": r.randint(140, 185), "pitch": r.randint(50, 80)}
    return [m, f] if r.random() < 0.5 else [f, m]


def speak(text: str, v: dict, r: random.Random) -> np.ndarray:
    """espeak-ng speech of one voice at 16 kHz (small per-utterance speed/pitch jitter), edges trimmed."""
    cmd = ["espeak-ng", "-v", v["voice"], "-s", str(v["speed"] + r.randint(-8, 8)),
           "-p", str(max(0, min(99, v["pitch"] + r.randint(-5, 5)))), "--stdout", text]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    x, sr = sf.read(io.BytesIO(raw), dtype="float32")
    x = soxr.resample(x, sr, SR)
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    return x[loud[0]: loud[-1] + 1]


def activity(x: np.ndarray, close_s: float = 0.15) -> np.ndarray:
    """Per-sample speech mask of one utterance: 10 ms RMS above 3 % of its peak, short gaps closed."""
    hop = SR // 100
    n = len(x) // hop + 1
    pad = np.zeros(n * hop, np.float32)
    pad[: len(x)] = x
    rms = np.sqrt((pad.reshape(n, hop) ** 2).mean(1))
    on = rms > 0.03 * rms.max()
    idx = np.flatnonzero(on)
    gap = int(close_s * 100)
    for a, b in zip(idx[:-1], idx[1:]):
        if 1 < b - a <= gap:
            on[a:b] = True
    return np.repeat(on, hop)[: len(x)]


def conversation(sents: list[str], seed: int, path: Path, held_voices: bool) -> dict:
    """Render one conversation to `path`; returns its manifest row with segments and frame labels."""
    r = random.Random(seed)
    voices = pick_voices(r, held_voices)
    gains = [r.uniform(0.4, 1.0), r.uniform(0.4, 1.0)]
    n_turns = min(len(sents), r.randint(4, 9))
    utts, spk = [], 0
    for i in range(n_turns):
        if i == 1 or (i > 1 and r.random() > 0.15):  # mostly alternate; sometimes the same speaker goes on
            spk = 1 - spk
        utts.append((spk, sents[i], speak(sents[i], voices[spk], r) * gains[spk]))
    speech_total = sum(len(u[2]) for u in utts)
    overlap_budget = int(MAX_OVERLAP * 0.75 * speech_total)  # overlap / union speech <= 20 %
    lead = int(r.uniform(0.2, 1.0) * SR)
    starts, end_of = [], [0, 0]  # end_of: where each speaker's last utterance ends
    t = lead
    for i, (s, _, x) in enumerate(utts):
        if i > 0:
            prev_end = max(end_of)
            if s != utts[i - 1][0] and r.random() < 0.3 and overlap_budget > 0:
                # barge-in: start before the other speaker finishes (never before own speech ends)
                ov = min(int(r.uniform(0.2, 1.2) * SR), overlap_budget, len(x) // 2, len(utts[i - 1][2]) // 2)
                t = max(prev_end - ov, end_of[s])
            else:
                t = prev_end + int(r.uniform(0.15, 1.2) * SR)
        starts.append(t)
        end_of[s] = t + len(x)
        if i > 0:
            overlap_budget -= max(0, min(end_of[s], max(end_of[1 - s], 0)) - t)
    n = max(end_of) + int(r.uniform(0.3, 1.0) * SR)
    mix = np.zeros(n, np.float32)
    act = np.zeros((2, n), bool)
    segments = []
    for (s, text, x), t0 in zip(utts, starts):
        mix[t0: t0 + len(x)] += x
        act[s, t0: t0 + len(x)] |= activity(x)
        segments.append([round(t0 / SR, 4), round((t0 + len(x)) / SR, 4), s, text])
    rms = float(np.sqrt(np.mean(np.concatenate([u[2] for u in utts]) ** 2)))
    noise = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    mix = np.clip(mix + noise * rms * 10 ** (-r.uniform(25, 45) / 20), -1, 1)
    sf.write(path, mix, SR, subtype="PCM_16")
    # speakers in order of first speech (Sortformer's arrival-time order)
    order = sorted(range(2), key=lambda k: min(a for a, _, s, _ in segments if s == k))
    labels = frame_labels(act[order])
    segments = [[a, b, order.index(s), text] for a, b, s, text in segments]
    return {"audio_filepath": str(path), "duration": round(n / SR, 4),
            "speakers": [voices[k]["voice"] for k in order], "segments": segments,
            "labels": ["".join("1" if v else "0" for v in row) for row in labels.T]}


def frame_labels(act: np.ndarray) -> np.ndarray:
    """(speakers, samples) mask -> (speakers, frames) at 80 ms: active when >= half the frame is speech."""
    n = -(-act.shape[1] // FRAME)
    pad = np.zeros((act.shape[0], n * FRAME), bool)
    pad[:, : act.shape[1]] = act
    return pad.reshape(act.shape[0], n, FRAME).mean(2) >= 0.5


def labels_array(row: dict) -> np.ndarray:
    """Manifest `labels` -> float array (frames, 2)."""
    return np.array([[c == "1" for c in f] for f in row["labels"]], dtype=np.float32)


def overlap_fraction(row: dict) -> float:
    y = labels_array(row)
    return float((y.sum(1) > 1).sum() / max(1, (y.sum(1) > 0).sum()))


def _job(a):
    return conversation(*a)


def build(work: Path, seed: int, n_train: int, n_test: int, procs: int = 2) -> None:
    train_s, test_s = split_sentences(seed, n_train * 7, n_test * 7 * 2)
    r = random.Random(seed)
    sets = {"train": (train_s, n_train, False), "test": (test_s[: n_test * 7], n_test, False),
            "test_voices": (test_s[n_test * 7:], n_test, True)}
    for k_set, (name, (pool_s, n, held)) in enumerate(sets.items()):
        d = work / name
        d.mkdir(parents=True, exist_ok=True)
        jobs = []
        for i in range(n):
            k = r.randint(4, 9)
            jobs.append((r.sample(pool_s, k), seed * 1_000_003 + k_set * 100_003 + i,
                         d / f"{i:05d}.wav", held))
        with Pool(procs) as p:
            rows = p.map(_job, jobs, chunksize=16)
        (work / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        ov = np.mean([overlap_fraction(x) for x in rows])
        print(f"{name}: {n} conversations, {sum(x['duration'] for x in rows) / 3600:.2f} h, "
              f"mean overlap {ov:.1%}, max {max(overlap_fraction(x) for x in rows):.1%}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--train", type=int, default=1500)
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--procs", type=int, default=2)
    a = ap.parse_args()
    build(a.work, a.seed, a.train, a.test, a.procs)
