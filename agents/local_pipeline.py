"""The main job: a local Nemotron worker and a Pipecat pipeline transcribing a WAV file.

    python agents/local_pipeline.py                      # starts a worker, reads tests/assets/demo.wav
    python agents/local_pipeline.py --url ws://host:8000 --token T --file speech.wav
    python agents/local_pipeline.py --device cuda        # `DEVICE=cuda make demo`

Without `--url` it starts a worker in this process (uvicorn on 127.0.0.1, a fresh token)
with `--model` (default `nvidia/nemotron-speech-streaming-en-0.6b`) on `--device` (auto: the
GPU when torch sees one, else the CPU); when the model hub
cannot be reached it says so and uses the bundled tiny model (tests/assets/tiny_rnnt.nemo,
a small demo vocabulary). The pipeline is file → Silero VAD → NemotronSTTService →
printer: the file is played at microphone pace, the VAD's stop sends `finalize`, and the
finals print as they arrive. Exits 0 when the file is done, 1 on an error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import sys
import threading
import time
import wave
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_MODEL = "nvidia/nemotron-speech-streaming-en-0.6b"
FALLBACK_MODEL = REPO / "tests" / "assets" / "tiny_rnnt.nemo"
DEFAULT_FILE = REPO / "tests" / "assets" / "demo.wav"
FRAME_MS = 20


def hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connect to the hub, so an offline machine learns it in ≤ 3 s, not a hang."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


class LocalWorker:
    """A Nemotron worker served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, model: str, token: str, verbose: bool = False, device: str = "auto"):
        os.environ.setdefault("NEMO_REDIRECT_LOGS_TO_STDERR", "1")  # stdout is for transcripts
        try:
            import uvicorn

            from services.streaming_worker import StreamingConfig, create_streaming_app
        except ImportError as exc:
            sys.exit(f"starting a local worker needs the server extras ({exc}); "
                     "pip install 'pipecat-nvasr[server]' or pass --url")
        if not Path(model).exists() and os.environ.get("HF_HUB_OFFLINE") != "1" and not hub_reachable():
            print(f"NOTE: huggingface.co is unreachable from here, so {model} cannot be downloaded.")
            os.environ["HF_HUB_OFFLINE"] = "1"  # fail the download at once, then fall back
        if not verbose:
            import logging

            from nemo.utils import logging as nemo_logging

            nemo_logging.set_verbosity(logging.WARNING)
        from services.refusal import StartupRefusal

        fallback = str(FALLBACK_MODEL) if FALLBACK_MODEL.exists() else None
        try:
            cfg = StreamingConfig(model=model, fallback_model=fallback, token=token, device=device)
            self.device = cfg.device  # parsed: auto became cpu or cuda:N
            print(f"loading {model} on {self.device} ...", flush=True)
            app = create_streaming_app(cfg)
        except StartupRefusal as exc:  # a device or model this machine cannot serve
            sys.exit(f"could not start the local worker: {exc}")
        except Exception as exc:
            missing = "" if fallback else f"; the bundled fallback {FALLBACK_MODEL} is missing too"
            sys.exit(f"could not load {model}: {type(exc).__name__}: {str(exc)[:300]}{missing}")
        self.model = app.state.engine.model_name
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                sys.exit("the local worker failed to start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        print(f"worker ready on {url} serving {self.model} on {self.device}", flush=True)
        return url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def read_wav(path: Path) -> tuple[bytes, int]:
    """16-bit PCM WAV → mono 16 kHz PCM (Silero VAD takes 8 or 16 kHz)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            sys.exit(f"{path}: need 16-bit PCM WAV")
        rate, channels = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    samples = samples.reshape(-1, channels).mean(axis=1).astype(np.float32) / 32768
    if rate not in (8000, 16000):
        import soxr

        samples, rate = soxr.resample(samples, rate, 16000), 16000
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes(), rate


async def transcribe_file(url: str, token: str | None, path: Path, speed: float) -> int:
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.frames.frames import EndFrame, InputAudioRawFrame, StartFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker, ProcessorUnusablePolicy
    from pipecat.processors.audio.vad_processor import VADProcessor
    from pipecat.processors.frame_processor import FrameProcessor

    from common import TranscriptPrinter
    from pipecat_nvasr import NemotronSTTService

    pcm, rate = read_wav(path)

    class FileSource(FrameProcessor):
        """Plays the file as 20 ms input frames at `speed` × real time, then 1 s of silence."""

        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)
            if isinstance(frame, StartFrame):
                self.create_task(self._play())

        async def _play(self):
            step = rate * FRAME_MS // 1000 * 2
            audio = pcm + bytes(rate * 2)  # trailing silence: the VAD hears the end
            for start in range(0, len(audio), step):
                chunk = audio[start : start + step]
                await self.push_frame(InputAudioRawFrame(audio=chunk, sample_rate=rate, num_channels=1))
                await asyncio.sleep(FRAME_MS / 1000 / speed)
            await worker.queue_frame(EndFrame())

    stt = NemotronSTTService(url=url, api_key=token)
    errors = []

    @stt.event_handler("on_error")
    async def on_error(_service, error):
        errors.append(error)

    printer = TranscriptPrinter()
    pipeline = Pipeline([FileSource(), VADProcessor(vad_analyzer=SileroVADAnalyzer()), stt, printer])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=rate, enable_metrics=True),
        idle_timeout_secs=None,
        processor_unusable_policy=ProcessorUnusablePolicy.END,
    )
    print(f"transcribing {path} ({len(pcm) / 2 / rate:.1f} s)", flush=True)
    await _run(worker)
    print(f"done: {len(printer.finals)} final transcript(s), {len(errors)} error(s)", flush=True)
    return 1 if errors else 0


async def _run(worker) -> None:
    from pipecat.workers.runner import WorkerRunner

    runner = WorkerRunner(handle_sigint=True)
    await runner.add_workers(worker)
    await runner.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="HF id or .nemo path for the local worker")
    parser.add_argument("--device", default="auto", help="the local worker's device: auto (default), cuda, cuda:1, cpu")
    parser.add_argument("--url", help="use this running worker instead of starting one")
    parser.add_argument("--token", help="the worker's token (default: $NVASR_TOKEN, or a fresh one)")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="16-bit PCM WAV to transcribe")
    parser.add_argument("--speed", type=float, default=1.0, help="playback speed (1 = real time)")
    parser.add_argument("-v", "--verbose", action="store_true", help="Pipecat's debug log on stderr")
    args = parser.parse_args(argv)

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if args.verbose else "WARNING")

    token = args.token or os.getenv("NVASR_TOKEN")
    if args.url:
        return asyncio.run(transcribe_file(args.url, token, args.file, args.speed))
    token = token or secrets.token_urlsafe(24)
    with LocalWorker(args.model, token, args.verbose, args.device) as url:
        return asyncio.run(transcribe_file(url, token, args.file, args.speed))


if __name__ == "__main__":
    sys.exit(main())
