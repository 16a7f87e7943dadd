"""Build the synthetic corpus (tools/tiny_model/work/) and the small committed test assets.

    python tools/tiny_model/make_data.py [--seed 1234]

tests/assets/heldout/  24 held-out utterances (sentences never in training) + manifest.json
tests/assets/eou/      8 clips of 2-3 held-out utterances separated by ~1.2 s silence + manifest.json
tests/assets/demo.wav  3 short held-out sentences with ~1 s pauses (~10 s) + demo.txt
tests/assets/pause_long/ 12 other held-out sentences with one or two 0.2-0.6 s pauses + manifest.json
tests/assets/pause/    10 held-out sentences, each cut at a word boundary by a 0.15-0.3 s mid-sentence
                       pause (one turn: <EOU> only at the end) + manifest.json
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpus import PAUSE, build, render, split_pause  # noqa: E402
from sentences import split_sentences  # noqa: E402

ASSETS = HERE.parents[1] / "tests" / "assets"
N_TRAIN, N_TEST, N_EOU = 10000, 300, 8000


def make_assets(seed: int) -> None:
    _, test = split_sentences(seed, N_TRAIN + 2 * N_EOU, N_TEST)
    tmpl = test[:60]  # natural template sentences, 3-8 words, never in training
    r = random.Random(seed + 99)
    held = ASSETS / "heldout"
    held.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(tmpl[:24]):
        e = render([(r.uniform(0.2, 0.4), text)], r.uniform(0.3, 0.5), seed * 5_000_011 + i, held / f"h{i:02d}.wav")
        s = e["segments"][0]
        rows.append({"audio": f"h{i:02d}.wav", "text": text, "speech_start": s[0], "speech_end": s[1]})
    (held / "manifest.json").write_text(json.dumps(rows, indent=1) + "\n")

    eou = ASSETS / "eou"
    eou.mkdir(parents=True, exist_ok=True)
    rows, pool = [], iter(tmpl[24:])
    for i in range(8):
        texts = [next(pool) for _ in range(3 if i % 2 == 0 else 2)]
        parts = [(0.3 if j == 0 else r.uniform(1.1, 1.3), t) for j, t in enumerate(texts)]
        e = render(parts, 1.0, seed * 6_000_011 + i, eou / f"e{i}.wav")
        rows.append({"audio": f"e{i}.wav", "text": e["text"],
                     "utterances": [{"text": t, "speech_start": a, "speech_end": b} for a, b, t in e["segments"]]})
    (eou / "manifest.json").write_text(json.dumps(rows, indent=1) + "\n")

    demo = [next(pool) for _ in range(3)]
    e = render([(0.5, demo[0]), (1.0, demo[1]), (1.0, demo[2])], 0.8, seed * 7_000_003, ASSETS / "demo.wav")
    (ASSETS / "demo.txt").write_text("\n".join(demo) + "\n")
    print("demo:", demo, e["duration"], "s")

    pause = ASSETS / "pause"
    pause.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(list(pool)[:10]):
        (_, first), (_, second) = split_pause(text, r)
        e = render([(0.3, first), (r.uniform(0.15, PAUSE[1]), second)], 1.0, seed * 8_000_009 + i,
                   pause / f"p{i}.wav", paused=True)
        (_, a, _), (b, end, _) = e["segments"]
        rows.append({"audio": f"p{i}.wav", "text": text, "pause": [a, b], "speech_end": end})
    (pause / "manifest.json").write_text(json.dumps(rows, indent=1) + "\n")


def make_long_pauses(seed: int, n: int = 12) -> None:
    """tests/assets/pause_long: other held-out sentences with one or two 0.2-0.6 s pauses inside.

    Pipecat's Silero VAD stops after 0.2 s of silence, so each pause here is one `finalize` in a
    bot: the set that shows whether a finalize at a pause costs words (issue 9).
    """
    _, test = split_sentences(seed, N_TRAIN + 2 * N_EOU, N_TEST)
    r = random.Random(seed + 199)
    out = ASSETS / "pause_long"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate([t for t in test[60:] if len(t.split()) >= 4][:n]):
        w = text.split()
        cuts = sorted(r.sample(range(1, len(w)), 2 if i % 3 == 0 and len(w) >= 5 else 1))
        bounds = [0, *cuts, len(w)]
        parts = [(0.3 if j == 0 else r.uniform(0.2, 0.6), " ".join(w[a:b])) for j, (a, b) in enumerate(zip(bounds, bounds[1:]))]
        e = render(parts, 1.0, seed * 9_000_011 + i, out / f"l{i:02d}.wav", paused=True)
        segs = e["segments"]
        rows.append({"audio": f"l{i:02d}.wav", "text": text,
                     "pauses": [[a[1], b[0]] for a, b in zip(segs, segs[1:])], "speech_end": segs[-1][1]})
    (out / "manifest.json").write_text(json.dumps(rows, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--assets-only", action="store_true")
    ap.add_argument("--parts", default="asr,eou,eou2", help="which corpora to (re)build")
    a = ap.parse_args()
    make_assets(a.seed)
    make_long_pauses(a.seed)
    if not a.assets_only:
        build(a.work, a.seed, N_TRAIN, N_TEST, N_EOU, parts=a.parts.split(","))


if __name__ == "__main__":
    main()
