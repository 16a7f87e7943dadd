"""Browser-to-final latency: the web page in headless Chromium vs a Python client, same worker.

    python benchmarks/browser_latency.py --json bench-browser.json        # needs Chromium

Both clients stream the same speech in real time (held-out sentences 1.2 s apart) to one
local nemotron worker (the trained tiny model, 160 ms chunks). Latency per final: from when
the client sent the frame holding the utterance's last sample (`final.end`) to when the final
arrived. The page measures it itself (`data-latency-ms`, its microphone being Chromium's fake
device playing the WAV); the baseline is a Python WebSocket client sending 40 ms frames on a
real-time clock, so the difference is what the browser path adds (capture, AudioWorklet,
resampling 48 kHz → 16 kHz). Both include the worker's endpointing wait (720 ms of silence).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from browser import Browser, find_chromium  # noqa: E402

ASSETS = ROOT / "tests" / "assets"
TOKEN = "bench-token"
FRAME = 640  # 40 ms at 16 kHz, as the page sends


def speech(n: int, lead: float = 1.0, gap: float = 1.2, tail: float = 2.0) -> np.ndarray:
    import soundfile as sf

    items = json.loads((ASSETS / "heldout" / "manifest.json").read_text())[:n]
    parts = [np.zeros(int(16000 * lead), np.float32)]
    for item in items:
        samples, _ = sf.read(ASSETS / "heldout" / item["audio"], dtype="float32")
        parts += [samples, np.zeros(int(16000 * gap), np.float32)]
    parts.append(np.zeros(int(16000 * (tail - gap)), np.float32))
    return np.concatenate(parts)


class Worker:
    """The nemotron worker on 127.0.0.1 in a background thread."""

    def __init__(self, model: str):
        import uvicorn

        from services.streaming_worker import StreamingConfig, create_streaming_app

        app = create_streaming_app(StreamingConfig(model=model, token=TOKEN, max_sessions=8))
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "Worker":
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.http, self.ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


async def page_latencies(worker: Worker, wav: Path, seconds: float) -> list[dict]:
    with Browser(wav) as browser:
        page = await browser.page()
        await page.goto(f"{worker.http}/#token={TOKEN}&autostart=1")
        await page.wait_for("document.querySelector('#status').dataset.state === 'listening'", timeout=20)
        await asyncio.sleep(seconds + 1.0)
        finals = await page.evaluate(
            "[...document.querySelectorAll('#transcript .final')].map(e => "
            "({text: e.textContent, latency_ms: Number(e.dataset.latencyMs)}))"
        )
        await page.close()
    return finals


async def python_latencies(worker: Worker, audio: np.ndarray) -> list[dict]:
    import websockets

    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    sent: list[tuple[int, float]] = []
    finals: list[dict] = []
    async with websockets.connect(f"{worker.ws}/v1/listen?token={TOKEN}") as ws:
        assert json.loads(await ws.recv())["type"] == "ready"

        async def send() -> None:
            start = time.monotonic()
            for i, offset in enumerate(range(0, len(pcm), FRAME * 2)):
                await asyncio.sleep(max(0.0, start + i * FRAME / 16000 - time.monotonic()))
                await ws.send(pcm[offset : offset + FRAME * 2])
                sent.append((offset // 2 + FRAME, time.monotonic()))
            await ws.send(json.dumps({"type": "close"}))

        sender = asyncio.create_task(send())
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] == "final" and message["text"]:
                arrived = time.monotonic()
                at = next(t for samples, t in sent if samples >= message["end"] * 16000)
                finals.append({"text": message["text"], "latency_ms": round((arrived - at) * 1000)})
            elif message["type"] == "closed":
                break
        await sender
    return finals


def summary(finals: list[dict]) -> dict:
    values = sorted(f["latency_ms"] for f in finals)
    return {
        "finals": len(values),
        "median_ms": statistics.median(values) if values else None,
        "p90_ms": values[min(len(values) - 1, int(0.9 * len(values)))] if values else None,
        "max_ms": values[-1] if values else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=8)
    parser.add_argument("--model", default=str(ASSETS / "tiny_rnnt.nemo"))
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args()
    if find_chromium() is None:
        sys.exit("Chromium is not installed (apt-get install chromium)")
    import soundfile as sf

    audio = speech(args.sentences)
    with tempfile.TemporaryDirectory() as tmp, Worker(args.model) as worker:
        wav = Path(tmp) / "speech.wav"
        sf.write(wav, audio, 16000)
        seconds = len(audio) / 16000
        results = {
            "python client (baseline)": asyncio.run(python_latencies(worker, audio)),
            "web page in Chromium": asyncio.run(page_latencies(worker, wav, seconds)),
        }
    table = {name: summary(finals) for name, finals in results.items()}
    print(f"\n{args.sentences} sentences, {seconds:.1f} s of audio, real time; audio sent → final")
    print(f"{'client':28} {'finals':>6} {'median ms':>10} {'p90 ms':>8} {'max ms':>8}")
    for name, row in table.items():
        print(f"{name:28} {row['finals']:>6} {row['median_ms']:>10} {row['p90_ms']:>8} {row['max_ms']:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": table, "finals": results}, indent=1))


if __name__ == "__main__":
    main()
