"""How many real-time callers one worker holds: N WebSocket clients from this process,
ramped against a worker process started here, until latency or errors say it broke.

    python benchmarks/load.py --model null --frame-ms 160 20 --json bench-load-null.json
    python benchmarks/load.py --model tests/assets/tiny_rnnt.nemo --levels 1,16,32,64,96,128

Each client streams real speech (tests/assets/heldout clips, 0.6 s of silence after each)
in real time, in frames of `--frame-ms`, and sends `finalize` 0.2 s after each clip ends,
as a VAD stop would. Per level, over `--duration` seconds after a settling time:
finalize → final (the final with `from_finalize`) p50/p95/p99, partial lag (arrival − when
a microphone would have had the audio up to the partial's `end`) p50/p95/p99, errors (error messages, refused or
dropped connections), the worker's CPU (% of one core) and RSS, its CPU per client
message (µs), and how late this generator sent its frames (if that grows, the generator,
not the worker, is the limit: both share the machine's cores).

"held" is the largest N whose p99 finalize → final is at most 100 ms above the one-stream
figure measured first, in the same run, with no errors. The ramp stops at the first level
that breaks. Clients use the lean client in benchmarks/wsclient.py (frames masked once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.wsclient import OP_TEXT, RawWebSocket, frame, mask_frames  # noqa: E402

TICK_S = 0.005
DEFAULT_LEVELS = {
    ("null", 160): [1, 250, 500, 1000, 1500, 2000, 2500, 3000, 4000],
    ("null", 20): [1, 100, 200, 300, 400, 500, 600, 800, 1000],
    ("model", 160): [1, 8, 16, 32, 48, 64, 96, 128],
    ("model", 20): [1, 8, 16, 32, 48, 64, 96, 128],
}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None}
    a = np.asarray(values) * 1000
    return {"n": len(values), **{f"p{q}": round(float(np.percentile(a, q)), 1) for q in (50, 95, 99)}}


# --------------------------------------------------------------------- audio


def build_sequences(frame_ms: int, count: int = 8, seconds: float = 30.0) -> list[tuple[list[bytes], set[int]]]:
    """Speech timelines as ready-to-write frames, and the frame indices after which to finalize."""
    import soundfile as sf

    folder = ROOT / "tests/assets/heldout"
    clips = [sf.read(p, dtype="float32")[0] for p in sorted(folder.glob("*.wav"))]
    rng = np.random.default_rng(0)
    frame_samples = 16 * frame_ms
    sequences = []
    for _ in range(count):
        parts, finalize_at, total = [], [], 0
        while total < seconds * 16000:
            clip = clips[int(rng.integers(len(clips)))]
            parts += [clip, np.zeros(9600, dtype=np.float32)]  # 0.6 s of silence after the speech
            finalize_at.append(total + len(clip) + 3200)  # VAD stop 0.2 s after the speech ends
            total += len(clip) + 9600
        audio = np.concatenate(parts)
        audio = audio[: len(audio) // frame_samples * frame_samples]
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        frames = mask_frames(pcm, 2 * frame_samples)
        marks = {min(s // frame_samples, len(frames) - 1) for s in finalize_at}
        sequences.append((frames, marks))
    return sequences


FINALIZE = frame(OP_TEXT, b'{"type":"finalize"}')
CLOSE = frame(OP_TEXT, b'{"type":"close"}')


# --------------------------------------------------------------------- clients


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.finalize = []
        self.partial_lag = []
        self.late = []
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.sent = 0

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


class Client:
    def __init__(self, index: int, sequence, stats: Stats, frame_s: float):
        self.frames, self.marks = sequence
        self.k = int(index * 7919) % len(self.frames)  # each client starts somewhere else
        self.sent = 0  # frames sent (stream position = sent * frame)
        self.stats = stats
        self.frame_s = frame_s
        self.t0 = None  # when sample 0 was captured, as a real-time microphone would have it
        self.finalizes: list[float] = []
        self.ws = None
        self.ready = asyncio.get_running_loop().create_future()
        self.done = False

    def on_text(self, text: str) -> None:
        now = time.perf_counter()
        message = json.loads(text)
        kind = message.get("type")
        if kind == "partial":
            if self.t0 is not None:
                self.stats.partial_lag.append(now - (self.t0 + message["end"]))
        elif kind == "final":
            if message.get("from_finalize") and self.finalizes:
                self.stats.finalize.append(now - self.finalizes.pop(0))
        elif kind == "ready":
            self.ready.set_result(None)
        elif kind == "error":
            self.stats.error(message.get("code", "error"))
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(message.get("message", "")))
        elif kind == "closed":
            self.done = True

    def send_next(self, scheduled: float, now: float) -> None:
        if self.t0 is None:
            # A microphone has the audio of a frame at the frame's END; this generator sends each
            # frame at its start, so sample 0 counts as captured one frame before the first send.
            self.t0 = scheduled - self.frame_s
        ws = self.ws
        if not ws.is_open:
            if not self.done:
                self.done = True
                self.stats.error(f"closed {ws.close_code}")
            return
        ws.write(self.frames[self.k])
        self.stats.late.append(now - scheduled)
        self.stats.sent += 1
        if self.k in self.marks:
            ws.write(FINALIZE)
            self.finalizes.append(now)
            self.stats.sent += 1
        self.k = (self.k + 1) % len(self.frames)
        self.sent += 1


class Generator:
    """One ticker for every client: bucket b sends on ticks b, b + B, ... (B = frame / tick)."""

    def __init__(self, host: str, port: int, frame_ms: int):
        self.host, self.port = host, port
        self.frame_s = frame_ms / 1000
        self.buckets = [[] for _ in range(max(1, round(self.frame_s / TICK_S)))]
        self.sequences = build_sequences(frame_ms)
        self.stats = Stats()
        self.clients: list[Client] = []
        self._ticker = None

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        tick = self.frame_s / len(self.buckets)
        start = time.perf_counter()
        j = 0
        while True:
            scheduled = start + j * tick
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.perf_counter()
            for client in self.buckets[j % len(self.buckets)]:
                client.send_next(scheduled, now)
            j += 1

    async def add(self, count: int, parallel: int = 32, per_second: float = 200.0) -> None:
        """Connect `count` more clients, at most `per_second` (callers arrive over time; a
        burst of handshakes would trip the worker's admission control, by design)."""
        sem = asyncio.Semaphore(parallel)

        async def one(index: int) -> None:
            await asyncio.sleep((index - first) / per_second)
            async with sem:
                client = Client(index, self.sequences[index % len(self.sequences)], self.stats, self.frame_s)
                try:
                    client.ws = await RawWebSocket.connect(self.host, self.port, "/v1/listen?sample_rate=16000",
                                                           on_text=client.on_text)
                    await asyncio.wait_for(client.ready, 30)
                except Exception as exc:  # refused (overloaded), reset, timeout
                    self.stats.error(f"connect {type(exc).__name__}")
                    if client.ws is not None:
                        client.ws.abort()
                    return
                self.clients.append(client)
                self.buckets[index % len(self.buckets)].append(client)

        first = len(self.clients)
        await asyncio.gather(*(one(first + i) for i in range(count)))

    async def stop(self) -> None:
        self._ticker.cancel()
        for client in self.clients:
            client.ws.write(CLOSE)
        await asyncio.sleep(1.0)
        for client in self.clients:
            client.ws.abort()


# --------------------------------------------------------------------- the worker


class Worker:
    def __init__(self, model: str, chunk_ms: int, port: int, extra: list[str], root: Path = ROOT, profile=None,
                 kind: str = "nemotron"):
        self.port = port
        self.profile = profile
        prefix = ["-m", "cProfile", "-o", str(profile)] if profile else []
        cmd = [sys.executable, *prefix, "-m", "services.cli", "serve", kind, "--model", model, "--chunk-ms", str(chunk_ms),
               "--no-auth", "--port", str(port), "--max-sessions", "20000", *extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
        # The log goes to a file: a pipe nobody reads fills up and blocks the worker.
        self.log = tempfile.NamedTemporaryFile("w+", prefix="nvasr-load-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("worker did not start: " + Path(self.log.name).read_text()[-2000:])
                time.sleep(0.3)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.profile:  # SIGINT ends in a KeyboardInterrupt: cProfile still writes its stats
            self.proc.send_signal(signal.SIGINT)
            time.sleep(1)
            self.proc.send_signal(signal.SIGINT)
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --------------------------------------------------------------------- the ramp


async def ramp(worker: Worker, frame_ms: int, levels: list[int], settle: float, duration: float) -> list[dict]:
    gen = Generator("127.0.0.1", worker.port, frame_ms)
    await gen.start()
    results, base = [], None
    for level in levels:
        gen.stats.reset()
        connect_started = time.perf_counter()
        await gen.add(level - len(gen.clients))
        connect_s = time.perf_counter() - connect_started
        connect_errors = dict(gen.stats.error_kinds)
        await asyncio.sleep(settle)
        for attempt in (1, 2):  # a level that breaks is measured once more: the machine is shared
            row = await measure_level(gen, worker, duration, level, connect_s, connect_errors, base)
            if row["held"] or connect_errors or row["errors"]:
                break
        row["attempts"] = attempt
        if base is None:
            base = row["finalize_ms"]["p99"]
            row["held"] = row["finalize_ms"]["p99"] is not None and row["errors"] == 0
        results.append(row)
        print_row(frame_ms, row)
        if not row["held"]:
            break
    await gen.stop()
    return results


async def measure_level(gen, worker, duration, level, connect_s, connect_errors, base) -> dict:
    """One measurement window at the current number of callers."""
    gen.stats.reset()
    cpu0, t0 = worker.cpu_seconds(), time.perf_counter()
    await asyncio.sleep(duration)
    cpu1, t1 = worker.cpu_seconds(), time.perf_counter()
    s = gen.stats
    row = {
        "streams": len(gen.clients), "target": level, "connect_s": round(connect_s, 2),
        "finalize_ms": percentiles(s.finalize), "partial_lag_ms": percentiles(s.partial_lag),
        "errors": s.errors + sum(connect_errors.values()), "error_kinds": dict(s.error_kinds),
        "connect_errors": connect_errors,
        "worker_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1), "worker_rss_mb": round(worker.rss_mb(), 1),
        "messages_per_s": round(s.sent / (t1 - t0)),
        "worker_us_per_message": round(1e6 * (cpu1 - cpu0) / max(1, s.sent), 1),
        "generator_late_ms": percentiles(s.late),
    }
    p99 = row["finalize_ms"]["p99"]
    limit = (p99 if base is None else base) + 100
    row["held"] = bool(p99 is not None and p99 <= limit and row["errors"] == 0 and row["streams"] == level)
    return row


def print_row(frame_ms: int, r: dict) -> None:
    f, p = r["finalize_ms"], r["partial_lag_ms"]
    print(f"{frame_ms:>5} {r['streams']:>6} {f['p50'] or '-':>7} {f['p95'] or '-':>7} {f['p99'] or '-':>7} "
          f"{p['p50'] or '-':>7} {p['p99'] or '-':>7} {r['errors']:>6} {r['worker_cpu_pct']:>6} "
          f"{r['worker_rss_mb']:>7} {r['worker_us_per_message']:>6} {r['generator_late_ms']['p99'] or '-':>7} "
          f"{'held' if r['held'] else 'BROKE'} {r['error_kinds'] or ''}{r['connect_errors'] or ''}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="null", help="null, or a .nemo (e.g. tests/assets/tiny_rnnt.nemo)")
    ap.add_argument("--chunk-ms", type=int, default=160)
    ap.add_argument("--frame-ms", type=int, nargs="+", default=[160, 20])
    ap.add_argument("--levels", help="comma-separated stream counts (default: per model kind and frame)")
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--worker-arg", action="append", default=[], help="extra `nvasr serve` flag (repeatable)")
    ap.add_argument("--worker-root", type=Path, default=ROOT, help="run the worker from another checkout (a baseline)")
    ap.add_argument("--profile", help="run the worker under cProfile, stats to this file (written at exit)")
    ap.add_argument("--json")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
        loop_kind = "uvloop"
    except ImportError:
        loop_kind = "asyncio"
    kind = "null" if args.model == "null" else "model"
    report = {"model": args.model, "worker_root": str(args.worker_root), "chunk_ms": args.chunk_ms, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
              "generator_loop": loop_kind, "settle_s": args.settle, "duration_s": args.duration, "runs": []}
    print(f"{'frame':>5} {'N':>6} {'fin50':>7} {'fin95':>7} {'fin99':>7} {'lag50':>7} {'lag99':>7} {'errors':>6} "
          f"{'cpu%':>6} {'rss_mb':>7} {'us/msg':>6} {'late99':>7}")
    for frame_ms in args.frame_ms:
        levels = [int(x) for x in args.levels.split(",")] if args.levels else DEFAULT_LEVELS[(kind, frame_ms)]
        worker = Worker(args.model, args.chunk_ms, args.port, args.worker_arg, args.worker_root, args.profile)
        try:
            rows = asyncio.run(ramp(worker, frame_ms, levels, args.settle, args.duration))
        finally:
            worker.stop()
        held = max([r["streams"] for r in rows if r["held"]], default=0)
        report["runs"].append({"frame_ms": frame_ms, "held": held, "levels": rows})
        print(f"# {args.model} frames {frame_ms} ms: held {held} streams")
    report["loadavg_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
