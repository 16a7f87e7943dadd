"""A session's outgoing messages: a queue whose pending partials coalesce.

A partial is cumulative (it replaces the previous one), so while a client is slow to read,
a newer partial replaces a pending one of the same speaker instead of queueing behind it.
Finals, errors and `closed` always queue. The socket bounds how many may wait
(server/listen.py); this class only keeps the count honest.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Optional

from pipecat_nvasr.protocol import Partial


class Outbox:
    """The part of asyncio.Queue a session's single reader uses, plus partial coalescing."""

    def __init__(self) -> None:
        self._items: deque = deque()
        self._waiter: Optional[asyncio.Future] = None
        self.coalesced = 0  # partials replaced before they were sent

    def put_nowait(self, event) -> None:
        if isinstance(event, Partial):
            for index in range(len(self._items) - 1, -1, -1):
                pending = self._items[index]
                if not isinstance(pending, Partial):
                    break  # a final or error since: this partial is a new utterance's
                if pending.speaker == event.speaker:
                    self._items[index] = event
                    self.coalesced += 1
                    return
        self._items.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self):
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def get_nowait(self):
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items
