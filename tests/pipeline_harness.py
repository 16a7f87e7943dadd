"""A real Pipecat pipeline a test drives frame by frame and waits on by events.

`run_test` takes its frames up front and can only pace them with sleeps; here the test
queues frames when it chooses and awaits what the pipeline produced (`await p.until(...)`),
so a test waits for the final it needs, never for a guessed number of seconds. The timeout
of `until` is a safety net that fails the test, not a measurement.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Optional

from pipecat.frames.frames import EndFrame, ErrorFrame, Frame, TranscriptionFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import WorkerRunner
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

SAFETY_NET_S = 120.0
RECHECK_S = 0.05


class _Tap(FrameProcessor):
    """Records the frames travelling one way past it and wakes whoever waits."""

    def __init__(self, direction: FrameDirection, frames: list, changed: asyncio.Event):
        super().__init__()
        self._direction, self._frames, self._changed = direction, frames, changed

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == self._direction:
            self._frames.append(frame)
            self._changed.set()
        await self.push_frame(frame, direction)


class LivePipeline:
    """`async with LivePipeline(stt) as p:` — `p.queue(...)`, `await p.until(...)`, `p.down`/`p.up`."""

    def __init__(self, *processors: FrameProcessor, params: Optional[PipelineParams] = None):
        self.down: list[Frame] = []  # frames that left the last processor downstream
        self.up: list[Frame] = []  # frames that left the first processor upstream (ErrorFrames)
        self._changed = asyncio.Event()
        self._pipeline = Pipeline([_Tap(FrameDirection.UPSTREAM, self.up, self._changed), *processors,
                                   _Tap(FrameDirection.DOWNSTREAM, self.down, self._changed)])
        self._params = params or PipelineParams()
        self._run: Optional[asyncio.Task] = None

    async def __aenter__(self) -> "LivePipeline":
        self.worker = PipelineWorker(self._pipeline, cancel_on_idle_timeout=False, params=self._params)
        started = asyncio.Event()

        @self.worker.event_handler("on_pipeline_started")
        async def _started(worker, frame):
            started.set()

        self._run = asyncio.create_task(self._runner())
        await asyncio.wait_for(started.wait(), SAFETY_NET_S)
        return self

    async def _runner(self):
        runner = WorkerRunner()
        await runner.add_workers(self.worker)
        await runner.run()

    async def queue(self, *frames: Frame) -> None:
        for frame in frames:
            await self.worker.queue_frame(frame)

    async def until(self, done: Callable[[], bool], timeout: float = SAFETY_NET_S) -> None:
        """Return once `done()` holds: checked each time a frame passes a tap, and every
        RECHECK_S for conditions on the service or the worker (no frame marks those)."""

        async def watch():
            while not done():
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), RECHECK_S)
                except asyncio.TimeoutError:
                    pass

        await asyncio.wait_for(watch(), timeout)

    async def end(self) -> None:
        """EndFrame, and wait for the pipeline to finish (the services drain on it)."""
        await self.worker.queue_frame(EndFrame())
        await asyncio.wait_for(self._run, SAFETY_NET_S)

    async def __aexit__(self, *exc) -> None:
        if self._run is not None and not self._run.done():
            await self.end()

    # ---------------------------------------------------------------- what came out

    def finals(self) -> list[TranscriptionFrame]:
        return [f for f in self.down if isinstance(f, TranscriptionFrame)]

    def errors(self) -> list[ErrorFrame]:
        return [f for f in self.up if isinstance(f, ErrorFrame)]
