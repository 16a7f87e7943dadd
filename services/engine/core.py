"""The engine core: sessions in, batched model steps on one thread, events out.

The asyncio loop only moves audio and messages; every model call runs on a single
dedicated inference thread (cache-aware stream steps are not thread-safe). The loop
wakes on new work, runs a step for every ready session at once, and immediately looks
again — continuous batching with no fixed sleeps: audio that arrives during a step is
in the next one.

Three guards keep one worker useful under stress, and one says when it is not:
- a step whose `prepare` raises is split in halves and prepared again until the one stream
  that makes the model fail is found; only that session gets `internal`
  (`StreamingAdapter.prepare`/`commit`);
- admission control: when the engine falls behind (chunks wait longer than `admit_lag`
  for a step, or the event loop itself runs late) new sessions are refused with
  `overloaded` before the open ones degrade, and a session whose own backlog passes
  `max_buffer_seconds` is ended with `overloaded` (Session.append);
- a worker that cannot serve any more is DEAD (`EngineCore.dead`): its loop ended, a CUDA error
  that is not one stream's (an illegal memory access poisons the whole context), or
  `DEAD_AFTER` steps in a row where every stream failed. Then every open session is told
  (`unavailable`, 1011), new ones are refused, `/health` answers 503 and `on_dead` fires (the
  CLI exits non-zero so the orchestrator — Modal, systemd, Kubernetes — replaces the process).

Bookkeeping lives on the event loop only: the inference thread returns what it measured and
the loop records it (the load tables are read by `open` on the loop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

from pipecat_nvasr.protocol import Error, ErrorCode

from ..errors import Overloaded, Unavailable
from .adapter import StepItem, StreamingAdapter
from .load import LoadMonitor
from .scheduler import ReadyQueue
from .session import Session

logger = logging.getLogger(__name__)

StepObserver = Callable[[int, float], None]  # (batch size, seconds) per step, for metrics

LOOP_PROBE_S = 0.05  # how often the event-loop lag probe wakes
BACKLOG_EVERY = 4  # probe ticks between backlog measurements (O(sessions) each)
DEAD_AFTER = 3  # steps in a row in which every stream failed: the model cannot serve
# an error whose text says so poisons the device, not one stream: no retry can succeed
STICKY_FAULTS = ("illegal memory access", "device-side assert", "CUDA error: an illegal", "unspecified launch failure",
                 "CUBLAS_STATUS_EXECUTION_FAILED", "uncorrectable ECC", "misaligned address")


def is_sticky_fault(exc: BaseException) -> bool:
    """A device fault after which every later kernel fails too (not out-of-memory, not bad input)."""
    if type(exc).__name__ == "AcceleratorError":
        return True
    text = str(exc)
    return any(marker in text for marker in STICKY_FAULTS)


class EngineCore:
    def __init__(
        self,
        adapter: StreamingAdapter,
        max_sessions: Optional[int] = None,
        max_batch: int = 64,
        max_buffer_seconds: float = 10.0,
        finalize_wait: Optional[float] = None,
        fork_finalize: bool = False,
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
        # a finalize from a forked tail, where the adapter can fork (else it waits for its chunk)
        self.fork_finalize = fork_finalize and adapter.supports_fork
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
        self.dead: Optional[str] = None  # why this engine can no longer serve (None: alive)
        self.on_dead: list[Callable[[str], None]] = []  # called once, on the loop, when it dies
        self._stopping = False
        self._all_failed = 0  # steps in a row in which every stream failed
        # counters for /metrics
        self.refused: Counter[str] = Counter()  # reason → sessions refused at open
        self.failed_streams = 0  # sessions ended by a model failure on their own step
        self.isolation_steps = 0  # extra steps run to find the stream that failed a batch
        self.finalize_pads = 0  # chunks padded at a finalize's deadline (the client stopped sending)
        self._chunk = adapter.chunk_samples
        self._ready = ReadyQueue()
        self.load = LoadMonitor(max_batch)
        self._shed_hold = 0.0  # no shedding before this time (monotonic)
        self._releases: list[int] = []  # adapter streams to forget, on the inference thread
        self._wakeup = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="boost-compile")
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
            self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task) -> None:
        """The loop must never end on its own: if it does, this engine is dead."""
        if self._stopping:
            return
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            logger.critical("engine loop crashed", exc_info=exc)
        self.die(f"the engine loop ended ({type(exc).__name__ if exc else 'cancelled'})")

    def die(self, reason: str) -> None:
        """No more serving: tell and end every session, refuse new ones, tell the owner (once)."""
        if self.dead is not None:
            return
        self.dead = reason
        logger.critical("this worker can no longer serve: %s", reason)
        for session in list(self.sessions.values()):
            session.fail(Error(ErrorCode.UNAVAILABLE, f"this worker failed ({reason}); connect again"))
            self.drop(session)
        for callback in self.on_dead:
            try:
                callback(reason)
            except Exception:
                logger.exception("an on_dead callback failed")

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._task, self._probe):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._task = self._probe = None
        await self._release_pending()
        self._thread.shutdown(wait=True)
        self._compiler.shutdown(wait=False)

    async def _release_pending(self) -> None:
        """Free the model state of streams dropped since the last step (no step will run now)."""
        releases, self._releases = self._releases, []
        if releases:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._step, [], releases)

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
        if self.dead is not None:
            self.refused["dead"] += 1
            raise Unavailable(f"this worker failed ({self.dead}) and is being replaced; connect again")
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
        session = Session(self.adapter.sample_rate, self.max_buffer_samples, fork_finalize=self.fork_finalize)
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

    async def configure(self, session: Session, phrases) -> None:
        """New key phrases: compiled off the inference thread, then applied from the next chunk."""
        if phrases:
            await asyncio.get_running_loop().run_in_executor(self._compiler, self.adapter.compile_boost, phrases)
        session.boost = phrases

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
                        padded = session.padded_chunks
                        planned.append((session, session.next_item(self._chunk)))
                        self.finalize_pads += session.padded_chunks - padded
                items = [item for _, item in planned if item is not None]
                self.steps += 1
                try:
                    result = await loop.run_in_executor(self._thread, self._step, items, releases)
                except asyncio.CancelledError:  # stopped mid-step: what it was to free is freed by stop()
                    self._releases = releases + self._releases  # (release is idempotent)
                    raise
                except Exception:  # not the model (it is isolated in _step): keep the loop alive
                    logger.exception("engine step failed outside the model")
                    result = _StepResult(failed={item.stream_id: RuntimeError("engine") for item in items})
                self._record(result, len(items))
                self._deliver(planned, result.outputs, result.failed)
                if self.dead is not None:
                    await self._release_pending()  # a dead engine steps no more, but frees its streams
                    return

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

    def _record(self, result: "_StepResult", items: int) -> None:
        """On the loop: what the thread measured goes into the load tables and metrics."""
        for batch, seconds in result.timings:
            self.load.record_step(batch, seconds)
            if self.on_step:
                self.on_step(batch, seconds)
        self.isolation_steps += result.isolation_steps
        if result.sticky is not None:
            self.die(f"device fault: {type(result.sticky).__name__}: {str(result.sticky)[:200]}")
            return
        if items and len(result.failed) == items:
            self._all_failed += 1
            if self._all_failed >= DEAD_AFTER:
                self.die(f"every stream of the last {DEAD_AFTER} steps failed")
        elif items:
            self._all_failed = 0

    def _step(self, items: list[StepItem], releases: list[int]) -> "_StepResult":
        """Runs on the inference thread: releases, then the batch, isolating failures. Writes
        nothing the loop reads: what it measured comes back in the result."""
        for stream_id in releases:
            try:
                self.adapter.release(stream_id)
            except Exception:
                logger.exception("releasing stream %s failed", stream_id)
        result = _StepResult()
        if items:
            self._run_isolating(items, result)
        return result

    def _run_isolating(self, items: list[StepItem], result: "_StepResult") -> None:
        """Prepare `items`; if that raises, bisect so that only the failing streams fail; commit.

        Exact because `prepare` writes nothing (StreamingAdapter): each half is prepared again
        from the same state. A device fault that poisons every later call is not bisected.
        """
        started = time.perf_counter()
        try:
            prepared = self.adapter.prepare(items)
        except Exception as exc:
            if is_sticky_fault(exc):
                result.sticky = exc
            if len(items) == 1 or result.sticky is not None:
                logger.error("stream(s) %s failed the model step: %r", [i.stream_id for i in items], exc)
                result.failed.update({item.stream_id: exc for item in items})
                return
            logger.warning("a batched step of %d streams failed (%r); isolating the cause", len(items), exc)
            middle = len(items) // 2
            for half in (items[:middle], items[middle:]):
                result.isolation_steps += 1
                self._run_isolating(half, result)
            return
        try:
            outputs = self.adapter.commit(prepared)
            if len(outputs) != len(items):
                raise RuntimeError(f"adapter returned {len(outputs)} outputs for {len(items)} items")
        except Exception as exc:  # a broken promise: the state of these streams is unknown now
            logger.critical("committing a step raised (adapter bug): %r", exc, exc_info=exc)
            outputs = [exc] * len(items)
        result.timings.append((len(items), time.perf_counter() - started))
        for item, output in zip(items, outputs):
            if isinstance(output, Exception):
                result.failed[item.stream_id] = output
            else:
                result.outputs[item.stream_id] = output

    def _fail(self, session: Session, stream_id: Optional[int], exc: Exception) -> None:
        self.failed_streams += 1
        if stream_id is not None:
            self._releases.append(stream_id)  # its state is suspect; release is idempotent
        session.stream_id = None
        session.fail(Error(ErrorCode.INTERNAL, f"inference failed: {type(exc).__name__}"))
        self.drop(session)
        self._wakeup.set()


@dataclass
class _StepResult:
    """What one step on the inference thread produced and measured, for the loop to record."""

    outputs: dict = field(default_factory=dict)  # stream id → StepOutput
    failed: dict = field(default_factory=dict)  # stream id → Exception
    timings: list = field(default_factory=list)  # (batch size, seconds) per successful step
    isolation_steps: int = 0
    sticky: Optional[BaseException] = None  # a device fault: nothing can succeed any more
