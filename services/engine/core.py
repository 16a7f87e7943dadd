"""The engine core: sessions in, batched model steps on one thread, events out.

The asyncio loop only moves audio and messages; every model call runs on a single
dedicated inference thread (cache-aware stream steps are not thread-safe). The loop
wakes on new work, runs a step for every ready session at once, and immediately looks
again — continuous batching with no fixed sleeps: audio that arrives during a step is
in the next one.

Two guards keep one worker useful under stress:
- a step that raises is split in halves and retried until the one stream that makes the
  model fail is found; only that session gets `internal` (see `StreamingAdapter.step`);
- admission control: when the engine falls behind (chunks wait longer than `admit_lag`
  for a step, or the event loop itself runs late) new sessions are refused with
  `overloaded` before the open ones degrade, and a session whose own backlog passes
  `max_buffer_seconds` is ended with `overloaded` (Session.append).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from pipecat_nvasr.protocol import Error, ErrorCode

from .adapter import StepItem, StepOutput, StreamingAdapter
from .load import LoadMonitor
from .scheduler import ReadyQueue
from .session import Overloaded, Session

logger = logging.getLogger(__name__)

StepObserver = Callable[[int, float], None]  # (batch size, seconds) per step, for metrics

LOOP_PROBE_S = 0.05  # how often the event-loop lag probe wakes
BACKLOG_EVERY = 4  # probe ticks between backlog measurements (O(sessions) each)


class EngineCore:
    def __init__(
        self,
        adapter: StreamingAdapter,
        max_sessions: Optional[int] = None,
        max_batch: int = 64,
        max_buffer_seconds: float = 10.0,
        finalize_wait: Optional[float] = None,
        on_step: Optional[StepObserver] = None,
        admit_lag: Optional[float] = None,
        shed_lag: Optional[float] = None,
        admit_load: float = 0.8,
    ):
        self.adapter = adapter
        self.max_sessions = min(max_sessions or adapter.max_streams, adapter.max_streams)
        self.max_batch = max_batch
        self.max_buffer_samples = int(max_buffer_seconds * adapter.sample_rate)
        self.on_step = on_step
        # how long a finalize waits for the client's audio to fill the chunk that holds it
        chunk_seconds = adapter.chunk_samples / adapter.sample_rate
        self.finalize_wait = chunk_seconds if finalize_wait is None else finalize_wait
        self._finalizing: dict[str, Session] = {}  # sessions whose finalize waits for its chunk
        self.admit_lag = admit_lag  # seconds; None: admit by session count only
        # with admit_lag set, also refuse when one more stream would make a round of steps over
        # all sessions take more than this fraction of a chunk of audio (measured step times)
        self.admit_load = admit_load
        # sessions this far behind (p90) → the newest are ended with `overloaded` (None: never)
        self.shed_lag = shed_lag
        self.shed = 0  # sessions ended to protect older ones
        self.sessions: dict[str, Session] = {}
        self.steps = 0
        self.draining = False
        # counters for /metrics
        self.refused: Counter[str] = Counter()  # reason → sessions refused at open
        self.failed_streams = 0  # sessions ended by a model failure on their own step
        self.isolation_steps = 0  # extra steps run to find the stream that failed a batch
        self._chunk = adapter.chunk_samples
        self._ready = ReadyQueue()
        self.load = LoadMonitor(max_batch)
        self._shed_hold = 0.0  # no shedding before this time (monotonic)
        self._releases: list[int] = []  # adapter streams to forget, on the inference thread
        self._wakeup = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: Optional[asyncio.Task] = None
        self._probe: Optional[asyncio.Task] = None

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
    def locales(self) -> tuple[str, ...]:
        return self.adapter.locales

    @property
    def chunk_ms(self) -> int:
        return self.adapter.chunk_ms

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="engine-core")
            self._probe = asyncio.create_task(self._probe_loop(), name="engine-loop-lag")
            self._task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        for task in (self._task, self._probe):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._task = self._probe = None
        self._thread.shutdown(wait=True)

    async def run_on_model_thread(self, fn, *args):
        """Run `fn` on the inference thread (loading, warm-up, inspection)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # ------------------------------------------------------------------ load

    def lag(self) -> float:
        """How far behind the engine runs, in seconds, over the last second or two: the worst
        of how long ready chunks waited for a step, how far behind real time most sessions'
        audio is (p90 of their backlogs beyond one chunk: a step slower than a chunk of audio
        shows here even when every ready stream fits in one batch), and how late the event
        loop ran (ingest saturation)."""
        return max(self.step_lag(), self.loop_lag())

    def step_lag(self) -> float:
        now = time.monotonic()
        return max(self.load.step_lag(now), self._ready.oldest_wait(now))

    def predicted_round(self, streams: int) -> float:
        return self.load.predicted_round(streams)

    def loop_lag(self) -> float:
        return self.load.loop_lag(time.monotonic())

    async def _probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        ticks = 0
        while True:
            before = loop.time()
            await asyncio.sleep(LOOP_PROBE_S)
            now = time.monotonic()
            self.load.add_loop_lag(max(0.0, loop.time() - before - LOOP_PROBE_S), now)
            ticks += 1
            if ticks % BACKLOG_EVERY == 0 and self.sessions:
                self._measure_backlog(now)

    def _measure_backlog(self, now: float) -> None:
        sessions = [s for s in self.sessions.values() if not s.closing]
        backlog = self.load.measure_backlog(sessions, self._chunk, self.adapter.sample_rate, now)
        if self.shed_lag is not None and backlog > self.shed_lag and now >= self._shed_hold:
            # The model cannot keep up with the sessions already admitted: end the newest, a
            # tenth at a time, then wait `shed_lag` for the rest to catch up before judging
            # again (their backlogs shrink only as fast as the worker works them off).
            self._shed_hold = now + self.shed_lag
            for session in sessions[-max(1, len(sessions) // 10):]:
                self.shed += 1
                session.fail(Error(ErrorCode.OVERLOADED, "this worker fell behind; the newest sessions are ended first"))
                self.drop(session)

    # ------------------------------------------------------------------ sessions

    def open(self) -> Session:
        if self.draining:
            self.refused["draining"] += 1
            raise Overloaded("this worker is shutting down; connect again (another worker takes it)")
        if len(self.sessions) >= self.max_sessions:
            self.refused["sessions"] += 1
            raise Overloaded(f"this worker is at its limit of {self.max_sessions} sessions")
        if self.admit_lag is not None and self.sessions:
            round_s, chunk_s = self.predicted_round(len(self.sessions) + 1), self._chunk / self.adapter.sample_rate
            if round_s > self.admit_load * chunk_s:
                self.refused["capacity"] += 1
                raise Overloaded(
                    f"this worker is at its model's capacity (a step over every session would take "
                    f"{round_s * 1000:.0f} ms per {chunk_s * 1000:.0f} ms of audio); try again later or elsewhere"
                )
            lag = self.lag()
            if lag > self.admit_lag:
                self.refused["lag"] += 1
                raise Overloaded(
                    f"this worker is running {lag * 1000:.0f} ms behind (limit {self.admit_lag * 1000:.0f} ms); "
                    "try again later or elsewhere"
                )
        session = Session(self.adapter.sample_rate, self.max_buffer_samples)
        session.opened_at = time.monotonic()  # for the backlog measure: real time since open
        self.sessions[session.id] = session
        return session

    def append(self, session: Session, samples) -> None:
        session.append(samples)
        if session.has_work(self._chunk) and session not in self._ready:
            self._ready.push(session)
            self._wakeup.set()

    def finalize(self, session: Session) -> None:
        """End the session's utterance. The chunk holding the finalize point is stepped whole
        when the client's next audio fills it; if that takes longer than `finalize_wait` (one
        chunk of time by default: a client that stopped sending), it is zero-padded."""
        session.finalize(self.finalize_wait)
        self._queue_or_wait(session)
        self._wakeup.set()

    def _queue_or_wait(self, session: Session, now: Optional[float] = None) -> None:
        if session.has_work(self._chunk):
            self._ready.push(session, now)
        elif session.finalize_deadline() is not None:
            self._finalizing[session.id] = session  # _wait_for_work queues it at its deadline

    def close(self, session: Session) -> None:
        session.close()
        self._ready.push(session)
        self._wakeup.set()

    def drop(self, session: Session) -> None:
        """Forget a session now (disconnect, error): its model state is freed, always."""
        if self.sessions.pop(session.id, None) is None:
            return
        session.closed = True
        self._ready.discard(session)
        self._finalizing.pop(session.id, None)
        if session.stream_id is not None:
            self._releases.append(session.stream_id)
            session.stream_id = None
            self._wakeup.set()

    def start_drain(self) -> list[Session]:
        """Refuse new sessions from now on; returns the sessions still open."""
        self.draining = True
        return list(self.sessions.values())

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_work()
            self._wakeup.clear()
            while True:
                now = time.monotonic()
                self._queue_due_finalizes(now)
                batch, wait = self._ready.pop_batch(self.max_batch, now)
                releases, self._releases = self._releases, []
                if not batch and not releases:
                    break
                if batch:
                    self.load.add_step_wait(wait, now)
                planned = []
                for session in batch:
                    if session.id in self.sessions and session.has_work(self._chunk):
                        planned.append((session, session.next_item(self._chunk)))
                items = [item for _, item in planned if item is not None]
                self.steps += 1
                try:
                    outputs, failed = await loop.run_in_executor(self._thread, self._step, items, releases)
                except Exception:  # not the model (it is isolated in _step): keep the loop alive
                    logger.exception("engine step failed outside the model")
                    outputs, failed = {}, {item.stream_id: RuntimeError("engine") for item in items}
                self._deliver(planned, outputs, failed)

    def _deliver(self, planned, outputs: dict, failed: dict) -> None:
        now = time.monotonic()
        for session, item in planned:
            session.last_step = self.steps
            if session.closed and session.id not in self.sessions:
                continue  # dropped while its step ran; its stream was released
            if item is not None and item.stream_id in failed:
                self._fail(session, item.stream_id, failed[item.stream_id])
                continue
            try:
                session.deliver(item, outputs.get(item.stream_id) if item else None)
            except Exception as exc:
                logger.exception("could not deliver a step's output")
                self._fail(session, item.stream_id if item else None, exc)
                continue
            if session.closed:
                self.sessions.pop(session.id, None)
            else:
                self._queue_or_wait(session, now)  # still behind: back of the queue

    async def _wait_for_work(self) -> None:
        """Until new work is signalled, or a waiting finalize reaches its deadline."""
        deadlines = [d for s in self._finalizing.values() if (d := s.finalize_deadline()) is not None]
        if not deadlines:
            await self._wakeup.wait()
            return
        try:
            await asyncio.wait_for(self._wakeup.wait(), max(0.0, min(deadlines) - time.monotonic()) + 0.001)
        except asyncio.TimeoutError:
            pass

    def _queue_due_finalizes(self, now: float) -> None:
        for key, session in list(self._finalizing.items()):
            deadline = session.finalize_deadline()
            if session.closed or deadline is None or session in self._ready:
                del self._finalizing[key]
            elif session.has_work(self._chunk):  # filled, or its deadline passed
                del self._finalizing[key]
                self._ready.push(session, now)

    def _step(self, items: list[StepItem], releases: list[int]) -> tuple[dict, dict]:
        """Runs on the inference thread: releases, then the batch, isolating failures."""
        for stream_id in releases:
            try:
                self.adapter.release(stream_id)
            except Exception:
                logger.exception("releasing stream %s failed", stream_id)
        outputs: dict[int, StepOutput] = {}
        failed: dict[int, Exception] = {}
        if items:
            self._run_isolating(items, outputs, failed)
        return outputs, failed

    def _run_isolating(self, items: list[StepItem], outputs: dict, failed: dict) -> None:
        """Run `items`; if the step raises, bisect so that only the failing streams fail.

        Exact only because adapters promise an atomic step: one that raises has changed no
        stream's state (StreamingAdapter.step), so each half reruns from the same state.
        """
        started = time.perf_counter()
        try:
            results = self.adapter.step(items)
            if len(results) != len(items):
                raise RuntimeError(f"adapter returned {len(results)} outputs for {len(items)} items")
        except Exception as exc:
            if len(items) == 1:
                logger.error("stream %s failed the model step: %r", items[0].stream_id, exc)
                failed[items[0].stream_id] = exc
                return
            logger.warning("a batched step of %d streams failed (%r); isolating the cause", len(items), exc)
            middle = len(items) // 2
            for half in (items[:middle], items[middle:]):
                self.isolation_steps += 1
                self._run_isolating(half, outputs, failed)
            return
        elapsed = time.perf_counter() - started
        self.load.record_step(len(items), elapsed)
        if self.on_step:
            self.on_step(len(items), elapsed)
        outputs.update(zip((item.stream_id for item in items), results))

    def _fail(self, session: Session, stream_id: Optional[int], exc: Exception) -> None:
        self.failed_streams += 1
        if stream_id is not None:
            self._releases.append(stream_id)  # its state is suspect; release is idempotent
        session.stream_id = None
        session.fail(Error(ErrorCode.INTERNAL, f"inference failed: {type(exc).__name__}"))
        self.drop(session)
        self._wakeup.set()


def _report_crash(task: asyncio.Task) -> None:
    """The loop must never end on its own: say loudly why it did."""
    if not task.cancelled() and task.exception() is not None:
        logger.critical("engine loop crashed", exc_info=task.exception())
