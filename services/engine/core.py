"""The engine core: sessions in, batched model steps on one thread, events out.

The asyncio loop only moves audio and messages; every model call runs on a single
dedicated inference thread (cache-aware stream steps are not thread-safe). The loop
wakes on new work, runs a step for every ready session at once, and immediately looks
again — continuous batching with no fixed sleeps: audio that arrives during a step is
in the next one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from pipecat_nvasr.protocol import Error, ErrorCode

from .adapter import StepItem, StepOutput, StreamingAdapter
from .scheduler import select_batch
from .session import Overloaded, Session

logger = logging.getLogger(__name__)

StepObserver = Callable[[int, float], None]  # (batch size, seconds) per step, for metrics


class EngineCore:
    def __init__(
        self,
        adapter: StreamingAdapter,
        max_sessions: Optional[int] = None,
        max_batch: int = 64,
        max_buffer_seconds: float = 10.0,
        finalize_wait: Optional[float] = None,
        on_step: Optional[StepObserver] = None,
    ):
        self.adapter = adapter
        self.max_sessions = min(max_sessions or adapter.max_streams, adapter.max_streams)
        self.max_batch = max_batch
        self.max_buffer_samples = int(max_buffer_seconds * adapter.sample_rate)
        self.on_step = on_step
        chunk_seconds = adapter.chunk_samples / adapter.sample_rate
        self.finalize_wait = chunk_seconds if finalize_wait is None else finalize_wait
        self.sessions: dict[str, Session] = {}
        self.steps = 0
        self._releases: list[int] = []  # adapter streams to forget, on the inference thread
        self._wakeup = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: Optional[asyncio.Task] = None

    @property
    def model_name(self) -> str:
        return self.adapter.model_name

    @property
    def sample_rate(self) -> int:
        return self.adapter.sample_rate

    @property
    def languages(self) -> tuple[str, ...]:
        return self.adapter.languages

    @property
    def chunk_ms(self) -> int:
        return self.adapter.chunk_ms

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="engine-core")
            self._task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._thread.shutdown(wait=True)

    async def run_on_model_thread(self, fn, *args):
        """Run `fn` on the inference thread (loading, warm-up, inspection)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # ------------------------------------------------------------------ sessions

    def open(self) -> Session:
        if len(self.sessions) >= self.max_sessions:
            raise Overloaded(f"this worker is at its limit of {self.max_sessions} sessions")
        session = Session(self.adapter.sample_rate, self.max_buffer_samples)
        self.sessions[session.id] = session
        return session

    def append(self, session: Session, samples) -> None:
        session.append(samples)
        if session.has_work(self.adapter.chunk_samples):
            self._wakeup.set()

    def finalize(self, session: Session) -> None:
        """End the session's utterance. The chunk holding the finalize point is stepped whole
        when the client's next audio fills it; if that takes longer than `finalize_wait` (one
        chunk of time by default: a client that stopped sending), the utterance ends at the
        last whole chunk."""
        session.finalize(self.finalize_wait)
        self._wakeup.set()

    def close(self, session: Session) -> None:
        session.close()
        self._wakeup.set()

    def drop(self, session: Session) -> None:
        """Forget a session now (disconnect, error): its model state is freed, always."""
        if self.sessions.pop(session.id, None) is None:
            return
        session.closed = True
        if session.stream_id is not None:
            self._releases.append(session.stream_id)
            session.stream_id = None
            self._wakeup.set()

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_work()
            self._wakeup.clear()
            while True:
                batch = select_batch(self.sessions.values(), self.adapter.chunk_samples, self.max_batch)
                releases, self._releases = self._releases, []
                if not batch and not releases:
                    break
                planned = [(s, s.next_item(self.adapter.chunk_samples)) for s in batch]
                items = [item for _, item in planned if item is not None]
                self.steps += 1
                try:
                    outputs = await loop.run_in_executor(self._thread, self._step, items, releases)
                except Exception as exc:  # the model failed: these sessions cannot go on
                    logger.exception("inference step failed")
                    self._fail(batch, items, exc)
                    continue
                by_stream = dict(zip((i.stream_id for i in items), outputs))
                for session, item in planned:
                    session.last_step = self.steps
                    if session.closed and session.id not in self.sessions:
                        continue  # dropped while its step ran; its stream was released
                    session.deliver(item, by_stream.get(item.stream_id) if item else None)
                    if session.closed:
                        self.sessions.pop(session.id, None)

    async def _wait_for_work(self) -> None:
        """Until new work is signalled, or a pending finalize stops waiting for its chunk."""
        deadlines = [d for s in self.sessions.values() if (d := s.finalize_deadline()) is not None]
        if not deadlines:
            await self._wakeup.wait()
            return
        timeout = max(0.0, min(deadlines) - time.monotonic()) + 0.001
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _step(self, items: list[StepItem], releases: list[int]) -> list[StepOutput]:
        for stream_id in releases:
            self.adapter.release(stream_id)
        if not items:
            return []
        started = time.perf_counter()
        outputs = self.adapter.step(items)
        if self.on_step:
            self.on_step(len(items), time.perf_counter() - started)
        return outputs

    def _fail(self, batch: list[Session], items: list[StepItem], exc: Exception) -> None:
        self._releases.extend(item.stream_id for item in items)  # release is idempotent
        for session in batch:
            session.stream_id = None
            session.fail(Error(ErrorCode.INTERNAL, f"inference failed: {type(exc).__name__}"))
            self.drop(session)
        self._wakeup.set()


def _report_crash(task: asyncio.Task) -> None:
    """The loop must never end on its own: say loudly why it did."""
    if not task.cancelled() and task.exception() is not None:
        logger.critical("engine loop crashed", exc_info=task.exception())
