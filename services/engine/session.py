"""One client's stream as the engine sees it: buffered audio, flush marks, outgoing events.

A session lives on the asyncio loop; only the engine core touches it. Audio is kept as a
list of float32 arrays so appends are O(1) and a chunk is cut without copying the rest.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import deque
from dataclasses import replace
from typing import Optional, Union

import numpy as np

from pipecat_nvasr.protocol import BoostPhrase, Closed, Error, Final, Partial

from ..errors import Overloaded
from .adapter import StepItem, StepOutput
from .outbox import Outbox

Outgoing = Union[Partial, Final, Closed, Error]

_stream_ids = itertools.count(1)


class Session:
    def __init__(self, sample_rate: int, max_buffer_samples: int, fork_finalize: bool = False):
        self.id = uuid.uuid4().hex
        self.sample_rate = sample_rate
        self.max_buffer_samples = max_buffer_samples
        self.outbox = Outbox()  # of Outgoing; pending partials coalesce
        self._boost: list[BoostPhrase] = []
        self._boost_changed = False
        self._language: Optional[str] = None  # model locale now (prompt-conditioned models)
        self._languages: deque[tuple[int, str]] = deque()  # (session sample it applies from, locale)
        self.last_step = -1  # engine step that last served this session: oldest first
        self.audio_seconds = 0.0
        self.padded_chunks = 0  # chunks zero-padded at a finalize's deadline (the client stopped sending)

        self._chunks: deque[np.ndarray] = deque()
        self._buffered = 0  # samples waiting in _chunks
        self._received = 0  # samples ever received
        self._consumed = 0  # samples ever handed to the model
        # (sample position, deadline): a finalize waits for its chunk until the deadline; a close
        # has none
        self._flushes: deque[tuple[int, Optional[float]]] = deque()
        self._closing = False
        self.closed = False
        # a finalize is answered from a forked tail (the adapter steps the partial chunk on a copy
        # of the stream's state, at once); else it waits for the chunk to fill (or pads it)
        self.fork_finalize = fork_finalize
        # the finalize at the head of `_flushes` was answered by a fork: the stream itself still
        # steps through that point, as the wait path would (filled, or padded at the deadline)
        self._answered = False

        self.stream_id: Optional[int] = None  # the adapter stream now open, if any
        self._stream_start = 0  # session sample where that stream began
        self._model_samples = 0  # samples that stream has been given, zero pads included
        self._pads: list[tuple[int, int]] = []  # (stream sample where a pad starts, its length)
        self._last_partial: dict[Optional[str], str] = {}  # speaker → the partial text last sent

    # ------------------------------------------------------------------ client side

    @property
    def boost(self) -> list[BoostPhrase]:
        return self._boost

    @boost.setter
    def boost(self, phrases: list[BoostPhrase]) -> None:
        """Key phrases; they reach the model with this session's next chunk."""
        self._boost = list(phrases)
        self._boost_changed = True

    @property
    def language(self) -> Optional[str]:
        """The locale last asked for (it may not have reached the model yet)."""
        return self._languages[-1][1] if self._languages else self._language

    @language.setter
    def language(self, locale: str) -> None:
        """A model locale for the audio received from now on: it reaches the model with the first
        chunk that holds any of that audio (same stream, no audio lost)."""
        self._languages.append((self._received, locale))

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
            self._flushes.append((self._received, time.monotonic() + wait))

    def close(self) -> None:
        """End of stream: flush everything, then say `closed`."""
        if not self._closing:
            self._closing = True
            self._flushes.append((self._received, None))

    @property
    def closing(self) -> bool:
        return self._closing

    # ------------------------------------------------------------------ engine side

    def has_work(self, chunk: int) -> bool:
        if self._buffered >= chunk:
            return True
        if not self._flushes:
            return False
        flush_at, deadline = self._flushes[0]
        return (
            deadline is None
            or self._consumed >= flush_at
            or (self.fork_finalize and self.stream_id is not None and not self._answered)  # a fork runs at once
            or len(self._flushes) > 1  # a close (or another finalize) waits behind it: no more audio
            or time.monotonic() >= deadline
        )

    def finalize_deadline(self) -> Optional[float]:
        """When the finalize at the head of the queue stops waiting for its chunk to fill."""
        return self._flushes[0][1] if self._flushes else None

    def next_item(self, chunk: int) -> Optional[StepItem]:
        """Cut this session's input for the next step, or None if a flush needs no model call.

        A `close` ends the adapter stream with a short (even empty) last chunk. A `finalize`
        ends only the utterance (`end_utterance`); the stream goes on. The chunk that holds the
        finalize point is stepped whole once the client's next audio fills it (a microphone
        keeps streaming after a VAD stop), so the encoder sees exactly the audio it would have
        seen without the finalize and a word whose last piece the model emits a little late (a
        trailing "s" the VAD took for silence) stays in this final. A finalize on a chunk
        boundary needs no model call (an item without samples). If the chunk does not fill in
        time (the client stopped sending, or closes), what there is is padded with zeros — the
        silence of that gap — and the pad is taken out of event times (`_client_time`).
        """
        flush_at, deadline = self._flushes[0] if self._flushes else (None, None)
        from_finalize = deadline is not None
        pad = 0
        if from_finalize and self._consumed >= flush_at:
            if self.stream_id is None:
                return None  # nothing reached the model since the session began
            return StepItem(self.stream_id, np.zeros(0, np.float32), is_first=False, is_last=False,
                            end_utterance=True)
        fork = from_finalize and self.fork_finalize and self.stream_id is not None
        if fork and not self._answered and flush_at - self._consumed < chunk:
            return self._fork_item(flush_at - self._consumed)
        if from_finalize:
            take = min(chunk, self._buffered)
            pad = chunk - take
        else:
            take = chunk if flush_at is None else min(chunk, flush_at - self._consumed)
        end_utterance = from_finalize and self._consumed + take >= flush_at
        if from_finalize and self._answered:  # the fork ended the utterance; the stream only moves on
            if end_utterance:
                self._flushes.popleft()
                self._answered = False
            end_utterance = False
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
            self._model_samples = 0
            self._pads = []
        if pad:
            self.padded_chunks += 1
            self._pads.append((self._model_samples + take, pad))
            samples = np.concatenate([samples, np.zeros(pad, dtype=np.float32)])
        boost = list(self._boost) if is_first or self._boost_changed else None
        self._boost_changed = False
        changed = False
        while self._languages and self._languages[0][0] <= self._consumed + max(take - 1, 0):
            self._language = self._languages.popleft()[1]
            changed = True
        language = self._language if is_first or changed else None
        self._consumed += take
        self._model_samples += len(samples)
        self.audio_seconds += take / self.sample_rate
        return StepItem(
            stream_id=self.stream_id,
            samples=samples,
            is_first=is_first,
            is_last=is_last,
            boost=boost,
            end_utterance=end_utterance,
            language=language,
        )

    def _fork_item(self, n: int) -> StepItem:
        """The audio up to the finalize point that does not fill a chunk, for a forked step: it is
        copied, not taken — the stream itself steps it later, whole, with the audio that follows."""
        parts, need = [], n
        for head in self._chunks:
            if not need:
                break
            parts.append(head[:need])
            need -= len(parts[-1])
        samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return StepItem(self.stream_id, samples, is_first=False, is_last=False, end_utterance=True, fork=True)

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
        from_finalize = flushed and self._flushes[0][1] is not None
        finals = list(output.finals) if output else []
        if flushed and from_finalize and not any(f.text for f in finals):
            now = self._model_samples / self.sample_rate  # adapter-stream time, like its output
            finals.append(Final(text="", start=now, end=now))
        for index, final in enumerate(finals):
            answers_finalize = from_finalize and index == len(finals) - 1
            if not final.text and not answers_finalize:
                continue
            self.outbox.put_nowait(self._shift(final, from_finalize=answers_finalize))
            self._last_partial.pop(final.speaker, None)
        if output and not flushed:
            for partial in output.all_partials():
                if partial.text and partial.text != self._last_partial.get(partial.speaker):
                    self._last_partial[partial.speaker] = partial.text
                    self.outbox.put_nowait(self._shift(partial))
        if flushed:
            if item is not None and item.fork:
                self._answered = True  # popped once the stream itself has stepped past it
            else:
                self._flushes.popleft()
            self._last_partial.clear()
        if stream_ended:
            self.stream_id = None
            if self._closing and not self._flushes:
                self.closed = True
                self.outbox.put_nowait(Closed())

    def _client_time(self, stream_seconds: float) -> float:
        """Adapter-stream seconds (zero pads included) → seconds of the client's audio."""
        position = stream_seconds * self.sample_rate
        client = position
        for at, length in self._pads:
            if position <= at:
                break
            client -= min(length, position - at)  # a time inside a pad is the pad's start
        return round((self._stream_start + client) / self.sample_rate, 3)

    def _shift(self, event, **changes):
        """Move an adapter-stream event into client time."""
        if isinstance(event, Final):
            changes["words"] = [
                replace(w, start=self._client_time(w.start), end=self._client_time(w.end)) for w in event.words
            ]
        return replace(event, start=self._client_time(event.start), end=self._client_time(event.end), **changes)

    def fail(self, error: Error) -> None:
        self.outbox.put_nowait(error)

