"""`ParakeetSTTService`: Pipecat VAD segments → the Parakeet batch worker.

Parakeet TDT is not a streaming model. Pipecat's `SegmentedSTTService` buffers audio
between the pipeline's VAD start and stop (with pre-roll) and hands us a WAV; we POST it to
the batch worker's OpenAI-compatible endpoint (aiohttp, never blocking the loop). The worker
batches segments from many bots into one GPU call. Each segment yields one finalized
`TranscriptionFrame` whose `result` holds the worker's verbose_json (word timings and
confidence). TTFB is measured by the base class from the VAD stop; the segment's request is
a discrete call, so (as Pipecat's segmented services do) its processing time is reported too.
The frame's language is the one the worker says it transcribed; metrics name the model the
worker serves (read from its `/health`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Optional

import aiohttp
from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, StartFrame, TranscriptionFrame
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.transcriptions.language import Language, resolve_language
from pipecat.utils.errors import ErrorCategory, classify_http_status_code
from pipecat.utils.time import time_now_iso8601
from pipecat.utils.tracing.service_decorators import traced_stt

from .protocol import TRANSCRIBE_PATH

DEFAULT_MODEL = "nvidia/parakeet-tdt-0.6b-v3"
# The 25 European languages of parakeet-tdt-0.6b-v3.
LANGUAGE_CODES = "bg hr cs da nl en et fi fr de el hu it lv lt mt pl pt ro sk sl es sv ru uk".split()
LANGUAGE_MAP = {Language(code): code for code in LANGUAGE_CODES}
# verbose_json names the language in words (OpenAI's convention): back to codes
LANGUAGE_NAMES = {
    "bulgarian": "bg", "croatian": "hr", "czech": "cs", "danish": "da", "dutch": "nl", "english": "en",
    "estonian": "et", "finnish": "fi", "french": "fr", "german": "de", "greek": "el", "hungarian": "hu",
    "italian": "it", "latvian": "lv", "lithuanian": "lt", "maltese": "mt", "polish": "pl", "portuguese": "pt",
    "romanian": "ro", "slovak": "sk", "slovenian": "sl", "spanish": "es", "swedish": "sv", "russian": "ru",
    "ukrainian": "uk",
}


@dataclass
class ParakeetSTTSettings(STTSettings):
    """Settings for `ParakeetSTTService`. `model` is filled in from the worker (a worker
    serves one model); `language` is sent with every segment."""


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
            settings: language (sent to the worker with every segment; one of the model's 25
                European languages, else a permanent configuration error) and model (a
                placeholder until the worker's `/health` names the model it serves).
            session: an aiohttp session to reuse; by default the service owns one.
            push_empty_transcripts: push a TranscriptionFrame even when nothing was recognised.
        """
        default = self.Settings(model=DEFAULT_MODEL, language=Language.EN)
        if settings is not None:
            default.apply_update(settings)
        super().__init__(settings=default, **kwargs)
        self._base_url = base_url.rstrip("/")
        self._url = self._base_url + TRANSCRIBE_PATH
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._push_empty = push_empty_transcripts
        self._worker_model_known = False

    def can_generate_metrics(self) -> bool:
        return True

    def language_to_service_language(self, language: Language) -> Optional[str]:
        code = resolve_language(language, LANGUAGE_MAP, use_base_code=True)
        return code if code in LANGUAGE_CODES else None

    async def start(self, frame: StartFrame):
        await super().start(frame)
        if self._language_code() is None:
            await self.push_error(
                f"language {self._settings.language!r} is not one the worker's model transcribes; "
                f"use one of {LANGUAGE_CODES}",
                category=ErrorCategory.INVALID_REQUEST,
            )

    async def _update_settings(self, delta):
        changed = await super()._update_settings(delta)
        if "language" in changed and self._language_code() is None:
            await self.push_error(f"language {self._settings.language!r} is not one the worker's model transcribes",
                                  category=ErrorCategory.INVALID_REQUEST)
        return changed

    async def cleanup(self):
        await super().cleanup()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _language_code(self) -> Optional[str]:
        language = self._settings.language or Language.EN
        if not isinstance(language, Language):
            try:
                language = Language(str(language))
            except ValueError:
                return None
        return self.language_to_service_language(language)

    async def _learn_worker_model(self):
        """The model the worker serves (its `/health`), so metrics name the real model."""
        try:
            async with self._session.get(f"{self._base_url}/health", headers=self._headers,
                                         timeout=self._timeout) as response:
                if response.status == 200:
                    model = (await response.json()).get("model")
                    if model:
                        self._settings.model = model
                        self._sync_model_name_to_metrics()
                    self._worker_model_known = True
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            logger.debug(f"{self}: could not read the worker's model name yet: {exc}")

    @traced_stt
    async def _handle_transcription(self, transcript: str, is_final: bool, language: Optional[Language] = None):
        """The tracing span of this segment (Pipecat's STT tracing convention)."""

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame, None]:
        language = self._language_code()
        if language is None:
            return  # a configuration error was reported at start
        if self._session is None:
            self._session = aiohttp.ClientSession()
        if not self._worker_model_known:
            await self._learn_worker_model()
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
                        category=classify_http_status_code(response.status),
                    )
                    return
                if response.status != 200:
                    detail = (await response.text())[:300]
                    await self.stop_processing_metrics()
                    yield ErrorFrame(error=f"{self}: batch worker answered HTTP {response.status}: {detail}",
                                     category=classify_http_status_code(response.status))
                    return
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self.stop_processing_metrics()
            yield ErrorFrame(error=f"{self}: batch worker unreachable at {self._url}: {exc}",
                             category=ErrorCategory.CONNECTIVITY)
            return
        await self.stop_processing_metrics()
        text = (body.get("text") or "").strip()
        if not text and not self._push_empty:
            logger.debug(f"{self}: empty transcript for a segment")
            return
        transcribed = _to_language(body.get("language")) or _to_language(language)
        await self._handle_transcription(text, True, transcribed)
        yield TranscriptionFrame(
            text,
            self._user_id,
            time_now_iso8601(),
            language=transcribed,
            result=body,
            finalized=True,
        )


def _to_language(name_or_code: Optional[str]) -> Optional[Language]:
    """A language as the worker names it (`english`, OpenAI's style, or `en`)."""
    if not name_or_code:
        return None
    code = LANGUAGE_NAMES.get(str(name_or_code).lower(), str(name_or_code))
    try:
        return Language(code)
    except ValueError:
        return None
