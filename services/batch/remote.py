"""The batch worker as a function call (Modal method) rather than HTTP.

The segmenter on Modal calls the GPU class's method with 16 kHz s16le PCM; many calls are in
flight per container (`@modal.concurrent`), and this endpoint feeds them all through one
DynamicBatcher, so they share GPU batches exactly like HTTP requests do.
"""

from __future__ import annotations

import asyncio
from typing import Optional

import numpy as np

from .batcher import DynamicBatcher
from .formats import to_verbose_json
from .model import OfflineASRModel


class BatchCallEndpoint:
    def __init__(self, model: OfflineASRModel, max_batch: int = 128, max_wait_ms: float = 10.0, language: str = "en"):
        self.model = model
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.language = language
        self._batcher: Optional[DynamicBatcher] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    async def transcribe_pcm(self, pcm16: bytes) -> dict:
        """16 kHz mono s16le → verbose_json with words and segments (see docs/batch.md)."""
        loop = asyncio.get_running_loop()
        if self._batcher is None or self._loop is not loop:  # the batcher lives on the caller's loop
            self._batcher = DynamicBatcher(
                self.model.transcribe,
                sample_rate=self.model.sample_rate,
                max_batch=self.max_batch,
                max_wait_ms=self.max_wait_ms,
            )
            self._loop = loop
            await self._batcher.start()
        if len(pcm16) % 2:
            raise ValueError("PCM s16le needs an even number of bytes")
        samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
        if self.model.sample_rate != 16000:
            import soxr

            samples = soxr.resample(samples, 16000, self.model.sample_rate).astype(np.float32)
        transcript = await self._batcher.transcribe(samples)
        return to_verbose_json(transcript, self.language, ("word", "segment"))
