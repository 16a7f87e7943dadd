"""Engine host cost: µs of engine work per stream-step with no model, by number of sessions.

    python benchmarks/engine_host.py --json bench-engine-host.json
    python benchmarks/engine_host.py --root /tmp/base-checkout        # an older engine

N sessions each hold a backlog of audio (all appended at once) and are stepped to the end
with the null adapter, 64 streams per step; wall time / stream-steps is what the engine
itself costs per chunk of one stream (scheduling, cutting the chunk, the hop to the inference
thread, delivering). Idle sessions (open, no audio) are added alongside to show whether the
cost grows with sessions that have nothing to do — at thousands of real-time streams most
sessions are waiting for audio at any instant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path


async def measure(core, adapter_cls, active: int, idle: int, chunks: int) -> dict:
    import numpy as np

    adapter = adapter_cls(chunk_ms=160)
    engine = core.EngineCore(adapter, max_batch=64, max_buffer_seconds=3600)
    await engine.start()
    waiting = [engine.open() for _ in range(idle)]
    sessions = [engine.open() for _ in range(active)]
    audio = np.zeros(adapter.chunk_samples * chunks, dtype=np.float32)
    cpu0, started = time.process_time(), time.perf_counter()
    for session in sessions:
        engine.append(session, audio)
        engine.close(session)

    async def drain(session) -> None:
        while (await session.outbox.get()).type != "closed":
            pass

    await asyncio.gather(*(drain(s) for s in sessions))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    for session in waiting:
        engine.drop(session)
    await engine.stop()
    stream_steps = active * chunks
    return {"active": active, "idle": idle, "stream_steps": stream_steps,
            "us_per_stream_step": round(1e6 * wall / stream_steps, 1),
            "cpu_us_per_stream_step": round(1e6 * cpu / stream_steps, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--chunks", type=int, default=60)
    ap.add_argument("--json")
    args = ap.parse_args()
    sys.path.insert(0, str(args.root))
    from services.engine import core  # noqa: E402

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from services.adapters.null import NullAdapter  # noqa: E402  (any checkout: the adapter is trivial)

    rows = []
    print(f"{'active':>7} {'idle':>6} {'us/stream-step':>15} {'cpu us':>7}")
    for active, idle in [(4, 0), (64, 0), (256, 0), (1024, 0), (256, 2000)]:
        row = asyncio.run(measure(core, NullAdapter, active, idle, args.chunks))
        rows.append(row)
        print(f"{active:>7} {idle:>6} {row['us_per_stream_step']:>15} {row['cpu_us_per_stream_step']:>7}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"root": str(args.root), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
