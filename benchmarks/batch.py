"""Batch worker throughput: 256 utterances sent concurrently (dynamic batching) vs one at a time.

    python benchmarks/batch.py                       # tiny model on CPU, real HTTP server
    python benchmarks/batch.py --json bench-batch.json --model some.nemo --device cuda

Both runs go through the real server (uvicorn on 127.0.0.1, multipart uploads, decoding,
the batcher, the model), on the same model and the same utterances, in the same process.
Figure: seconds of audio transcribed per wall-clock second, and the ratio between the two.
Default model: the project's trained tiny RNNT (tests/assets/tiny_rnnt.nemo), else a random
tiny RNNT of the same shape.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ASSETS = ROOT / "tests" / "assets"
TOKEN = "bench"


def utterances(n: int) -> list[np.ndarray]:
    """n held-out speech clips cut to different lengths (0.6–2.4 s), as 16 kHz WAV bytes."""
    import soundfile as sf

    items = json.loads((ASSETS / "heldout" / "manifest.json").read_text())
    clips = [sf.read(ASSETS / "heldout" / i["audio"], dtype="float32")[0] for i in items]
    out = []
    for i in range(n):
        samples = clips[i % len(clips)]
        out.append(samples[: min(len(samples), int(16000 * (0.6 + 1.8 * ((i * 37) % n) / n)))])
    return out


def wav(samples: np.ndarray) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, samples, 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def model_path(arg: str | None, workdir: Path) -> str:
    if arg:
        return arg
    trained = ASSETS / "tiny_rnnt.nemo"
    if trained.exists():
        return str(trained)
    from services.tiny_model import save_tiny_model

    print("note: tests/assets/tiny_rnnt.nemo not found; using a random tiny RNNT", file=sys.stderr)
    return str(save_tiny_model(workdir / "tiny.nemo", workdir, seed=0))


class Server:
    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


async def send_all(url: str, bodies: list[bytes], concurrent: bool) -> float:
    import httpx

    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600) as client:

        async def one(body: bytes) -> None:
            r = await client.post("/v1/audio/transcriptions", files={"file": ("u.wav", body)})
            r.raise_for_status()

        await one(bodies[0])  # connection + warm path
        started = time.perf_counter()
        if concurrent:
            await asyncio.gather(*(one(b) for b in bodies))
        else:
            for body in bodies:
                await one(body)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from services.batch_worker import BatchConfig, create_batch_app, load_batch_model

    with tempfile.TemporaryDirectory() as tmp:
        cfg = BatchConfig(model=model_path(args.model, Path(tmp)), device=args.device, max_batch=args.max_batch, token=TOKEN)
        model = load_batch_model(cfg)
        clips = utterances(args.n)
        bodies = [wav(c) for c in clips]
        audio_s = sum(len(c) for c in clips) / 16000
        app = create_batch_app(cfg, model=model)
        results = {}
        with Server(app) as server:
            for name, concurrent in (("one_at_a_time", False), ("concurrent", True)):
                app.state.batcher.batch_sizes.clear()
                seconds = asyncio.run(send_all(server.url, bodies, concurrent))
                sizes = app.state.batcher.batch_sizes[1:] or [1]
                results[name] = {
                    "seconds": round(seconds, 3),
                    "audio_seconds_per_second": round(audio_s / seconds, 2),
                    "model_calls": len(sizes),
                    "mean_batch": round(float(np.mean(sizes)), 1),
                    "max_batch": int(max(sizes)),
                }
    ratio = results["concurrent"]["audio_seconds_per_second"] / results["one_at_a_time"]["audio_seconds_per_second"]
    report = {
        "model": Path(cfg.model_id).name,
        "device": args.device,
        "threads": args.threads,
        "utterances": args.n,
        "audio_seconds": round(audio_s, 1),
        **results,
        "speedup": round(ratio, 2),
    }
    print(f"{'mode':<16}{'wall s':>9}{'audio s/s':>11}{'calls':>7}{'mean batch':>12}")
    for name in ("one_at_a_time", "concurrent"):
        r = results[name]
        print(f"{name:<16}{r['seconds']:>9.2f}{r['audio_seconds_per_second']:>11.1f}{r['model_calls']:>7}{r['mean_batch']:>12.1f}")
    print(f"speedup (concurrent / one at a time): {ratio:.2f}x  [{args.n} utterances, {audio_s:.0f} s of audio]")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
