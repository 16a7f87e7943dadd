"""Soak: many short sessions of every kind through one worker; nothing may pile up.

    python benchmarks/soak.py --sessions 100000 --json bench-soak.json          # null model
    python benchmarks/soak.py --sessions 5000 --model tests/assets/tiny_rnnt.nemo

Sessions cycle through five kinds: a normal close, finalize-then-close, an abrupt disconnect
(TCP dropped without a close frame), bad input (an odd-length frame and a non-JSON text frame,
then close), and an oversized frame (fatal, 1009). Every `--every` sessions the worker's RSS,
open file descriptors, engine sessions, model streams and `/metrics` active sessions are
sampled; the JSON holds the samples and the growth from the first sample after warm-up to the
last. tests/test_server_soak.py runs a 2,000-session version in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.wsclient import OP_BINARY, OP_TEXT, RawWebSocket, frame  # noqa: E402

KINDS = ("close", "finalize_close", "abort", "bad_input", "oversized")
SPEECH_FRAME = frame(OP_BINARY, b"\x10\x00" * 1600)  # 100 ms at 16 kHz
FINALIZE = frame(OP_TEXT, b'{"type":"finalize"}')
CLOSE = frame(OP_TEXT, b'{"type":"close"}')
ODD = frame(OP_BINARY, b"\x00" * 321)
NOT_JSON = frame(OP_TEXT, b"hello?")
OVERSIZED = frame(OP_BINARY, b"\x00" * (256 * 1024 + 2))


async def one_session(host: str, port: int, kind: str, headers: dict, timeout: float = 30) -> str:
    """Run one session of `kind`; returns 'ok' or what went wrong."""
    ws = await RawWebSocket.connect(host, port, "/v1/listen?sample_rate=16000", headers=headers, timeout=timeout)
    try:
        for _ in range(3):
            ws.write(SPEECH_FRAME)
        if kind == "abort":
            await asyncio.sleep(0)
            ws.abort()
            return "ok"
        if kind == "finalize_close":
            ws.write(FINALIZE)
        elif kind == "bad_input":
            ws.write(ODD + NOT_JSON)
        elif kind == "oversized":
            ws.write(OVERSIZED)
        ws.write(CLOSE)
        code = await asyncio.wait_for(ws.closed, timeout)
        messages = [json.loads(t) for t in ws.texts]
        types = [m["type"] for m in messages]
        if kind == "oversized":
            ok = code == 1009 and any(m.get("code") == "bad_audio" for m in messages)
        else:
            ok = code == 1000 and types[-1] == "closed"
            if kind == "finalize_close":
                ok = ok and any(m.get("from_finalize") for m in messages)
            if kind == "bad_input":
                ok = ok and [m.get("code") for m in messages if m["type"] == "error"] == ["bad_audio", "bad_message"]
        return "ok" if ok else f"{kind}: close {code}, {types}"
    finally:
        ws.abort()


async def run_soak(host, port, count, concurrency=16, token=None, sample=None, every=1000) -> dict:
    """`count` sessions, `concurrency` at a time; `sample()` is called every `every` sessions."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    failures: dict[str, int] = {}
    samples = []
    next_index = 0
    started = time.perf_counter()

    async def lane() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            try:
                result = await one_session(host, port, KINDS[index % len(KINDS)], headers)
            except Exception as exc:
                result = f"{KINDS[index % len(KINDS)]}: {type(exc).__name__}"
            if result != "ok":
                failures[result] = failures.get(result, 0) + 1
            if sample is not None and (index + 1) % every == 0:
                samples.append({"sessions_done": index + 1, **(await sample())})

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return {"sessions": count, "seconds": round(time.perf_counter() - started, 1), "failures": failures,
            "samples": samples}


def growth(samples: list[dict], skip: int = 1) -> dict:
    """Last sample minus the first after warm-up, per figure."""
    if len(samples) <= skip:
        return {}
    first, last = samples[skip], samples[-1]
    return {k: round(last[k] - first[k], 1) for k in first if k != "sessions_done"}


def main() -> None:
    import subprocess

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--every", type=int, default=5000)
    ap.add_argument("--model", default="null")
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--json")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "services.cli", "serve", "nemotron", "--model", args.model, "--no-auth",
           "--port", str(args.port), "--max-sessions", "256", "--admit-lag-ms", "0"]  # leaks, not admission
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                time.sleep(0.3)

        async def sample() -> dict:
            def read() -> dict:
                health = json.loads(urllib.request.urlopen(base + "/health", timeout=5).read())
                metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
                active = next(float(line.split()[-1]) for line in metrics.splitlines()
                              if line.startswith("nvasr_active_sessions "))
                status = Path(f"/proc/{proc.pid}/status").read_text()
                rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
                return {"rss_mb": round(rss / 1024, 1), "open_fds": len(os.listdir(f"/proc/{proc.pid}/fd")),
                        "engine_sessions": health["sessions"], "model_streams": health["model_streams"],
                        "metrics_active_sessions": active}

            await asyncio.sleep(0.3)  # let the last sessions of the lanes finish their teardown
            return await asyncio.get_running_loop().run_in_executor(None, read)

        result = asyncio.run(run_soak("127.0.0.1", args.port, args.sessions, args.concurrency, None, sample, args.every))
    finally:
        proc.terminate()
        proc.wait(30)
    result.update(model=args.model, concurrency=args.concurrency, growth_after_first_sample=growth(result["samples"]),
                  loadavg=os.getloadavg())
    print(f"{'done':>8} {'rss_mb':>8} {'fds':>5} {'engine':>7} {'streams':>8} {'active':>7}")
    for s in result["samples"]:
        print(f"{s['sessions_done']:>8} {s['rss_mb']:>8} {s['open_fds']:>5} {s['engine_sessions']:>7} "
              f"{s['model_streams']:>8} {s['metrics_active_sessions']:>7}")
    print(f"# {args.sessions} sessions in {result['seconds']} s; failures: {result['failures'] or 'none'}; "
          f"growth: {result['growth_after_first_sample']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
