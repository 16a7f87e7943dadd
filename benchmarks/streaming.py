"""Streaming throughput: N concurrent streams batched by the engine vs the same streams one
at a time, on the same model, in the same run; and the adapter's host cost per stream-step.

    python benchmarks/streaming.py --json bench-streaming.json      # N = 1, 8, 32, 64
    python benchmarks/streaming.py --quick                          # under a minute
    python benchmarks/streaming.py --worker parakeet-realtime       # + EOU latency percentiles
    python benchmarks/streaming.py --model random:nemotron-0.6b --device cuda   # streams per GPU

Both decoder paths run in the same process (`--decoder-path both`, the default): `vectorised`
(services/adapters/vectorised.py, what the workers serve) and `nemo` (NeMo's CacheAwareRNNTPipeline,
the test reference in tests/reference/, as the baseline). For each, the
host cost: step p50 of N streams stepping full chunks on `random:minimal` (a model with next
to no compute) at N = 64 and 256, giving `marginal_us_per_stream_step` = (p50(256) - p50(64)) / 192
and `fixed_ms_per_step` (the intercept); for the vectorised path also the same two figures for
bookkeeping alone (step time minus time inside the model's modules). `--model random:<arch>`
instead of a .nemo runs a ramp: N doubles until the step p50 reaches the chunk duration.

Streams are fed faster than real time (all audio appended at once, as a backlog), so the
figure is the engine's capacity: seconds of audio transcribed per wall-clock second. Host
overhead per stream-step is measured with a null model (no inference) to show what the
engine itself costs. Default model: the project's trained tiny model (d_model 128, 4 layers)
at 160 ms chunks ([70,1]); `--model` takes any .nemo. With `--worker parakeet-realtime` the
EOU adapter runs instead (default model tests/assets/tiny_eou.nemo), and the JSON gains
`eou_latency`: per utterance of tests/assets/eou, true end of speech → `<EOU>` event in
stream time (the end of the chunk whose step emitted it), as percentiles, and how many sentences of
tests/assets/pause were ended at their mid-sentence pause.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipecat_nvasr.protocol import Final  # noqa: E402
from services.engine.adapter import StepItem, StepOutput, StreamingAdapter  # noqa: E402
from services.engine.core import EngineCore  # noqa: E402


class NullAdapter(StreamingAdapter):
    """No model at all: what is left of a step is the engine's own cost."""

    model_name = "null"

    def __init__(self, chunk_samples: int, max_streams: int = 1024):
        self.chunk_samples = chunk_samples
        self.max_streams = max_streams

    def prepare(self, items: list[StepItem]) -> list[StepItem]:
        return items

    def commit(self, items: list[StepItem]) -> list[StepOutput]:
        return [StepOutput() for _ in items]

    def release(self, stream_id: int) -> None:
        pass


def speech_audio(seconds: float, seed: int) -> np.ndarray:
    """Held-out speech clips end to end (a random start per stream), or noise without them."""
    manifest = ROOT / "tests/assets/heldout/manifest.json"
    rng = np.random.default_rng(seed)
    if not manifest.exists():
        return (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)
    import soundfile as sf

    clips = [sf.read(manifest.parent / item["audio"], dtype="float32")[0] for item in json.loads(manifest.read_text())]
    out, total = [], 0
    while total < seconds * 16000:
        clip = clips[int(rng.integers(len(clips)))]
        out.append(clip)
        total += len(clip)
    return np.concatenate(out)[: int(seconds * 16000)]


