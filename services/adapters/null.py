"""`--model null`: an adapter that runs no model, to measure the host side alone.

Every step returns nothing (no tokens, no partials); a finalize or close still gets its
final — an empty one, made by the engine's session — so the protocol round trip is the
same as with a model. Load tests with it measure ingest, the engine and the sockets: what
a worker costs before a GPU does any work.
"""

from __future__ import annotations

from ..engine.adapter import StepItem, StepOutput, StreamingAdapter


class NullAdapter(StreamingAdapter):
    model_name = "null"

    def __init__(self, chunk_ms: int = 160, max_streams: int = 100_000, sample_rate: int = 16000):
        self.sample_rate = sample_rate
        self.chunk_samples = sample_rate * chunk_ms // 1000
        self.max_streams = max_streams
        self._streams: set[int] = set()

    def prepare(self, items: list[StepItem]) -> list[StepItem]:
        return items

    def commit(self, items: list[StepItem]) -> list[StepOutput]:
        for item in items:
            if item.is_last:
                self._streams.discard(item.stream_id)
            else:
                self._streams.add(item.stream_id)
        return [StepOutput() for _ in items]

    def release(self, stream_id: int) -> None:
        self._streams.discard(stream_id)

    def active_streams(self) -> int:
        return len(self._streams)
