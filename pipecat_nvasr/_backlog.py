"""The user's audio while a streaming service has no session (connecting, cold start,
worker restart): kept in order, bounded, and sent once the worker says `ready`."""

from __future__ import annotations

from collections import deque
from typing import Union

from .protocol import Finalize

class AudioBacklog:
    """Audio (and `finalize` marks) waiting for a session, oldest dropped past `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.items: deque[Union[bytes, Finalize]] = deque()
        self.bytes = 0
        self.dropped_bytes = 0  # since the last `clear_counters`

    def add(self, item: Union[bytes, Finalize]) -> int:
        """Queue an item; returns how many bytes of the oldest audio had to go."""
        self.items.append(item)
        if isinstance(item, bytes):
            self.bytes += len(item)
        return self.trim(self.max_bytes)

    def trim(self, max_bytes: int) -> int:
        """Drop the oldest audio (never a `finalize` mark) until at most `max_bytes` remain;
        returns how many bytes went."""
        dropped = 0
        while self.bytes > max_bytes:
            index = next(i for i, x in enumerate(self.items) if isinstance(x, bytes))
            oldest = self.items[index]
            del self.items[index]
            self.bytes -= len(oldest)
            dropped += len(oldest)
        self.dropped_bytes += dropped
        return dropped

    def popleft(self) -> Union[bytes, Finalize]:
        item = self.items.popleft()
        if isinstance(item, bytes):
            self.bytes -= len(item)
        return item

    def pushback(self, item: Union[bytes, Finalize]) -> None:
        self.items.appendleft(item)
        if isinstance(item, bytes):
            self.bytes += len(item)

    def clear(self) -> None:
        self.items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.items)
