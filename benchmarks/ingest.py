"""Ingest cost: worker CPU per client message, measured by blasting frames (no pacing).

    python benchmarks/ingest.py --json bench-ingest.json
    python benchmarks/ingest.py --worker-root /tmp/base-checkout      # the same on older code

K connections each send M audio frames as fast as the socket takes them, then `finalize`,
and wait for its final. The worker's CPU time (user + system, from /proc) over the whole
blast, divided by the frames, is the host cost of one message — receive, WebSocket parsing,
the ASGI hop, conversion, the engine's append and steps — with the null model, so no
inference. CPU time, unlike latency, barely depends on what else the machine runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.load import Worker  # noqa: E402
from benchmarks.wsclient import OP_BINARY, OP_TEXT, RawWebSocket, frame  # noqa: E402


async def blast_websockets(port: int, connections: int, frames: int, frame_ms: int) -> float:
    """The same with the `websockets` client (what Pipecat services use): it offers
    permessage-deflate, so the worker's setting decides whether every frame is compressed."""
    import numpy as np
    import websockets

    pcm = (np.random.default_rng(0).standard_normal(16 * frame_ms) * 3000).astype("<i2").tobytes()

    async def one() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/v1/listen") as ws:
            await ws.recv()
            per_second = 1000 // frame_ms
            for start in range(0, frames, per_second):
                for _ in range(min(per_second, frames - start)):
                    await ws.send(pcm)
                await asyncio.sleep(0.1)
            await ws.send('{"type":"finalize"}')
            await ws.send('{"type":"close"}')
            async for _ in ws:
                pass

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    return time.perf_counter() - started


async def blast(port: int, connections: int, frames: int, frame_ms: int) -> float:
    payload = frame(OP_BINARY, b"\x01\x00" * (16 * frame_ms))
    finalize = frame(OP_TEXT, b'{"type":"finalize"}')
    close = frame(OP_TEXT, b'{"type":"close"}')

    async def one() -> None:
        ws = await RawWebSocket.connect("127.0.0.1", port, "/v1/listen")
        per_second = 1000 // frame_ms
        for start in range(0, frames, per_second):
            ws.write(payload * min(per_second, frames - start))
            await asyncio.sleep(0.1)  # 10x real time per connection: far from the backlog bound
        ws.write(finalize + close)
        await asyncio.wait_for(ws.closed, 120)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    return time.perf_counter() - started


def measure(root: Path, frame_ms: int, connections: int, frames: int, port: int, deflate=None) -> dict:
    extra = ["--admit-lag-ms=0", "--idle-timeout=0"] if root == ROOT else []  # flags older checkouts lack
    if deflate:
        extra.append("--ws-deflate")
    worker = Worker("null", 160, port, extra, root)
    try:
        time.sleep(1.0)
        cpu0 = worker.cpu_seconds()
        run = blast if deflate is None else blast_websockets
        wall = asyncio.run(run(port, connections, frames, frame_ms))
        cpu = worker.cpu_seconds() - cpu0
    finally:
        worker.stop()
    messages = connections * (frames + 2)
    client = "lean" if deflate is None else f"websockets, server deflate {'on' if deflate else 'off'}"
    return {"frame_ms": frame_ms, "client": client, "messages": messages, "wall_s": round(wall, 2), "worker_cpu_s": round(cpu, 2),
            "us_per_message": round(1e6 * cpu / messages, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0, help="audio per connection")
    ap.add_argument("--frame-ms", type=int, nargs="+", default=[20, 160])
    ap.add_argument("--worker-root", type=Path, action="append", help="checkout(s) to measure (default: this one)")
    ap.add_argument("--port", type=int, default=8767)
    ap.add_argument("--deflate", action="store_true",
                    help="also: the websockets client against this checkout, permessage-deflate on and off")
    ap.add_argument("--json")
    args = ap.parse_args()
    roots = args.worker_root or [ROOT]
    rows = []
    print(f"{'root':<28} {'frame':>5} {'messages':>9} {'cpu_s':>6} {'us/msg':>7}")
    for frame_ms in args.frame_ms:
        for root in roots:
            row = {"root": str(root), **measure(root, frame_ms, args.connections,
                                                int(args.seconds * 1000 / frame_ms), args.port)}
            rows.append(row)
            print(f"{str(root)[-28:]:<28} {frame_ms:>5} {row['messages']:>9} {row['worker_cpu_s']:>6} "
                  f"{row['us_per_message']:>7}", flush=True)
        if args.deflate:
            for deflate in (True, False):
                row = {"root": str(ROOT), **measure(ROOT, frame_ms, args.connections,
                                                    int(args.seconds * 1000 / frame_ms), args.port, deflate)}
                rows.append(row)
                print(f"{row['client'][-28:]:<28} {frame_ms:>5} {row['messages']:>9} {row['worker_cpu_s']:>6} "
                      f"{row['us_per_message']:>7}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"loadavg": os.getloadavg(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
