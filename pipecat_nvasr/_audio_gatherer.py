"""Gather the pipeline's small audio frames into chunk-sized WebSocket messages.

Pipecat hands a service 10-20 ms frames. Sent one by one, each is a WebSocket message the
worker must receive, parse and append; the engine cannot step a stream before it holds a
whole chunk (`ready.chunk_ms`) anyway. So the service gathers audio up to the next chunk
boundary of the stream and sends it as one message: the worker gets the audio that
completes a chunk at the same moment as before (no added latency), in a fraction of the
messages. Boundaries are counted from the first byte of the session, so they stay on the
worker's chunk grid.

`flush()` hands over whatever is held; the service calls it right before every `finalize`
and `close`, so no audio ever waits in the client while the worker is asked for a final.
"""

from __future__ import annotations

from typing import Optional


class AudioGatherer:
    """Holds PCM16 audio until the stream reaches its next chunk boundary.

    `chunk_bytes` 0 gathers nothing: every frame passes straight through (no `ready` yet, or
    gathering turned off).
    """

    def __init__(self, chunk_bytes: int = 0):
        self.chunk_bytes = 0
        self.position = 0  # bytes handed over since the session began
        self._held = bytearray()
        self.reset(chunk_bytes)

    @staticmethod
    def chunk_bytes_for(chunk_ms: Optional[int], sample_rate: int, fraction: float = 1.0) -> int:
        """Message size for a worker chunk: `fraction` of `chunk_ms` at `sample_rate`, whole samples."""
        if not chunk_ms or fraction <= 0:
            return 0
        return 2 * max(1, round(sample_rate * chunk_ms * fraction / 1000))

    def reset(self, chunk_bytes: int) -> None:
        """A new session: boundaries count from its first byte. Call after `flush()`."""
        if self._held:
            raise RuntimeError("reset with audio still held; flush() it first")
        self.chunk_bytes = max(0, int(chunk_bytes) // 2 * 2)
        self.position = 0

    @property
    def held_bytes(self) -> int:
        return len(self._held)

    def add(self, audio: bytes) -> bytes:
        """Take a frame; return the audio now due to be sent (b"" while a chunk is still filling).

        What is returned always ends on a chunk boundary of the stream.
        """
        if not self.chunk_bytes:
            self.position += len(audio)
            return audio
        self._held += audio
        # bytes up to the last chunk boundary the held audio reaches
        due = (self.position + len(self._held)) // self.chunk_bytes * self.chunk_bytes - self.position
        if due <= 0:
            return b""
        out = bytes(self._held[:due])
        del self._held[:due]
        self.position += due
        return out

    def flush(self) -> bytes:
        """Everything held, now (before `finalize` / `close`)."""
        out = bytes(self._held)
        self._held.clear()
        self.position += len(out)
        return out
