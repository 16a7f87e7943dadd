"""TTFS (time to final segment) with Pipecat's stt-benchmark methodology, against local workers.

    python benchmarks/ttfs.py --json benchmarks/results/ttfs.json
    python benchmarks/ttfs.py --services nemotron,parakeet-realtime --chunk-ms 160 \
        --mode "one-chunk-wait=--finalize wait" --mode "fork=" --mode "no-wait=--finalize wait --finalize-wait-ms 0"

The harness of pipecat-ai/stt-benchmark, with our services and workers: a synthetic input
transport plays each clip in real time as 20 ms `InputAudioRawFrame`s (then silence), a
`VADProcessor(SileroVADAnalyzer(VADParams(stop_secs=0.2)))` marks the user's stops, and the
service under test sends `finalize` on each. TTFS is Pipecat's own STT TTFB metric: from
the VAD stop minus `stop_secs` (the speech end as the VAD saw it) to the finalized
transcript. "VAD→final" is TTFS minus the 200 ms the VAD waits: what the service adds.

Clips: tests/assets/heldout (one turn each), pause and pause_long (sentences with 0.15-0.6 s
pauses: each pause is a VAD stop and a `finalize` in a bot). WER is measured on heldout, on the
pause sets with a finalize at every VAD stop, and on the pause sets with no finalize at all
(the baseline for what finalizing at pauses costs).

Each `--mode LABEL=FLAGS` is a worker started with those extra flags (the first is the
baseline: the old one-chunk wait; `fork=` is the workers' default, a finalize from a forked
tail). Per service, chunk and mode: one
worker process (`nvasr serve`), one stream at a time, as stt-benchmark's default. Services:
`nemotron`, `parakeet-realtime` (finalize on the VAD stop), `parakeet-realtime-eou` (no
finalize: the model's own `<EOU>` ends the turn; TTFS to that final), `multitalker`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.finalize import word_errors  # noqa: E402
from benchmarks.load import Worker  # noqa: E402

ASSETS = ROOT / "tests/assets"
RESULTS = ROOT / "benchmarks/results/ttfs-160.json"  # the run the services' ttfs_p99_latency comes from
FRAME_MS = 20
RATE = 16000
VAD_STOP_SECS = 0.2
DEFAULT_MODES = ["one-chunk-wait=--finalize wait", "fork="]
SERVICES = {  # name: (worker kind, model, more worker flags, finalize on VAD stop)
    "nemotron": ("nemotron", ASSETS / "tiny_rnnt.nemo", [], True),
    "parakeet-realtime": ("parakeet-realtime", ASSETS / "tiny_eou.nemo", [], True),
    "parakeet-realtime-eou": ("parakeet-realtime", ASSETS / "tiny_eou.nemo", [], False),
    "multitalker": ("multitalker", ASSETS / "tiny_multitalker.nemo",
                    ["--diar-model", str(ASSETS / "tiny_sortformer.nemo")], True),
}


def clip_set(name: str) -> list[dict]:
    import soundfile as sf

    items = json.loads((ASSETS / name / "manifest.json").read_text())
    for item in items:
        samples, rate = sf.read(ASSETS / name / item["audio"], dtype="int16")
        assert rate == RATE
        item["pcm"] = samples.astype("<i2").tobytes()
        item["set"] = name
    return items


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


# ------------------------------------------------------------------------ the pipeline parts


def realtime_input(pcm: bytes, done: asyncio.Event, max_silence_s: float):
    """stt-benchmark's synthetic input: the clip as 20 ms frames at real-time pace (absolute
    clock, so no drift), then silence until `done` is set or `max_silence_s` has passed."""
    from pipecat.frames.frames import InputAudioRawFrame, StartFrame
    from pipecat.transports.base_input import BaseInputTransport
    from pipecat.transports.base_transport import TransportParams

    class RealtimeInput(BaseInputTransport):
        def __init__(self):
            super().__init__(TransportParams(audio_in_enabled=True, audio_in_sample_rate=RATE))
            self.finished = asyncio.Event()

        async def start(self, frame: StartFrame):
            await super().start(frame)
            await self.set_transport_ready(frame)
            self.create_task(self._pump(), "realtime_input")

        async def _pump(self):
            size = RATE * FRAME_MS // 1000 * 2
            silence = bytes(size)
            t0, sent = time.perf_counter(), 0

            async def push(chunk: bytes):
                nonlocal sent
                await self.push_audio_frame(InputAudioRawFrame(audio=chunk, sample_rate=RATE, num_channels=1))
                sent += len(chunk) // 2
                delay = t0 + sent / RATE - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)

            for offset in range(0, len(pcm), size):
                await push(pcm[offset : offset + size])
            audio_end = time.perf_counter()
            while not done.is_set() and time.perf_counter() - audio_end < max_silence_s:
                await push(silence)
            await self._audio_in_queue.join()
            self.finished.set()

    return RealtimeInput()


@dataclass
class ClipRecord:
    """What one clip's pipeline saw: VAD stops, Pipecat's TTFB reports, the final transcripts."""

    vad_stops: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    finals: list[str] = field(default_factory=list)
    finalized: int = 0


def observer(stt, record: ClipRecord, changed: asyncio.Event):
    from pipecat.frames.frames import MetricsFrame, TranscriptionFrame, VADUserStoppedSpeakingFrame
    from pipecat.metrics.metrics import TTFBMetricsData
    from pipecat.observers.base_observer import BaseObserver, FramePushed

    class Collector(BaseObserver):
        async def on_push_frame(self, data: FramePushed):
            frame = data.frame
            if isinstance(frame, VADUserStoppedSpeakingFrame) and data.destination is stt:
                record.vad_stops.append(frame.timestamp)
            elif data.source is stt and isinstance(frame, MetricsFrame):
                record.ttfb += [d.value for d in frame.data if isinstance(d, TTFBMetricsData) and d.value > 0]
            elif data.source is stt and isinstance(frame, TranscriptionFrame):
                record.finals.append(frame.text)
                record.finalized += bool(frame.finalized)
            else:
                return
            changed.set()

    return Collector()


def make_service(name: str, url: str, finalize: bool):
    from pipecat_nvasr import MultitalkerSTTService, NemotronSTTService, ParakeetRealtimeSTTService

    cls = {"nemotron": NemotronSTTService, "multitalker": MultitalkerSTTService}.get(name, ParakeetRealtimeSTTService)
    stt = cls(url=url)
    stt.finalize_on_vad_stop = finalize
    return stt


async def run_clip(service: str, url: str, item: dict, finalize: bool, wait_ttfs: bool) -> ClipRecord:
    """One clip through transport → Silero VAD (stop_secs 0.2) → service, as stt-benchmark."""
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.audio.vad.vad_analyzer import VADParams
    from pipecat.frames.frames import EndFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.task import PipelineParams, PipelineTask
    from pipecat.processors.audio.vad_processor import VADProcessor

    record, changed, done = ClipRecord(), asyncio.Event(), asyncio.Event()
    stt = make_service(service, url, finalize)
    transport = realtime_input(item["pcm"], done, max_silence_s=2.5 if wait_ttfs else 0.0)
    vad = VADProcessor(vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=VAD_STOP_SECS)))
    task = PipelineTask(Pipeline([transport, vad, stt]),
                        params=PipelineParams(audio_in_sample_rate=RATE, enable_metrics=True),
                        observers=[observer(stt, record, changed)])
    runner = asyncio.create_task(PipelineRunner(handle_sigint=False).run(task))
    audio_s = len(item["pcm"]) / 2 / RATE

    async def watch():  # the silence after the clip ends once every VAD stop has its TTFS
        while not done.is_set():
            await changed.wait()
            changed.clear()
            if wait_ttfs and record.vad_stops and len(record.ttfb) >= len(record.vad_stops):
                done.set()

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(transport.finished.wait(), audio_s + 30)
    watcher.cancel()
    await task.queue_frame(EndFrame())  # the service's `close` drain delivers what is left
    await asyncio.wait_for(runner, 30)
    return record


# ------------------------------------------------------------------------ one worker, all clips


def pct(values: list[float], q: float):
    return round(1000 * float(np.percentile(values, q)), 1) if values else None


def wer(items: list[dict], hyps: list[list[str]]) -> float | None:
    said = [words(item["text"]) for item in items]
    total = sum(len(s) for s in said)
    return round(100 * sum(word_errors(s, h) for s, h in zip(said, hyps)) / total, 2) if total else None


async def measure(service: str, url: str, sets: dict[str, list[dict]], finalize: bool, no_finalize_wer: bool) -> dict:
    await run_clip(service, url, sets["heldout"][0], finalize, True)  # warm-up: not counted
    ttfs, per_set, errors = [], {}, []
    for name, items in sets.items():
        hyps = []
        for item in items:
            rec = await run_clip(service, url, item, finalize, wait_ttfs=True)
            hyps.append([w for text in rec.finals for w in words(text)])
            ttfs += rec.ttfb
            if rec.vad_stops and len(rec.ttfb) < len(rec.vad_stops):
                errors.append(f"{name}/{item['audio']}: {len(rec.vad_stops)} VAD stops, {len(rec.ttfb)} TTFS")
        per_set[name] = wer(items, hyps)
    row = {"ttfs_ms": {"n": len(ttfs), "p50": pct(ttfs, 50), "p95": pct(ttfs, 95), "p99": pct(ttfs, 99),
                       "mean": round(1000 * float(np.mean(ttfs)), 1) if ttfs else None},
           "vad_stop_to_final_ms": {q: pct([t - VAD_STOP_SECS for t in ttfs], int(q[1:])) for q in ("p50", "p95", "p99")},
           "wer_pct": per_set, "missing_ttfs": errors}
    paused = [item for name in ("pause", "pause_long") for item in sets.get(name, [])]
    if paused and finalize and no_finalize_wer:  # the paused clips with no finalize: what finalizing costs
        hyps = []
        for item in paused:
            rec = await run_clip(service, url, item, finalize=False, wait_ttfs=False)
            hyps.append([w for text in rec.finals for w in words(text)])
        row["wer_pct"]["pauses_no_finalize"] = wer(paused, hyps)
    if paused and finalize:
        counts = {n: sum(len(words(i["text"])) for i in sets[n]) for n in ("pause", "pause_long") if n in sets}
        row["wer_pct"]["pauses_with_finalize"] = round(  # the same words, weighted per set
            sum(per_set[n] * counts[n] for n in counts) / sum(counts.values()), 2)
    return row


def measured_ttfs_p99(results: dict, service: str, chunk_ms: int = 160) -> float:
    """Seconds: the service's TTFS p99 at `chunk_ms` with the worker's default flags (its default mode)."""
    default = [label for label, flags in results["modes"].items() if not flags.strip()]
    [row] = [r for r in results["rows"] if r["service"] == service and r["chunk_ms"] == chunk_ms
             and r["mode"] in default]
    return row["ttfs_ms"]["p99"] / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", default="nemotron,parakeet-realtime,parakeet-realtime-eou,multitalker")
    ap.add_argument("--chunk-ms", default="160,80,560")
    ap.add_argument("--mode", action="append", help="LABEL=EXTRA WORKER FLAGS; the first is the baseline "
                    f"(default: {DEFAULT_MODES})")
    ap.add_argument("--sets", default="heldout,pause,pause_long")
    ap.add_argument("--limit", type=int, default=0, help="only the first N clips of each set")
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument("--model", action="append", default=[], metavar="SERVICE=PATH",
                    help="another model for a service, e.g. nemotron=work/rnnt.nemo (default: tests/assets)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    modes = [m.split("=", 1) for m in (args.mode or DEFAULT_MODES)]
    models = dict(m.split("=", 1) for m in args.model)
    sets = {name: clip_set(name)[: args.limit or None] for name in args.sets.split(",")}
    out = {"method": "pipecat-ai/stt-benchmark: 20 ms real-time frames, Silero VAD stop_secs 0.2, "
                     "TTFS = Pipecat STT TTFB; one stream at a time",
           "host": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
           "modes": {label: flags for label, flags in modes}, "models": {**{s: str(v[1]) for s, v in SERVICES.items()},
                                                                         **models}, "rows": []}
    for chunk in [int(c) for c in args.chunk_ms.split(",")]:
        for service in args.services.split(","):
            kind, model, model_flags, finalize = SERVICES[service]
            model = models.get(service, model)
            for m, (label, flags) in enumerate(modes if finalize else modes[:1]):
                row = {"service": service, "chunk_ms": chunk, "mode": label if finalize else "eou (no finalize)"}
                extra = [*model_flags, "--admit-lag-ms", "0", "--idle-timeout", "0", *shlex.split(flags)]
                try:
                    worker = Worker(str(model), chunk, args.port, extra, kind=kind)
                except RuntimeError as e:
                    row["refused"] = str(e).strip().splitlines()[-1][:300]
                    print(f"{service} {chunk} ms {label}: worker refused: {row['refused']}", flush=True)
                    out["rows"].append(row)
                    continue
                try:
                    t0 = time.time()
                    # the no-finalize WER once per service and chunk: the worker's finalize mode cannot change it
                    row.update(asyncio.run(measure(service, f"ws://127.0.0.1:{args.port}", sets, finalize,
                                                   no_finalize_wer=m == 0)))
                    row["wall_s"] = round(time.time() - t0, 1)
                finally:
                    worker.stop()
                out["rows"].append(row)
                print_row(row)
                if args.json:
                    args.json.write_text(json.dumps(out, indent=1) + "\n")
    out["host"]["loadavg_end"] = os.getloadavg()
    out["table"] = table(out["rows"])
    print("\n" + out["table"])
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


HEADER = ("| service | chunk ms | mode | TTFS p50 | p95 | p99 | VAD→final p95 | WER heldout % | WER pauses, "
          "finalize % | WER pauses, none % |\n|---|---|---|---|---|---|---|---|---|---|")


def table_line(r: dict) -> str:
    if "refused" in r:
        return f"| {r['service']} | {r['chunk_ms']} | {r['mode']} | refused: {r['refused'][:80]} |||||||"
    t, v, w = r["ttfs_ms"], r["vad_stop_to_final_ms"], r["wer_pct"]
    return (f"| {r['service']} | {r['chunk_ms']} | {r['mode']} | {t['p50']} | {t['p95']} | {t['p99']} | {v['p95']} | "
            f"{w.get('heldout')} | {w.get('pauses_with_finalize', '')} | {w.get('pauses_no_finalize', '')} |")


def table(rows: list[dict]) -> str:
    return "\n".join([HEADER, *map(table_line, rows)])


def print_row(r: dict) -> None:
    print(table_line(r), flush=True)


if __name__ == "__main__":
    main()
