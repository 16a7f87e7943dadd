"""Which sessions run in the next batched step.

Sessions enter a ready queue when they gain work (a full chunk buffered, or a pending flush,
whose last chunk may be short) and leave it when picked; a session that still has work after
its step goes to the back. So each step takes the sessions waiting longest, up to
`max_batch`, and costs O(batch), not O(open sessions) — at thousands of mostly-idle
real-time streams, scanning every session on every step was the engine's largest host cost.

A session without a full chunk is never queued: every row of a cache-aware step advances
that stream's cache by a whole chunk, so padding an idle stream in would corrupt it.
"""

from __future__ import annotations

import time
from typing import Optional

from .session import Session


class ReadyQueue:
    """Sessions with work, oldest first; each remembers when it became ready."""

    def __init__(self) -> None:
        self._ready: dict[str, tuple[Session, float]] = {}  # insertion order = FIFO

    def __len__(self) -> int:
        return len(self._ready)

    def __contains__(self, session: Session) -> bool:
        return session.id in self._ready

    def push(self, session: Session, now: Optional[float] = None) -> None:
        if session.id not in self._ready:
            self._ready[session.id] = (session, time.monotonic() if now is None else now)

    def discard(self, session: Session) -> None:
        self._ready.pop(session.id, None)

    def oldest_wait(self, now: float) -> float:
        """Seconds the head of the queue has been waiting (0 when empty)."""
        for _, since in self._ready.values():
            return now - since
        return 0.0

    def pop_batch(self, max_batch: int, now: float) -> tuple[list[Session], float]:
        """The next batch and how long its longest-waiting member waited."""
        batch: list[Session] = []
        wait = 0.0
        while self._ready and len(batch) < max_batch:
            key = next(iter(self._ready))
            session, since = self._ready.pop(key)
            if session.closed:
                continue
            batch.append(session)
            wait = max(wait, now - since)
        return batch, wait


def select_batch(sessions, chunk_samples: int, max_batch: int) -> list[Session]:
    """Scan-based selection (oldest-served first); kept for tools that hold no ready queue."""
    ready = [s for s in sessions if not s.closed and s.has_work(chunk_samples)]
    ready.sort(key=lambda s: s.last_step)  # stable: ties keep arrival order
    return ready[:max_batch]
