"""End-to-end figures of the multitalker worker's model path on held-out conversations: streaming DER of
the diarizer as the worker runs it, and cpWER of the speaker-labelled finals the worker's adapter emits.

Every conversation of a set is one session of ONE `MultitalkerAdapter` (services/adapters/multitalker.py),
all stepped together in batches as the engine would (160 ms chunks, a close at the end), so the figures
are those of the worker's own code (its defaults unless a flag says otherwise): incremental features,
the diarizer's look-ahead, row pre-roll, targets, the speaker-silence close. DER: frame level (80 ms), collar 0, overlap counted, best permutation per
conversation, pooled; cpWER: tools/multitalker/cpwer.py, pooled.

    python tools/multitalker/evaluate_worker.py --asr tests/assets/tiny_multitalker.nemo \
        --diar tests/assets/tiny_sortformer.nemo --sets test test_voices --out work/worker_eval.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from conversations import labels_array  # noqa: E402
from cpwer import cpwer  # noqa: E402
from sortformer import der  # noqa: E402


def load_set(path: Path, limit: int | None) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    for r in rows:
        p = Path(r["audio_filepath"])
        r["path"] = p if p.is_absolute() else path.parent / p
    return rows[:limit] if limit else rows


def run_set(adapter, rows: list[dict], batch: int) -> list[dict]:
    """Each row's speaker activity (frames, 4) and finals, sessions stepped `batch` at a time."""
    from services.engine.adapter import StepItem

    n = adapter.chunk_samples
    results = []
    for first in range(0, len(rows), batch):
        group = rows[first: first + batch]
        audio = [sf.read(r["path"], dtype="float32")[0] for r in group]
        chunks = [[a[i: i + n] for i in range(0, len(a), n)] for a in audio]
        probs = [[] for _ in group]
        finals = [[] for _ in group]
        diar_step = adapter.diar.step

        def spy(slots, windows, valid, firsts):  # record what the diarizer said, per session slot
            out, commit = diar_step(slots, windows, valid, firsts)
            spy.calls.append((slots.copy(), out))
            return out, commit

        adapter.diar.step = spy
        slot_of: dict[int, int] = {}  # session slot -> conversation index (look-ahead: slots diarize later)
        try:
            for t in range(max(len(c) for c in chunks)):
                live = [i for i in range(len(group)) if t < len(chunks[i])]
                items = [StepItem(10_000 * first + i, chunks[i][t], is_first=t == 0, is_last=t == len(chunks[i]) - 1)
                         for i in live]
                spy.calls = []
                outs = adapter.step(items)
                for i, out in zip(live, outs):
                    finals[i] += [f for f in out.finals if f.text]
                slot_of.update({s: sid - 10_000 * first for sid, s in adapter.slot_of.items()})
                for slots, out in spy.calls:
                    for j, slot in enumerate(slots.tolist()):
                        probs[slot_of[slot]].append(out[j])
        finally:
            del adapter.diar.step
        for i, r in enumerate(group):
            results.append({"row": r, "probs": np.concatenate(probs[i]), "finals": finals[i]})
    return results


def score(results: list[dict]) -> dict:
    tot = {"miss": 0, "fa": 0, "conf": 0, "ref": 0}
    errors = words = 0
    for res in results:
        row = res["row"]
        _, c = der(res["probs"], labels_array(row))
        for k in tot:
            tot[k] += c[k]
        ref: dict[str, list[str]] = {}
        for _, _, spk, text in sorted(row["segments"]):
            ref.setdefault(str(spk), []).append(text)
        hyp: dict[str, list[str]] = {}
        for f in res["finals"]:
            hyp.setdefault(f.speaker, []).append(f.text)
        e, n = cpwer(ref, hyp)
        errors, words = errors + e, words + n
    return {
        "conversations": len(results),
        "der": (tot["miss"] + tot["fa"] + tot["conf"]) / max(1, tot["ref"]),
        "der_parts": {k: tot[k] / max(1, tot["ref"]) for k in ("miss", "fa", "conf")},
        "cpwer": errors / max(1, words), "ref_words": words,
        "two_speakers": sum(1 for r in results if len({f.speaker for f in r["finals"]}) == 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--asr", default="tests/assets/tiny_multitalker.nemo")
    ap.add_argument("--diar", default="tests/assets/tiny_sortformer.nemo")
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--sets", nargs="+", default=["test", "test_voices"])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default=None)
    ap.add_argument("--target-threshold", type=float, default=0.3)
    ap.add_argument("--speaker-silence-ms", type=int, default=640)
    ap.add_argument("--preroll-chunks", type=int, default=1)
    ap.add_argument("--targets", choices=["nemo", "binary"], default="nemo")
    ap.add_argument("--instances", choices=["turn", "session"], default="turn")
    ap.add_argument("--right-context", type=int, default=None, help="diarizer look-ahead frames (default: the preset)")
    args = ap.parse_args()
    from services.adapters.diarizer_settings import DiarizerSettings
    from services.adapters.multitalker import MultitalkerAdapter

    settings = DiarizerSettings.resolve("low", right_context=args.right_context)
    adapter = MultitalkerAdapter(args.asr, args.diar, max_streams=args.batch, target_threshold=args.target_threshold,
                                 speaker_silence_ms=args.speaker_silence_ms, preroll_chunks=args.preroll_chunks,
                                 targets=args.targets, instances=args.instances, diar_settings=settings)
    report = {"asr": args.asr, "diar": args.diar, "chunk_ms": adapter.chunk_ms, "targets": args.targets,
              "instances": args.instances, "right_context": settings.right_context,
              "target_threshold": args.target_threshold, "preroll_chunks": args.preroll_chunks, "sets": {}}
    for name in args.sets:
        began = time.time()
        res = run_set(adapter, load_set(Path(args.work) / f"{name}.jsonl", args.limit), args.batch)
        report["sets"][name] = score(res) | {"seconds": round(time.time() - began, 1)}
        print(name, json.dumps(report["sets"][name]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
