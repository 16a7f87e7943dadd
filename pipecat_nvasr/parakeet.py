"""`ParakeetSTTService`: Pipecat VAD segments → the Parakeet batch worker.

Parakeet TDT is not a streaming model. Pipecat's `SegmentedSTTService` buffers audio
between the pipeline's VAD start and stop (with pre-roll) and hands us a WAV; we POST it to
the batch worker's OpenAI-compatible endpoint (aiohttp, never blocking the loop). The worker
batches segments from many bots into one GPU call. Each segment yields one finalized
`TranscriptionFrame` whose `result` holds the worker's verbose_json (word timings and
confidence). TTFB is measured by the base class from the VAD stop; we add processing time.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Optional

import aiohttp
from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, TranscriptionFrame
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.transcriptions.language import Language, resolve_language
from pipecat.utils.time import time_now_iso8601

from .protocol import TRANSCRIBE_PATH

DEFAULT_MODEL = "nvidia/parakeet-tdt-0.6b-v3"
# The 25 European languages of parakeet-tdt-0.6b-v3.
LANGUAGE_CODES = "bg hr cs da nl en et fi fr de el hu it lv lt mt pl pt ro sk sl es sv ru uk".split()
LANGUAGE_MAP = {Language(code): code for code in LANGUAGE_CODES}


@dataclass
class ParakeetSTTSettings(STTSettings):
    """Settings for `ParakeetSTTService` (model is informational: a worker serves one model)."""


class ParakeetSTTService(SegmentedSTTService):
    Settings = ParakeetSTTSettings
    _settings: Settings

    def __init__(
        self,
        *,
        base_url: str,
        api_key: Optional[str] = None,
        settings: Optional[Settings] = None,
        session: Optional[aiohttp.ClientSession] = None,
        request_timeout_s: float = 30.0,
        push_empty_transcripts: bool = False,
        **kwargs,
    ):
        """
        Args:
            base_url: the batch worker, e.g. `http://127.0.0.1:8000` or the Modal URL.
            api_key: the worker's bearer token.
            settings: model / language (the language is passed to the worker and put on frames).
            session: an aiohttp session to reuse; by default the service owns one.
            push_empty_transcripts: push a TranscriptionFrame even when nothing was recognised.
        """
        default = self.Settings(model=DEFAULT_MODEL, language=Language.EN)
        if settings is not None:
            default.apply_update(settings)
        super().__init__(settings=default, **kwargs)
        self._url = base_url.rstrip("/") + TRANSCRIBE_PATH
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._push_empty = push_empty_transcripts

    def can_generate_metrics(self) -> bool:
        return True

    def language_to_service_language(self, language: Language) -> Optional[str]:
        return resolve_language(language, LANGUAGE_MAP, use_base_code=True)

    async def cleanup(self):
        await super().cleanup()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _language_code(self) -> str:
        language = self._settings.language
        if isinstance(language, Language):
            return self.language_to_service_language(language) or "en"
        return str(language or "en")

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame, None]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        language = self._language_code()
        form = aiohttp.FormData()
        form.add_field("file", audio, filename="segment.wav", content_type="audio/wav")
        form.add_field("model", str(self._settings.model or DEFAULT_MODEL))
        form.add_field("language", language)
        form.add_field("response_format", "verbose_json")
        form.add_field("timestamp_granularities[]", "word")
        form.add_field("timestamp_granularities[]", "segment")
        await self.start_processing_metrics()
        try:
            async with self._session.post(self._url, data=form, headers=self._headers, timeout=self._timeout) as response:
                if response.status in (401, 403):
                    await self.stop_processing_metrics()
                    await self.push_error(
                        f"{self}: the batch worker refused our token (HTTP {response.status})",
                        force_treat_as_permanent=True,
                    )
                    return
                if response.status != 200:
                    detail = (await response.text())[:300]
                    await self.stop_processing_metrics()
                    yield ErrorFrame(error=f"{self}: batch worker answered HTTP {response.status}: {detail}")
                    return
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self.stop_processing_metrics()
            yield ErrorFrame(error=f"{self}: batch worker unreachable at {self._url}: {exc}")
            return
        await self.stop_processing_metrics()
        text = (body.get("text") or "").strip()
        if not text and not self._push_empty:
            logger.debug(f"{self}: empty transcript for a segment")
            return
        yield TranscriptionFrame(
            text,
            self._user_id,
            time_now_iso8601(),
            language=_to_language(language),
            result=body,
            finalized=True,
        )


def _to_language(code: str) -> Optional[Language]:
    try:
        return Language(code)
    except ValueError:
        return None
