"""The contract between the model-agnostic engine and a streaming model adapter.

The engine owns sessions, buffering and scheduling; an adapter owns the model and each
stream's model state. The engine calls an adapter from ONE thread only, so adapters need
no locking. Times in adapter output are seconds from the start of that adapter stream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np

from pipecat_nvasr.protocol import BoostPhrase, Final, Partial

Event = Union[Partial, Final]


@dataclass
class StepItem:
    """One stream's input for one batched step.

    `samples` is float32 in [-1, 1]; it holds exactly `chunk_samples` unless `is_last`
    (the last chunk of a stream may be shorter, even empty). `boost` is the stream's key
    phrases, given on its first item and whenever the client changes them (None: unchanged).

    `end_utterance` (a client `finalize`): after this item's samples (if any) are stepped,
    end the stream's current utterance — emit its final even if no endpoint fired — while the
    encoder cache, feature context, decoder state and stream time carry on: only the text is
    split (a VAD pause is not the end of the stream; restarting the decoder mid-sentence makes
    it repeat the word it just wrote). An item with `end_utterance` and no samples needs no
    model call; one with samples holds a whole chunk (the engine zero-pads it, and takes the pad
    out of event times, only when the client stopped sending before the chunk filled). `is_last` (a client `close`, or a disconnect flush) ends the whole stream.
    """

    stream_id: int
    samples: np.ndarray
    is_first: bool
    is_last: bool
    boost: Optional[list[BoostPhrase]] = None
    end_utterance: bool = False
    # a finalize answered from a forked tail: step `samples` (short of a chunk; the adapter pads
    # them) on a COPY of the stream's state and end the utterance from it; the stream's own state
    # does not move, and the same audio comes again, whole, in a later item of the stream
    fork: bool = False
    # the stream's model locale (prompt-conditioned models), given like `boost`: on the first item
    # and whenever the client changes it (None: unchanged); the adapter applies it from this chunk
    language: Optional[str] = None


@dataclass
class StepOutput:
    """What one stream produced in one step: finals (utterances that ended, in order) and the
    partial. A stream with several speakers (multitalker) has one open utterance per speaker:
    their partials go in `partials`, each event labelled with its `speaker`."""

    finals: list[Final] = field(default_factory=list)
    partial: Optional[Partial] = None
    partials: list[Partial] = field(default_factory=list)

    def all_partials(self) -> list[Partial]:
        return ([self.partial] if self.partial is not None else []) + self.partials


class StreamingAdapter(ABC):
    """A model behind the engine, stepped in two phases (the engine core of vLLM's v1 is the model):

    - `prepare(items)` makes every model call of one batched step and computes every new state
      and every event, writing NOTHING: it may raise, and then no stream has changed. The engine
      isolates a failure by splitting the batch in halves and preparing each again from the same
      state, until only the stream that makes the model fail is left (`EngineCore._run_isolating`).
    - `commit(prepared)` writes the prepared state back and returns one result per item, in
      order: its `StepOutput`, or the `Exception` that ended that item alone. It never raises;
      nothing in it calls a model. Only that session fails for a per-item exception.

    `step(items)` is the two in a row, for warm-up and tests.
    """

    model_name: str
    sample_rate: int = 16000
    chunk_samples: int
    max_streams: int
    languages: tuple[str, ...] = ("en",)  # ISO 639-1 codes the model transcribes
    supports_fork = False  # takes `StepItem.fork` (a finalize from a forked tail)
    # locales a prompt-conditioned model takes per stream (its prompt dictionary, maybe with
    # "auto"); empty: the model has no language prompt (see services/languages.py)
    locales: tuple[str, ...] = ()
    # Called with each end-of-utterance latency (seconds of stream time) by adapters whose
    # model ends utterances itself (parakeet-realtime); the worker points it at /metrics.
    on_eou: Optional[Callable[[float], None]] = None

    @property
    def chunk_ms(self) -> int:
        return round(1000 * self.chunk_samples / self.sample_rate)

    @abstractmethod
    def prepare(self, items: list[StepItem]) -> Any:
        """Every model call for `items` (one batch); returns what `commit` needs. Changes no state."""

    @abstractmethod
    def commit(self, prepared: Any) -> list[Union[StepOutput, Exception]]:
        """Store a prepared step's state; one output (or that item's own exception) per item. Never raises."""

    def step(self, items: list[StepItem]) -> list[StepOutput]:
        """prepare + commit; raises the first per-item exception (warm-up, tests)."""
        results = self.commit(self.prepare(items))
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    def compile_boost(self, phrases: list[BoostPhrase]) -> None:
        """Do the costly part of a stream's new key phrases now, on any thread but the inference
        one (the server calls it when a `configure` arrives), so no step waits for it."""

    @abstractmethod
    def release(self, stream_id: int) -> None:
        """Forget a stream that ends without a last chunk (disconnect, error)."""

    def active_streams(self) -> int:
        """Streams holding model state now (for leak checks and metrics)."""
        return 0

    def warmup(self, samples: Optional[np.ndarray] = None) -> None:
        """Stream audio (speech if given, else silence) through one stream, so the first
        real session pays no lazy initialisation."""
        if samples is None:
            samples = np.zeros(2 * self.chunk_samples, dtype=np.float32)
        n = self.chunk_samples
        chunks = [samples[i : i + n] for i in range(0, len(samples), n)] or [samples]
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            self.step([StepItem(stream_id=-1, samples=chunk, is_first=index == 0, is_last=last)])
