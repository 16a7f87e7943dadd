"""Finalize → final latency and pause accuracy, through a real worker and real-time clients.

    python benchmarks/finalize.py --json bench-finalize.json
    python benchmarks/finalize.py --streams 1,8,32 --chunk-ms 160

Each client streams the paused sentences of tests/assets/pause and tests/assets/pause_long in
real time (20 ms frames) and sends `finalize` where a Pipecat bot's Silero VAD would: 0.2 s after
each stretch of speech (its default stop_secs). Per level of concurrent clients: the time from
sending `finalize` to receiving the final that answers it (p50/p95/p99), and the word error rate
of all finals against the same streams sent without any finalize (the baseline, same run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipecat_nvasr.client import ListenClient  # noqa: E402
from pipecat_nvasr.protocol import Closed, Final  # noqa: E402

TOKEN = "bench-token"
FRAME = 320  # 20 ms at 16 kHz


def clips() -> list[dict]:
    import soundfile as sf

    out = []
    for folder in ("pause", "pause_long"):
        for item in json.loads((ROOT / "tests/assets" / folder / "manifest.json").read_text()):
            samples, _ = sf.read(ROOT / "tests/assets" / folder / item["audio"], dtype="float32")
            pauses = item.get("pauses") or [item["pause"]]
            stops = [start + 0.2 for start, _ in pauses] + [item["speech_end"] + 0.2]
            out.append({"text": item["text"], "samples": samples, "stops": stops})
    return out


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    d = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        prev, d[0] = d[0], i
        for j, hyp in enumerate(hypothesis, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (ref != hyp))
    return d[-1]


async def one_client(url: str, items: list[dict], finalize: bool) -> tuple[list[float], list[str]]:
    """Stream the clips back to back in real time; return finalize latencies and the words heard."""
    latencies, heard, sent_at = [], [], []
    async with ListenClient(url, token=TOKEN) as client:

        async def receive():
            async for event in client.events():
                if isinstance(event, Final):
                    heard.extend(event.text.lower().split())
                    if event.from_finalize and sent_at:
                        latencies.append(time.perf_counter() - sent_at.pop(0))
                if isinstance(event, Closed):
                    return

        receiver = asyncio.create_task(receive())
        start = time.perf_counter()
        position = 0  # samples sent so far, over all clips
        for item in items:
            stops = [int(s * 16000) for s in item["stops"]] if finalize else []
            pcm = (np.clip(item["samples"], -1, 1) * 32767).astype("<i2")
            for offset in range(0, len(pcm), FRAME):
                await client.send_audio(pcm[offset : offset + FRAME].tobytes())
                if stops and offset + FRAME >= stops[0]:
                    stops.pop(0)
                    sent_at.append(time.perf_counter())
                    await client.finalize()
                position += min(FRAME, len(pcm) - offset)
                delay = start + position / 16000 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
        await client.close()
        await asyncio.wait_for(receiver, 60)
    return latencies, heard


def serve(model: str, chunk_ms: int, max_sessions: int, finalize_wait_ms):
    import uvicorn

    from services.streaming_worker import StreamingConfig, create_streaming_app

    app = create_streaming_app(StreamingConfig(
        model=model, token=TOKEN, chunk_ms=chunk_ms, max_sessions=max_sessions, finalize_wait_ms=finalize_wait_ms))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"ws://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def pct(values: list[float], q: float) -> float:
    return round(1000 * float(np.percentile(values, q)), 1) if values else float("nan")


async def level(url: str, items: list[dict], streams: int) -> dict:
    said = [w for item in items for w in item["text"].split()]
    runs = [one_client(url, items, finalize=i % 2 == 0) for i in range(2 * streams)]  # half are baselines
    results = await asyncio.gather(*runs)
    lat = [x for i, (l, _) in enumerate(results) if i % 2 == 0 for x in l]
    errors = lambda parity: sum(word_errors(said, h) for i, (_, h) in enumerate(results) if i % 2 == parity)
    words = len(said) * streams
    return {
        "streams_with_finalize": streams,
        "baseline_streams": streams,
        "finalizes": len(lat),
        "finalize_to_final_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99),
                                 "mean": round(1000 * statistics.fmean(lat), 1) if lat else None},
        "wer_with_finalize_pct": round(100 * errors(0) / words, 2),
        "wer_without_finalize_pct": round(100 * errors(1) / words, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "tests/assets/tiny_rnnt.nemo"))
    ap.add_argument("--chunk-ms", type=int, default=160)
    ap.add_argument("--streams", default="1,8")
    ap.add_argument("--finalize-wait-ms", type=int, default=None, help="default: one chunk")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    levels = [int(n) for n in args.streams.split(",")]
    server, url = serve(args.model, args.chunk_ms, max_sessions=2 * max(levels) + 2,
                        finalize_wait_ms=args.finalize_wait_ms)
    items = clips()
    rows = [asyncio.run(level(url, items, n)) for n in levels]
    server.should_exit = True
    print(f"{'streams':>8} {'finalizes':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'WER fin %':>10} {'WER base %':>11}")
    for r in rows:
        f = r["finalize_to_final_ms"]
        print(f"{r['streams_with_finalize']:>8} {r['finalizes']:>9} {f['p50']:>8} {f['p95']:>8} {f['p99']:>8} "
              f"{r['wer_with_finalize_pct']:>10} {r['wer_without_finalize_pct']:>11}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "chunk_ms": args.chunk_ms,
                                              "finalize_wait_ms": args.finalize_wait_ms, "levels": rows}, indent=1))


if __name__ == "__main__":
    main()