async def run_streams(adapter: StreamingAdapter, audios: list[np.ndarray], concurrent: bool, max_batch: int,
                      steps: list[tuple[int, float]] | None = None) -> dict:
    """`steps` (if given) collects every step's (streams, seconds)."""
    steps = [] if steps is None else steps
    engine = EngineCore(adapter, max_batch=max_batch, max_buffer_seconds=3600, on_step=lambda b, s: steps.append((b, s)))
    await engine.start()

    async def one(audio: np.ndarray) -> None:
        session = engine.open()
        engine.append(session, audio)
        engine.close(session)
        while (await session.outbox.get()).type != "closed":
            pass

    started = time.perf_counter()
    if concurrent:
        await asyncio.gather(*(one(a) for a in audios))
    else:
        for audio in audios:
            await one(audio)
    wall = time.perf_counter() - started
    await engine.stop()
    latencies = sorted(s for _, s in steps)
    audio_seconds = sum(len(a) for a in audios) / adapter.sample_rate
    return {
        "wall_s": wall,
        "audio_s": audio_seconds,
        "throughput_x_realtime": audio_seconds / wall,
        "steps": len(steps),
        "stream_steps": sum(b for b, _ in steps),
        "mean_batch": statistics.fmean(b for b, _ in steps) if steps else 0.0,
        "step_ms_p50": 1000 * latencies[len(latencies) // 2] if latencies else 0.0,
        "step_ms_p95": 1000 * latencies[int(len(latencies) * 0.95)] if latencies else 0.0,
    }


def load_adapter(model: str, chunk_ms: int, max_streams: int, worker: str = "nemotron", path: str = "vectorised",
                 device: str = "cpu", dtype: str = "float32", amp: bool = False, boosting: bool = True
                 ) -> StreamingAdapter:
    from services.streaming_worker import StreamingConfig, load_adapter as worker_adapter

    if path == "nemo":  # the reference path (tests/reference/): NeMo's own pipeline, as the baseline
        import sys

        sys.path.insert(0, str(ROOT / "tests"))
        from reference.cache_aware import CacheAwareRNNTAdapter
        from reference.eou import EOUAdapter

        from services.random_models import nemo_path

        cls = EOUAdapter if worker == "parakeet-realtime" else CacheAwareRNNTAdapter
        return cls(nemo_path(model, eou=worker == "parakeet-realtime"), chunk_ms=chunk_ms, max_streams=max_streams,
                   device=device, dtype=dtype)
    cfg = StreamingConfig(worker=worker, model=model, device=device, dtype=dtype, chunk_ms=chunk_ms,
                          max_sessions=max_streams, amp=amp, boosting=boosting)
    return worker_adapter(cfg)


def step_p50(adapter: StreamingAdapter, n: int, steps: int, warm: int = 3) -> dict:
    """N streams stepping full chunks of noise together, straight through `adapter.step`."""
    rng = np.random.default_rng(n)
    chunks = [(rng.standard_normal((n, adapter.chunk_samples)) * 0.1).astype(np.float32) for _ in range(4)]
    seconds = getattr(adapter, "seconds", None)
    times, parts = [], []
    for s in range(warm + steps):
        audio = chunks[s % 4]
        items = [StepItem(1_000_000 + i, audio[i], s == 0, False) for i in range(n)]
        before = dict(seconds) if seconds else None
        started = time.perf_counter()
        adapter.step(items)
        elapsed = time.perf_counter() - started
        if s >= warm:
            times.append(elapsed)
            if seconds:
                model = sum(seconds[k] - before[k] for k in ("features", "encoder", "decoder"))
                parts.append((model, elapsed - model))
    for i in range(n):
        adapter.release(1_000_000 + i)
    out = {"streams": n, "step_ms_p50": 1000 * float(np.median(times))}
    if parts:
        out["model_ms_p50"] = 1000 * float(np.median([m for m, _ in parts]))
        out["bookkeeping_ms_p50"] = 1000 * float(np.median([b for _, b in parts]))
    return out


def host_cost(adapter: StreamingAdapter, steps: int, low: int = 64, high: int = 256) -> dict:
    """Marginal and fixed host cost per step (see the module docstring)."""
    runs = [step_p50(adapter, low, steps), step_p50(adapter, high, steps)]
    result = {"runs": runs}
    for key, prefix in (("step_ms_p50", ""), ("bookkeeping_ms_p50", "bookkeeping_")):
        if key in runs[0]:
            slope = (runs[1][key] - runs[0][key]) / (high - low)  # ms per stream-step
            result[f"{prefix}marginal_us_per_stream_step"] = 1000 * slope
            result[f"{prefix}fixed_ms_per_step"] = runs[0][key] - low * slope
    return result


def ramp(adapter: StreamingAdapter, max_streams: int, steps: int) -> dict:
    """Double N until a step takes the chunk's duration: the streams one device keeps real time with."""
    runs, n, chunk_ms = [], 1, adapter.chunk_ms
    while n <= max_streams:
        run = step_p50(adapter, n, steps, warm=2)
        runs.append(run)
        print(f"  ramp N={n:>5}: step p50 {run['step_ms_p50']:.1f} ms (chunk {chunk_ms} ms)", flush=True)
        if run["step_ms_p50"] >= chunk_ms:
            break
        n *= 2
    realtime = [r["streams"] for r in runs if r["step_ms_p50"] < chunk_ms]
    return {"runs": runs, "chunk_ms": chunk_ms, "max_realtime_streams_measured": max(realtime, default=0)}


def default_model(worker: str = "nemotron") -> str:
    eou = worker == "parakeet-realtime"
    trained = ROOT / ("tests/assets/tiny_eou.nemo" if eou else "tests/assets/tiny_rnnt.nemo")
    if trained.exists():
        return str(trained)
    from services.tiny_model import save_tiny_model

    work = Path(tempfile.mkdtemp())
    return str(save_tiny_model(work / "bench.nemo", work, d_model=128, n_layers=4, n_heads=4, eou=eou))


def _turn_ends(adapter: StreamingAdapter, audio: np.ndarray, stream_id: int) -> list[tuple[Final, float]]:
    """Stream one file alone, chunk by chunk: each `<EOU>` final with the stream time it came out."""
    out = []
    n, starts = adapter.chunk_samples, range(0, len(audio), adapter.chunk_samples)
    for i, start in enumerate(starts):
        item = StepItem(stream_id, audio[start : start + n], i == 0, i == len(starts) - 1)
        emitted = min(start + n, len(audio)) / adapter.sample_rate
        out += [(final, emitted) for final in adapter.step([item])[0].finals if final.end_of_turn]
    return out


def eou_latency(adapter: StreamingAdapter) -> dict:
    """True end of speech → `<EOU>` event, stream time, per utterance of tests/assets/eou; and
    how many sentences of tests/assets/pause (one 150-300 ms pause inside) were ended at the pause.

    An `<EOU>` final is matched to the earliest utterance not yet ended whose speech has ended
    by the time it is emitted; one that matches none is extra.
    """
    import soundfile as sf

    base = ROOT / "tests/assets/eou"
    true_s, model_s, missed, extra = [], [], 0, 0
    for index, item in enumerate(json.loads((base / "manifest.json").read_text())):
        audio = sf.read(base / item["audio"], dtype="float32")[0]
        ends = [u["speech_end"] for u in item["utterances"]]
        for final, emitted in _turn_ends(adapter, audio, 10_000 + index):
            if ends and ends[0] <= emitted:
                true_s.append(emitted - ends.pop(0))
                model_s.append(emitted - final.end)
            else:
                extra += 1
        missed += len(ends)
    base = ROOT / "tests/assets/pause"
    paused = json.loads((base / "manifest.json").read_text())
    ended_at_pause = 0
    for index, item in enumerate(paused):
        audio = sf.read(base / item["audio"], dtype="float32")[0]
        ended_at_pause += any(t < item["speech_end"] for _, t in _turn_ends(adapter, audio, 20_000 + index))

    def pct(values: list[float]) -> dict:
        if not values:
            return {}
        p = np.percentile(values, [50, 90, 99])
        return {"p50_ms": 1000 * p[0], "p90_ms": 1000 * p[1], "p99_ms": 1000 * p[2], "mean_ms": 1000 * np.mean(values)}

    return {"utterances": len(true_s) + missed, "detected": len(true_s), "missed": missed, "extra": extra,
            "speech_end_to_eou": pct(true_s), "last_word_to_eou": pct(model_s),
            "paused_sentences": len(paused), "ended_at_pause": ended_at_pause}


def throughput_table(adapter: StreamingAdapter, args, results: dict) -> None:
    """Single vs batched through the engine at each N, plus the null model's engine cost."""
    null = NullAdapter(adapter.chunk_samples)
    header = f"{'N':>4} {'single x-rt':>11} {'batched x-rt':>12} {'speedup':>8} {'mean batch':>10} " \
             f"{'step p50 ms':>11} {'step p95 ms':>11} {'host us/stream-step':>19} {'model/bookkeeping ms':>20}"
    print(header)
    print("-" * len(header))
    seconds = getattr(adapter, "seconds", None)
    for n in args.streams:
        audios = [speech_audio(args.seconds, seed=i) for i in range(n)]
        single = asyncio.run(run_streams(adapter, audios, concurrent=False, max_batch=args.max_batch))
        before = dict(seconds) if seconds else None
        batched = asyncio.run(run_streams(adapter, audios, concurrent=True, max_batch=args.max_batch))
        host = asyncio.run(run_streams(null, audios, concurrent=True, max_batch=args.max_batch))
        host_us = 1e6 * host["wall_s"] / max(1, host["stream_steps"])
        speedup = batched["throughput_x_realtime"] / single["throughput_x_realtime"]
        run = {"streams": n, "single": single, "batched": batched, "null_model": host,
               "speedup_vs_single": speedup, "host_overhead_us_per_stream_step": host_us}
        split = ""
        if seconds:  # batched run: mean per step inside the model's modules vs the adapter's own work
            model = sum(seconds[k] - before[k] for k in ("features", "encoder", "decoder"))
            total = seconds["step"] - before["step"]
            run["model_ms_per_step"] = 1000 * model / batched["steps"]
            run["bookkeeping_ms_per_step"] = 1000 * (total - model) / batched["steps"]
            split = f"{run['model_ms_per_step']:.1f} / {run['bookkeeping_ms_per_step']:.2f}"
        results["runs"].append(run)
        print(f"{n:>4} {single['throughput_x_realtime']:>11.1f} {batched['throughput_x_realtime']:>12.1f} "
              f"{speedup:>7.2f}x {batched['mean_batch']:>10.1f} {batched['step_ms_p50']:>11.1f} "
              f"{batched['step_ms_p95']:>11.1f} {host_us:>19.1f} {split:>20}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["nemotron", "parakeet-realtime", "multitalker"], default="nemotron",
                        help="multitalker: benchmarks/multitalker.py (conversations; sessions and rows per step)")
    parser.add_argument("--model", help=".nemo file or random:<arch> (default: tests/assets/tiny_rnnt.nemo / "
                        "tiny_eou.nemo); a random: spec runs the streams-per-device ramp")
    parser.add_argument("--diar-model", help="multitalker: the diarizer .nemo (default: tests/assets/tiny_sortformer.nemo)")
    parser.add_argument("--decoder-path", choices=["vectorised", "nemo", "both"], default="both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float64 (default: float32; "
                        "bfloat16 autocast on CUDA)")
    parser.add_argument("--no-boosting", action="store_true",
                        help="vectorised path without per-stream boosting (lets NeMo use its CUDA-graph decoder)")
    parser.add_argument("--chunk-ms", type=int, default=160)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=8.0, help="audio per stream")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--host-steps", type=int, default=10, help="timed steps per N for the host cost (0: skip)")
    parser.add_argument("--ramp-max", type=int, default=None, help="largest N of the ramp (CPU default 4)")
    parser.add_argument("--quick", action="store_true", help="N = 1, 8, 32 with 2 s each")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args()
    if args.quick:
        args.streams, args.seconds = [1, 8, 32], 2.0
    if args.worker == "multitalker":
        from multitalker import bench

        results = bench(args)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
            print(f"wrote {args.json}")
        return

    import torch

    torch.set_num_threads(args.threads)
    paths = ["vectorised", "nemo"] if args.decoder_path == "both" else [args.decoder_path]
    cuda = args.device.startswith("cuda")
    dtype, amp = args.dtype or "float32", bool(cuda and args.dtype in (None, "bfloat16"))
    if amp:
        dtype = "bfloat16"
    model = args.model or default_model(args.worker)
    results = {"model": model, "chunk_ms": args.chunk_ms, "seconds_per_stream": args.seconds,
               "threads": args.threads, "device": args.device, "dtype": dtype, "paths": {}}
    if args.worker != "nemotron":
        results["worker"] = args.worker

    if model.startswith("random:") and model != "random:minimal":
        path = paths[0]
        ramp_max = args.ramp_max or (4096 if cuda else 4)
        print(f"{model} on {args.device} ({dtype}{' autocast' if amp else ''}), {path} path, N up to {ramp_max}")
        adapter = load_adapter(model, args.chunk_ms, ramp_max, args.worker, path, args.device, dtype, amp,
                               not args.no_boosting)
        adapter.warmup()
        results["ramp"] = ramp(adapter, ramp_max, steps=max(3, args.host_steps // 2))
        results["ramp"].update(decoder_path=path, boosting=not args.no_boosting)
        print(f"streams kept in real time (largest N measured with step < chunk): "
              f"{results['ramp']['max_realtime_streams_measured']}")
    else:
        for path in paths:
            print(f"\n[{path} path] {model}")
            adapter = load_adapter(model, args.chunk_ms, max(args.streams), args.worker, path, args.device,
                                   dtype, amp)
            adapter.warmup()
            section = results["paths"][path] = {"runs": []}
            throughput_table(adapter, args, section)
            if args.worker == "parakeet-realtime":
                section["eou_latency"] = latency = eou_latency(adapter)
                true_s = latency["speech_end_to_eou"]
                print(f"EOU: {latency['detected']}/{latency['utterances']} utterances ended by <EOU> "
                      f"({latency['extra']} extra); end of speech → <EOU> p50 "
                      f"{true_s.get('p50_ms', float('nan')):.0f} ms, p90 {true_s.get('p90_ms', float('nan')):.0f} ms, "
                      f"p99 {true_s.get('p99_ms', float('nan')):.0f} ms; sentences with a mid-sentence pause "
                      f"ended at the pause: {latency['ended_at_pause']}/{latency['paused_sentences']}")
            del adapter
        results["runs"] = results["paths"][paths[0]]["runs"]  # the default path, as before
        if "eou_latency" in results["paths"][paths[0]]:
            results["eou_latency"] = results["paths"][paths[0]]["eou_latency"]

    if args.host_steps > 0:
        print(f"\nhost cost per stream-step, random:minimal, {args.chunk_ms} ms chunks, N = 64 → 256 "
              f"({args.threads} threads; this CPU is shared, expect noise)")
        results["host_cost"] = {}
        for path in paths:
            adapter = load_adapter("random:minimal", args.chunk_ms, 256, "nemotron", path, args.device, dtype, amp)
            adapter.warmup()
            cost = results["host_cost"][path] = host_cost(adapter, args.host_steps)
            line = (f"  {path:>10}: marginal {cost['marginal_us_per_stream_step']:7.1f} us/stream-step, "
                    f"fixed {cost['fixed_ms_per_step']:6.2f} ms/step")
            if "bookkeeping_marginal_us_per_stream_step" in cost:
                line += (f"; bookkeeping alone: marginal {cost['bookkeeping_marginal_us_per_stream_step']:.1f} "
                         f"us/stream-step, fixed {cost['bookkeeping_fixed_ms_per_step']:.2f} ms/step")
            print(line, flush=True)
            del adapter
        first = results["host_cost"][paths[0]]
        results["marginal_us_per_stream_step"] = first["marginal_us_per_stream_step"]
        results["fixed_ms_per_step"] = first["fixed_ms_per_step"]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
