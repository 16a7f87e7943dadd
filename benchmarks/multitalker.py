"""Multitalker throughput (`benchmarks/streaming.py --worker multitalker`): N two-voice
conversations batched by the engine vs the same conversations one at a time, in the same run.

    python benchmarks/streaming.py --worker multitalker --json benchmarks/results/multitalker-cpu.json
    python benchmarks/streaming.py --worker multitalker --quick

A multitalker step is two batched model calls: the streaming diarizer over every session that
brought a chunk, then the ASR over every open (session, speaker) row. So besides throughput the
table gives, from the adapter's cumulative `stats`, sessions per step and rows per step (how many
speakers were talking at once, summed over the batch) and where a step's time goes (diarizer vs
ASR), and the step latency by sessions in the step. Audio: the held-out conversations of
tests/assets/conversations, stream i playing conversation i mod 5 (whole, then the next), fed
as a backlog — the figure is the worker's capacity, not a real-time run. Default models: the
bundled tiny ones (tests/assets).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONVERSATIONS = ROOT / "tests/assets/conversations"
STATS = ("steps", "sessions", "rows", "diarizer_seconds", "asr_seconds")


def default_models() -> tuple[str, str]:
    return str(ROOT / "tests/assets/tiny_multitalker.nemo"), str(ROOT / "tests/assets/tiny_sortformer.nemo")


def conversation_audio(seconds: float, index: int) -> np.ndarray:
    """`seconds` of conversations, starting with conversation `index` (mod how many there are)."""
    import soundfile as sf

    rows = [json.loads(line) for line in (CONVERSATIONS / "manifest.jsonl").read_text().splitlines() if line.strip()]
    out, total, k = [], 0, index
    while total < seconds * 16000:
        audio = sf.read(CONVERSATIONS / rows[k % len(rows)]["audio_filepath"], dtype="float32")[0]
        out.append(audio)
        total += len(audio)
        k += 1
    return np.concatenate(out)[: int(seconds * 16000)]


def _delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in STATS}


def _per_step(stats: dict) -> dict:
    steps = max(1, stats["steps"])
    return {"sessions_per_step": stats["sessions"] / steps, "rows_per_step": stats["rows"] / steps,
            "diarizer_ms_per_step": 1000 * stats["diarizer_seconds"] / steps,
            "asr_ms_per_step": 1000 * stats["asr_seconds"] / steps}


async def _run(adapter, audios, concurrent: bool, max_batch: int, steps: list) -> dict:
    from streaming import run_streams  # the engine loop streaming.py times for the other workers

    before = dict(adapter.stats)
    result = await run_streams(adapter, audios, concurrent, max_batch, steps)
    result["adapter"] = stats = _delta(adapter.stats, before)
    result.update(_per_step(stats))
    return result


def latency_by_sessions(steps: list[tuple[int, float]]) -> dict:
    """Step time p50 (ms) by how many sessions the step ran."""
    buckets = defaultdict(list)
    for n, seconds in steps:
        buckets[n].append(seconds)
    return {n: {"steps": len(v), "step_ms_p50": 1000 * float(np.median(v))} for n, v in sorted(buckets.items())}


def _prime(adapter, audio: np.ndarray, ids: list[int], chunks: int):
    """Step every session through the same first `chunks` chunks of `audio` (identical rows per session)."""
    from services.engine.adapter import StepItem

    n = adapter.chunk_samples
    for c in range(chunks):
        adapter.step([StepItem(i, audio[c * n : (c + 1) * n], is_first=c == 0, is_last=False) for i in ids])


def step_counts(asr: str, diar: str, chunk_ms: int, device: str, ns=(4, 16), at_chunk: int = 12) -> dict:
    """Tensor ops, host syncs and Python calls of one multitalker step (and of its diarizer call alone)
    at N and N' sessions, NeMo's Sortformer update ("before") vs the vectorised one ("after"); every
    session plays the same conversation, so each brings the same rows (both speakers talk at 1.9 s).
    Counted after a warm-up pass at N: without it, one-time costs of the first pass lower the difference."""
    from opcount import count, per_added

    from services.adapters.multitalker import MultitalkerAdapter
    from services.engine.adapter import StepItem

    audio = conversation_audio(8.0, 0)
    out = {}
    for impl, label in (("nemo", "before"), ("vectorised", "after")):
        adapter = MultitalkerAdapter(asr, diar, chunk_ms=chunk_ms, max_streams=max(ns), device=device, diar_impl=impl)
        n = adapter.chunk_samples
        counted, base = {}, 0
        for sessions in (ns[0], *ns):  # the first pass warms one-time paths (lazy buffers, caches): overwritten
            ids = list(range(base, base + sessions))
            base += sessions
            _prime(adapter, audio, ids, at_chunk)
            rows_before = adapter.stats["rows"]
            items = [StepItem(i, audio[at_chunk * n : (at_chunk + 1) * n], is_first=False, is_last=False) for i in ids]
            whole = count(lambda: adapter.step(items))
            whole["rows"] = adapter.stats["rows"] - rows_before
            d = adapter.diar
            slots = np.array([adapter.slot_of[i] for i in ids])
            window = audio[(at_chunk + 1) * n : (at_chunk + 1) * n + d.window_samples]
            diar_only = count(lambda: d.step(slots, [window] * sessions, np.full(sessions, len(window)),
                                             np.zeros(sessions, bool)))  # not committed
            counted[sessions] = {"step": whole, "diarizer": diar_only}
            for i in ids:
                adapter.release(i)
        lo, hi = ns[0], ns[-1]
        out[label] = {"diar_impl": impl, "counts": counted,
                      "step_per_added_session": per_added(counted[lo]["step"], counted[hi]["step"], lo, hi),
                      "diarizer_per_added_session": per_added(counted[lo]["diarizer"], counted[hi]["diarizer"], lo, hi)}
        del adapter
    return out


def print_counts(counts: dict, ns=(4, 16)) -> None:
    lo, hi = ns[0], ns[-1]
    print(f"\nper added session-step (N = {lo} → {hi}, same conversation in every session; counts, not times):")
    header = (f"{'':>7} {'part':>9} {'ops N=' + str(lo):>10} {'ops N=' + str(hi):>10} {'ops/session':>11} "
              f"{'syncs/session':>13} {'py calls/session':>16} {'rows/session':>12}")
    print(header)
    for label, c in counts.items():
        for part in ("step", "diarizer"):
            a, b = c["counts"][lo][part], c["counts"][hi][part]
            m = c[f"{part}_per_added_session"]
            rows = f"{b['rows'] / hi:.1f}" if part == "step" else ""
            print(f"{label:>7} {part:>9} {a['ops']:>10} {b['ops']:>10} {m['ops']:>11.1f} {m['syncs']:>13.1f} "
                  f"{m['calls']:>16.1f} {rows:>12}")


def bench(args) -> dict:
    """The table and the results dict (args: streaming.py's)."""
    import torch

    from services.streaming_worker import StreamingConfig, load_adapter

    torch.set_num_threads(args.threads)
    asr, diar = default_models()
    asr, diar = args.model or asr, args.diar_model or diar
    dtype = args.dtype or "float32"
    adapter = load_adapter(StreamingConfig(worker="multitalker", model=asr, diar_model=diar, device=args.device,
                                           dtype=dtype, chunk_ms=args.chunk_ms, max_sessions=max(args.streams)))
    adapter.warmup()
    results = {"worker": "multitalker", "model": asr, "diar_model": diar, "chunk_ms": adapter.chunk_ms,
               "seconds_per_stream": args.seconds, "threads": args.threads, "device": args.device, "dtype": dtype,
               "runs": []}
    print(f"multitalker: {asr} + {diar} on {args.device} ({dtype}), {adapter.chunk_ms} ms chunks")
    header = (f"{'N':>4} {'single x-rt':>11} {'batched x-rt':>12} {'speedup':>8} {'sessions/step':>13} "
              f"{'rows/step':>9} {'rows/step 1-at-a-time':>21} {'step p50 ms':>11} {'step p95 ms':>11} "
              f"{'diar/asr ms per step':>20}")
    print(header)
    print("-" * len(header))
    batched_log: list[tuple[int, float]] = []
    for n in args.streams:
        audios = [conversation_audio(args.seconds, i) for i in range(n)]
        single_steps, batched_steps = [], []
        single = asyncio.run(_run(adapter, audios, False, args.max_batch, single_steps))
        batched = asyncio.run(_run(adapter, audios, True, args.max_batch, batched_steps))
        speedup = batched["throughput_x_realtime"] / single["throughput_x_realtime"]
        results["runs"].append({"streams": n, "single": single, "batched": batched, "speedup_vs_single": speedup})
        batched_log.extend(batched_steps)
        print(f"{n:>4} {single['throughput_x_realtime']:>11.1f} {batched['throughput_x_realtime']:>12.1f} "
              f"{speedup:>7.2f}x {batched['sessions_per_step']:>13.1f} {batched['rows_per_step']:>9.1f} "
              f"{single['rows_per_step']:>21.2f} {batched['step_ms_p50']:>11.1f} {batched['step_ms_p95']:>11.1f} "
              f"{batched['diarizer_ms_per_step']:>9.1f} / {batched['asr_ms_per_step']:<9.1f}", flush=True)
    results["step_latency_by_sessions"] = latency_by_sessions(batched_log)
    results["op_counts"] = step_counts(asr, diar, adapter.chunk_ms, args.device)
    print_counts(results["op_counts"])
    print("\nstep latency by sessions in the step (all batched runs): " + ", ".join(
        f"{n}: {v['step_ms_p50']:.1f} ms ({v['steps']} steps)" for n, v in results["step_latency_by_sessions"].items()))
    return results
