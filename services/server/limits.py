"""Per-session rate limits on client requests that cost the worker more than a frame does.

A `configure` rebuilds the session's boosting graph; one client sending thousands of them
would spend the worker's time for every session. A token bucket lets a client change its
phrases a few times in a row (`burst`), then `per_second` on average; beyond that the worker
refuses the request with a non-fatal `rate_limited` error and the session carries on.
"""

from __future__ import annotations

import time
from typing import Callable


class TokenBucket:
    def __init__(self, burst: int, per_second: float, clock: Callable[[], float] = time.monotonic):
        self.burst = burst
        self.per_second = per_second
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        """Spend one request if the budget allows it."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_second)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until the next request is allowed."""
        return max(0.0, (1 - self._tokens) / self.per_second) if self.per_second > 0 else float("inf")
