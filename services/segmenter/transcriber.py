"""How the segmenter reaches the batch worker: one utterance in, one Transcript out.

Locally that is an HTTP POST to the worker's OpenAI-compatible endpoint (WAV upload,
verbose_json with word timings). On Modal the deploy shell passes a function that calls the
batch class instead; anything with the same async signature works.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Awaitable, Callable, Optional

import numpy as np

from pipecat_nvasr.protocol import TRANSCRIBE_PATH

from ..batch.formats import from_verbose_json
from ..batch.model import Transcript

logger = logging.getLogger(__name__)

Transcriber = Callable[[np.ndarray], Awaitable[Transcript]]


class BatchUnavailable(Exception):
    """The batch worker could not transcribe an utterance."""


def wav_bytes(samples: np.ndarray, sample_rate: int = 16000) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1, 1), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class HTTPBatchTranscriber:
    """POSTs utterances to `<batch_url>/v1/audio/transcriptions`, retrying transient failures."""

    def __init__(
        self,
        batch_url: str,
        token: Optional[str] = None,
        sample_rate: int = 16000,
        timeout_s: float = 60.0,
        retries: int = 2,
    ):
        self.url = batch_url.rstrip("/") + TRANSCRIBE_PATH
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.sample_rate = sample_rate
        self.timeout_s = timeout_s
        self.retries = retries
        self._session = None

    async def __call__(self, samples: np.ndarray) -> Transcript:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        payload = await asyncio.to_thread(wav_bytes, samples, self.sample_rate)
        last = "no attempt"
        for attempt in range(self.retries + 1):
            form = aiohttp.FormData()
            form.add_field("file", payload, filename="utterance.wav", content_type="audio/wav")
            form.add_field("response_format", "verbose_json")
            form.add_field("timestamp_granularities[]", "word")
            form.add_field("timestamp_granularities[]", "segment")
            try:
                async with self._session.post(self.url, data=form, headers=self.headers) as response:
                    if response.status == 200:
                        return from_verbose_json(await response.json())
                    last = f"HTTP {response.status}: {(await response.text())[:200]}"
                    if response.status < 500 and response.status != 429:
                        break  # our request is wrong (auth, input): retrying will not help
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                await asyncio.sleep(0.2 * (attempt + 1))
        raise BatchUnavailable(f"batch worker at {self.url} failed: {last}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class CallBatchTranscriber:
    """Utterances → an async call taking 16 kHz s16le PCM and returning verbose_json (a Modal method)."""

    def __init__(self, call: Callable[[bytes], Awaitable[dict]]):
        self.call = call

    async def __call__(self, samples: np.ndarray) -> Transcript:
        pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
        try:
            return from_verbose_json(await self.call(pcm))
        except Exception as exc:
            raise BatchUnavailable(f"batch call failed: {type(exc).__name__}: {exc}") from exc
