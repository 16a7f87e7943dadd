"""Shared parts of the compatible-protocol tests (tests/test_compat_*.py): a streaming
worker on 127.0.0.1, our own NemotronSTTService's words as the reference, the wait for a
worker's sessions to end."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
from pathlib import Path
import time
from typing import Callable, Iterator, Optional

from pipecat.frames.frames import ErrorFrame, TranscriptionFrame
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import SleepFrame, run_test

from conftest import ASSETS, TOKEN, LiveServer
from test_nemotron_service import audio_frames, words  # noqa: F401  (re-exported for the compat tests)


@contextlib.contextmanager
def streaming_worker(worker: str = "nemotron", model: Optional[Path] = None, **config):
    from services.streaming_worker import StreamingConfig, create_streaming_app

    model = model or ASSETS / ("tiny_eou.nemo" if worker == "parakeet-realtime" else "tiny_rnnt.nemo")
    config.setdefault("max_sessions", 8)
    config.setdefault("max_buffer_seconds", 120.0)  # a loaded CI machine lags; these tests are not about speed
    # float64: a session's tokens do not depend on which others share its batch (fp32 near-ties
    # flip greedy tokens), so every client's words can be compared exactly with our own service's
    config.setdefault("dtype", "float64")
    app = create_streaming_app(StreamingConfig(worker=worker, model=str(model), token=TOKEN, **config))
    with LiveServer(app) as server:
        server.app = app
        server.engine = app.state.engine
        yield server


async def run(stt, frames, **kwargs):
    kwargs.setdefault("pipeline_params", PipelineParams(enable_metrics=True))
    return await run_test(stt, frames_to_send=frames, start_timeout=10, **kwargs)


def turns(items: list[dict], pace: float = 0.5, gap: float = 0.6, rate: int = 16000) -> list:
    """Each clip as one live turn: speech, the VAD's stop, then `gap` s of digital silence (a
    microphone keeps streaming), so the chunk holding the finalize point is the same audio
    however late the worker steps it and every client hears the same thing. `rate`: the
    pipeline's input rate (the clips are resampled once, here)."""
    import soxr
    from pipecat.frames.frames import VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame

    frames = []
    for item in items:
        speech = item["samples"][: int((item["speech_end"] + 0.15) * 16000)]
        if rate != 16000:
            speech = soxr.resample(speech, 16000, rate).astype(np.float32)
        frames += [VADUserStartedSpeakingFrame(start_secs=0.2)] + audio_frames(speech, rate=rate, pace=pace)
        frames += [VADUserStoppedSpeakingFrame(stop_secs=0.2)]
        frames += audio_frames(np.zeros(int(gap * rate), np.float32), rate=rate, pace=pace)
    return frames


class Finals(BaseObserver):
    """Counts the TranscriptionFrames a pipeline's STT pushes (each frame once)."""

    def __init__(self):
        super().__init__()
        self.ids: set[int] = set()

    async def on_push_frame(self, data: FramePushed) -> None:
        if isinstance(data.frame, TranscriptionFrame):
            self.ids.add(data.frame.id)


def then_wait(frames: list, done: Callable[[], bool], timeout: float = 60.0) -> Iterator:
    """`frames`, then short pauses until `done()` (an event the test waits on: Pipecat's Deepgram
    and OpenAI services drop results that arrive after the pipeline's EndFrame)."""
    yield from frames
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        yield SleepFrame(sleep=0.02)


def pipeline_at(rate: int) -> PipelineParams:
    return PipelineParams(enable_metrics=True, audio_in_sample_rate=rate)


async def reference_words(server, items: list[dict], rate: int = 16000) -> tuple[list[str], int]:
    """What our own service (NemotronSTTService) hears in the clips through the same worker:
    the words, and how many finals carried them."""
    from pipecat_nvasr import NemotronSTTService

    stt = NemotronSTTService(url=server.ws, api_key=TOKEN)
    down, up = await run(stt, turns(items, rate=rate), pipeline_params=pipeline_at(rate))
    assert not errors(up)
    return final_words(down), len([f for f in down if isinstance(f, TranscriptionFrame)])


async def transcribe_like_reference(stt, items: list[dict], reference: tuple[list[str], int], rate: int = 16000):
    """Run `stt` on the clips until it has pushed as many finals as our service did."""
    finals = Finals()
    frames = then_wait(turns(items, rate=rate), lambda: len(finals.ids) >= reference[1])
    return await run(stt, frames, observers=[finals], pipeline_params=pipeline_at(rate))


def final_words(frames) -> list[str]:
    return [w for f in frames if isinstance(f, TranscriptionFrame) for w in words(f.text)]


async def sessions_end(engine, timeout: float = 30.0) -> None:
    """Wait until the worker holds no session (each socket's teardown runs after the client left)."""
    async def empty():
        while engine.sessions:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(empty(), timeout)


def errors(frames) -> list[str]:
    return [f.error for f in frames if isinstance(f, ErrorFrame)]
