"""Dynamic batching: requests that arrive close together share one model call.

Requests queue on the asyncio loop. The collector takes the first one, waits up to
`max_wait_ms` for company (or until `max_batch` are waiting), sorts what it has by length
(so rows of similar length share a batch and padding stays small), cuts it into batches of
at most `max_batch` utterances and `max_batch_seconds` of padded audio, and runs each on the
single model thread. Requests that arrive meanwhile form the next batch. If a batch fails,
its items are retried one by one, so a bad item fails only itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Generic, Optional, Sequence, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

Result = TypeVar("Result")
BatchFn = Callable[[list[np.ndarray]], Sequence[Result]]
BatchObserver = Callable[[int, float], None]  # (batch size, seconds)


class QueueFull(Exception):
    """More requests are waiting than the worker accepts; retry later."""


@dataclass
class _Request:
    audio: np.ndarray
    future: asyncio.Future


def plan_batches(lengths: Sequence[int], max_batch: int, max_padded: int) -> list[list[int]]:
    """Group request indices: sorted by length, ≤ max_batch rows and ≤ max_padded padded samples."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[index]  # sorted ascending: the newcomer is the longest row
        if current and (len(current) >= max_batch or longest * (len(current) + 1) > max_padded):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class DynamicBatcher(Generic[Result]):
    def __init__(
        self,
        transcribe: BatchFn,
        *,
        sample_rate: int = 16000,
        max_batch: int = 128,
        max_wait_ms: float = 10.0,
        max_batch_seconds: float = 128 * 30.0,
        max_queue: int = 4096,
        on_batch: Optional[BatchObserver] = None,
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._transcribe = transcribe
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_padded = int(max_batch_seconds * sample_rate)
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.batch_sizes: list[int] = []  # every model call's size, for tests and health
        self._queue: list[_Request] = []
        self._arrived = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-model")
        self._task: Optional[asyncio.Task] = None

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dynamic-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for request in self._queue:
            if not request.future.done():
                request.future.set_exception(RuntimeError("the worker is shutting down"))
        self._queue.clear()
        self._thread.shutdown(wait=True)

    async def run_on_model_thread(self, fn, *args):
        """Run `fn` on the model thread (loading, warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def transcribe(self, audio: np.ndarray) -> Result:
        """Queue one utterance and wait for its result (exceptions are this item's own)."""
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"{len(self._queue)} requests are already waiting")
        request = _Request(np.ascontiguousarray(audio, dtype=np.float32), asyncio.get_running_loop().create_future())
        self._queue.append(request)
        self._arrived.set()
        return await request.future

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            deadline = time.monotonic() + self.max_wait
            while len(self._queue) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            self._arrived.clear()
            pending, self._queue = self._queue, []
            pending = [r for r in pending if not r.future.done()]  # a caller gave up (cancelled)
            lengths = [len(r.audio) for r in pending]
            for indices in plan_batches(lengths, self.max_batch, self.max_padded):
                await self._run_batch([pending[i] for i in indices])

    async def _run_batch(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._thread, self._call, [r.audio for r in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], error=exc)
                return
            logger.warning("a batch of %d failed; retrying its items one by one", len(batch))
            for request in batch:
                await self._run_batch([request])
            return
        for request, result in zip(batch, results):
            _settle(request, result=result)

    def _call(self, audios: list[np.ndarray]):
        started = time.perf_counter()
        results = self._transcribe(audios)
        if len(results) != len(audios):
            raise RuntimeError(f"model returned {len(results)} results for {len(audios)} inputs")
        self.batch_sizes.append(len(audios))
        if self.on_batch:
            self.on_batch(len(audios), time.perf_counter() - started)
        return results


def _settle(request: _Request, result=None, error: Optional[BaseException] = None) -> None:
    if request.future.done():
        return
    if error is not None:
        request.future.set_exception(error)
    else:
        request.future.set_result(result)
