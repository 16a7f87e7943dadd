"""One client's stream as the engine sees it: buffered audio, flush marks, outgoing events.

A session lives on the asyncio loop; only the engine core touches it. Audio is kept as a
list of float32 arrays so appends are O(1) and a chunk is cut without copying the rest.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import deque
from dataclasses import replace
from typing import Optional, Union

import numpy as np

from pipecat_nvasr.protocol import BoostPhrase, Closed, Error, Final, Partial

from .adapter import StepItem, StepOutput

Outgoing = Union[Partial, Final, Closed, Error]

_stream_ids = itertools.count(1)


class Overloaded(Exception):
    """The worker cannot take this (more sessions, or audio faster than it keeps up)."""


class Session:
    def __init__(self, sample_rate: int, max_buffer_samples: int):
        self.id = uuid.uuid4().hex
        self.sample_rate = sample_rate
        self.max_buffer_samples = max_buffer_samples
        self.outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self._boost: list[BoostPhrase] = []
        self._boost_changed = False
        self.last_step = -1  # engine step that last served this session: oldest first
        self.audio_seconds = 0.0

        self._chunks: deque[np.ndarray] = deque()
        self._buffered = 0  # samples waiting in _chunks
        self._received = 0  # samples ever received
        self._consumed = 0  # samples ever handed to the model
        self._flushes: deque[tuple[int, bool]] = deque()  # (sample position, from_finalize)
        self._finalize_deadlines: deque[float] = deque()  # one per pending finalize, in order
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

    def finalize(self, wait: float = 0.0) -> None:
        """End the current utterance at the audio received so far.

        `wait`: at most this many seconds for the rest of the chunk that holds the finalize point
        (see `next_item`); after it the utterance ends at the last whole chunk.
        """
        if not self._closing:
            self._flushes.append((self._received, True))
            self._finalize_deadlines.append(time.monotonic() + wait)

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
        if self._buffered >= chunk:
            return True
        if not self._flushes:
            return False
        flush_at, from_finalize = self._flushes[0]
        return (
            not from_finalize
            or self._consumed >= flush_at
            or len(self._flushes) > 1  # a close (or another finalize) waits behind it: no more audio
            or time.monotonic() >= self._finalize_deadlines[0]
        )

    def finalize_deadline(self) -> Optional[float]:
        """When the finalize at the head of the queue stops waiting for its chunk to fill."""
        if self._flushes and self._flushes[0][1]:
            return self._finalize_deadlines[0]
        return None

    def next_item(self, chunk: int) -> Optional[StepItem]:
        """Cut this session's input for the next step, or None if a flush needs no model call.

        A `close` ends the adapter stream with a short (even empty) last chunk. A `finalize`
        ends only the utterance, and never alters the audio the encoder sees: the chunk that
        holds the finalize point is stepped whole once the client's next audio fills it (it
        keeps streaming after a VAD stop), with `end_utterance`, so a word whose last piece the
        model emits a little late (a trailing "s" the VAD took for silence) stays in this final.
        If the chunk does not fill within the wait, or the finalize lands on a chunk boundary,
        the utterance ends at the last whole chunk with no model call (an item without samples)
        and the tail stays buffered for the next chunk. Padding the tail with zeros instead cuts
        into any word the VAD stop lands in (measured: "seven coffee" → "table coffee").
        """
        flush_at, from_finalize = self._flushes[0] if self._flushes else (None, False)
        if from_finalize and (self._consumed >= flush_at or self._buffered < chunk):
            if self.stream_id is None:
                return None  # nothing reached the model since the session began
            return StepItem(self.stream_id, np.zeros(0, np.float32), is_first=False, is_last=False,
                            end_utterance=True)
        end_utterance = from_finalize and self._consumed + chunk >= flush_at
        take = chunk if flush_at is None or from_finalize else min(chunk, flush_at - self._consumed)
        # A full chunk is never a last chunk: a close that lands on a chunk boundary ends with
        # an empty last chunk, so results do not depend on whether close came before or after it.
        is_last = flush_at is not None and not from_finalize and self._consumed + take == flush_at and take < chunk
        if is_last and self.stream_id is None and take == 0:
            return None  # nothing was said since the session began
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
            end_utterance=end_utterance,
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
        """Turn one step's output into protocol messages, in client stream time."""
        flushed = item is None or item.is_last or item.end_utterance
        stream_ended = item.is_last if item is not None else self.stream_id is None
        from_finalize = flushed and self._flushes[0][1]
        finals = list(output.finals) if output else []
        if flushed and from_finalize and not any(f.text for f in finals):
            now = (self._consumed - self._stream_start) / self.sample_rate  # stream time, like adapter output
            finals.append(Final(text="", start=now, end=now))
        for index, final in enumerate(finals):
            answers_finalize = from_finalize and index == len(finals) - 1
            if not final.text and not answers_finalize:
                continue
            self.outbox.put_nowait(self._shift(final, from_finalize=answers_finalize))
            self._last_partial = ""
        if output and output.partial and not flushed:
            partial = output.partial
            if partial.text and partial.text != self._last_partial:
                self._last_partial = partial.text
                self.outbox.put_nowait(self._shift(partial))
        if flushed:
            if self._flushes.popleft()[1]:
                self._finalize_deadlines.popleft()
            self._last_partial = ""
        if stream_ended:
            self.stream_id = None
            if self._closing and not self._flushes:
                self.closed = True
                self.outbox.put_nowait(Closed())

    def _shift(self, event, **changes):
        """Move an adapter-stream event into session time."""
        offset = self._stream_start / self.sample_rate
        if isinstance(event, Final):
            changes["words"] = [
                replace(w, start=round(w.start + offset, 3), end=round(w.end + offset, 3)) for w in event.words
            ]
        return replace(event, start=round(event.start + offset, 3), end=round(event.end + offset, 3), **changes)

    def fail(self, error: Error) -> None:
        self.outbox.put_nowait(error)

