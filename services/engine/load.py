"""What the engine measures about its own load, for admission control, shedding and /metrics.

Measurement only: the engine core decides what to refuse or shed from these figures.
"""

from __future__ import annotations

import time

LAG_WINDOW_S = 1.0  # lag figures are the worst seen over the last one or two windows


class _WindowMax:
    """The largest value seen in the current and the previous window (decays when idle)."""

    def __init__(self, window: float = LAG_WINDOW_S):
        self.window = window
        self._start = time.monotonic()
        self._current = 0.0
        self._previous = 0.0

    def _roll(self, now: float) -> None:
        if now - self._start >= self.window:
            self._previous = self._current if now - self._start < 2 * self.window else 0.0
            self._current = 0.0
            self._start = now

    def add(self, value: float, now: float) -> None:
        self._roll(now)
        self._current = max(self._current, value)

    def value(self, now: float) -> float:
        self._roll(now)
        return max(self._current, self._previous)


class LoadMonitor:
    """Step costs per batch size, and how late chunks, sessions and the event loop run."""

    def __init__(self, max_batch: int):
        self.max_batch = max_batch
        self._step_cost: dict[int, tuple[float, float]] = {}  # batch bucket (power of 2) → EWMA (seconds, size)
        self._step_wait = _WindowMax()
        self._loop_lag = _WindowMax()
        self._backlog_lag = _WindowMax()

    def record_step(self, batch: int, seconds: float) -> None:
        bucket = 1 << (batch - 1).bit_length()
        mean, size = self._step_cost.get(bucket, (seconds, batch))
        self._step_cost[bucket] = (0.8 * mean + 0.2 * seconds, 0.8 * size + 0.2 * batch)

    def predicted_round(self, streams: int) -> float:
        """Seconds of model time for every one of `streams` to advance by one chunk, from the
        step times measured so far (EWMA per power-of-two batch size)."""
        costs = self._step_cost
        if not costs or streams <= 0:
            return 0.0
        batch = min(streams, self.max_batch)
        steps = -(-streams // batch)
        bucket = 1 << (batch - 1).bit_length()
        known = [b for b in costs if b >= bucket]
        seconds, size = costs[min(known)] if known else costs[max(costs)]
        # Within what was measured, time grows with the batch; beyond it, at most one doubling
        # is guessed: on a GPU a bigger batch costs little more, and continuous batching
        # measures bigger batches as soon as the load makes them.
        return steps * seconds * min(2.0, max(1.0, batch / size))

    def add_step_wait(self, seconds: float, now: float) -> None:
        self._step_wait.add(seconds, now)

    def add_loop_lag(self, seconds: float, now: float) -> None:
        self._loop_lag.add(seconds, now)

    def loop_lag(self, now: float) -> float:
        return self._loop_lag.value(now)

    def step_lag(self, now: float) -> float:
        """The worst wait of a chunk for its step, or p90 session backlog, lately."""
        return max(self._step_wait.value(now), self._backlog_lag.value(now))

    def measure_backlog(self, sessions, chunk: int, rate: int, now: float) -> float:
        """p90 of how far the sessions' audio is behind real time (seconds); remembered."""
        # Behind real time: audio waiting, less what a client sent ahead of real time (a file
        # streamed fast is a backlog the client made, not a sign the engine falls behind).
        behind = sorted(
            max(0, s._buffered - chunk - max(0, s._received - int((now - s.opened_at) * rate)))
            for s in sessions
        )
        backlog = behind[int(0.9 * (len(behind) - 1))] / rate if behind else 0.0
        self._backlog_lag.add(backlog, now)
        return backlog
