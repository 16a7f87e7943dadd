"""One client's stream as the engine sees it: buffered audio, flush marks, outgoing events.

A session lives on the asyncio loop; only the engine core touches it. Audio is kept as a
list of float32 arrays so appends are O(1) and a chunk is cut without copying the rest.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import deque
from dataclasses import replace
from typing import Optional, Union

import numpy as np

from pipecat_nvasr.protocol import BoostPhrase, Closed, Error, Final, Partial

from .adapter import StepItem, StepOutput
from .outbox import Outbox

Outgoing = Union[Partial, Final, Closed, Error]

_stream_ids = itertools.count(1)


class Overloaded(Exception):
    """The worker cannot take this (more sessions, or audio faster than it keeps up)."""


class Session:
    def __init__(self, sample_rate: int, max_buffer_samples: int):
        self.id = uuid.uuid4().hex
        self.sample_rate = sample_rate
        self.max_buffer_samples = max_buffer_samples
        self.outbox = Outbox()  # of Outgoing; pending partials coalesce
        self._boost: list[BoostPhrase] = []
        self._boost_changed = False
        self.last_step = -1  # engine step that last served this session: oldest first
        self.audio_seconds = 0.0

        self._chunks: deque[np.ndarray] = deque()
        self._buffered = 0  # samples waiting in _chunks
        self._received = 0  # samples ever received
        self._consumed = 0  # samples ever handed to the model
        self._flushes: deque[tuple[int, bool]] = deque()  # (sample position, from_finalize)
        self._closing = False
        self.closed = False

        self.stream_id: Optional[int] = None  # the adapter stream now open, if any
        self._stream_start = 0  # session sample where that stream began
        self._last_partial = ""

    # ------------------------------------------------------------------ client side

    @property
    def boost(self) -> list[BoostPhrase]:
        return self._boost

    @boost.setter
    def boost(self, phrases: list[BoostPhrase]) -> None:
        """Key phrases; they reach the model with this session's next chunk."""
        self._boost = list(phrases)
        self._boost_changed = True

    def append(self, samples: np.ndarray) -> None:
        if self._closing:
            return
        if self._buffered + len(samples) > self.max_buffer_samples:
            raise Overloaded(
                f"audio arrives faster than it is transcribed "
                f"(more than {self.max_buffer_samples / self.sample_rate:.1f} s behind)"
            )
        if len(samples):
            self._chunks.append(samples)
            self._buffered += len(samples)
            self._received += len(samples)

    def finalize(self) -> None:
        """End the current utterance at the audio received so far."""
        if not self._closing:
            self._flushes.append((self._received, True))

    def close(self) -> None:
        """End of stream: flush everything, then say `closed`."""
        if not self._closing:
            self._closing = True
            self._flushes.append((self._received, False))

    @property
    def closing(self) -> bool:
        return self._closing

    # ------------------------------------------------------------------ engine side

    def has_work(self, chunk: int) -> bool:
        return self._buffered >= chunk or bool(self._flushes)

    def next_item(self, chunk: int) -> Optional[StepItem]:
        """Cut this session's input for the next step, or None if a flush needs no model call."""
        flush_at = self._flushes[0][0] if self._flushes else None
        take = chunk if flush_at is None else min(chunk, flush_at - self._consumed)
        # A full chunk is never a last chunk: a flush that lands on a chunk boundary ends with
        # an empty last chunk, so results do not depend on whether close came before or after it.
        is_last = flush_at is not None and self._consumed + take == flush_at and take < chunk
        if is_last and self.stream_id is None and take == 0:
            return None  # nothing was said since the last utterance ended
        samples = self._take(take)
        is_first = self.stream_id is None
        if is_first:
            self.stream_id = next(_stream_ids)
            self._stream_start = self._consumed
        boost = list(self._boost) if is_first or self._boost_changed else None
        self._boost_changed = False
        self._consumed += take
        self.audio_seconds += take / self.sample_rate
        return StepItem(
            stream_id=self.stream_id,
            samples=samples,
            is_first=is_first,
            is_last=is_last,
            boost=boost,
        )

    def _take(self, n: int) -> np.ndarray:
        parts, need = [], n
        while need:
            head = self._chunks[0]
            if len(head) <= need:
                parts.append(self._chunks.popleft())
                need -= len(head)
            else:
                parts.append(head[:need])
                self._chunks[0] = head[need:]
                need = 0
        self._buffered -= n
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def deliver(self, item: Optional[StepItem], output: Optional[StepOutput]) -> None:
        """Turn one step's output into protocol messages, in stream time."""
        offset = self._stream_start / self.sample_rate
        ended = item is None or item.is_last
        from_finalize = ended and self._flushes[0][1]
        finals = list(output.finals) if output else []
        if ended and not any(f.text for f in finals) and from_finalize:
            now = self._consumed / self.sample_rate - offset  # stream-relative, like adapter output
            finals.append(Final(text="", start=now, end=now))
        for index, final in enumerate(finals):
            answers_finalize = from_finalize and index == len(finals) - 1
            if not final.text and not answers_finalize:
                continue
            self.outbox.put_nowait(_shift(final, offset, from_finalize=answers_finalize))
            self._last_partial = ""
        if output and output.partial and not ended:
            partial = output.partial
            if partial.text and partial.text != self._last_partial:
                self._last_partial = partial.text
                self.outbox.put_nowait(_shift(partial, offset))
        if ended:
            self._flushes.popleft()
            self.stream_id = None
            self._last_partial = ""
            if self._closing and not self._flushes:
                self.closed = True
                self.outbox.put_nowait(Closed())

    def fail(self, error: Error) -> None:
        self.outbox.put_nowait(error)


def _shift(event, offset: float, **changes):
    """Move an adapter-stream event into session time."""
    if isinstance(event, Final):
        words = [replace(w, start=round(w.start + offset, 3), end=round(w.end + offset, 3)) for w in event.words]
        changes["words"] = words
    return replace(
        event, start=round(event.start + offset, 3), end=round(event.end + offset, 3), **changes
    )
