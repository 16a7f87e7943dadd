"""Which sessions run in the next batched step.

Every session with a full chunk buffered (or a pending flush, whose last chunk may be
short) is eligible; the ones served longest ago go first, up to `max_batch`. A session
without a full chunk is left out: every row of a cache-aware step advances that stream's
cache by a whole chunk, so padding an idle stream in would corrupt it.
"""

from __future__ import annotations

from typing import Iterable

from .session import Session


def select_batch(sessions: Iterable[Session], chunk_samples: int, max_batch: int) -> list[Session]:
    ready = [s for s in sessions if not s.closed and s.has_work(chunk_samples)]
    ready.sort(key=lambda s: s.last_step)  # stable: ties keep arrival order
    return ready[:max_batch]
