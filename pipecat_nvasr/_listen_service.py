"""Shared Pipecat client for the `/v1/listen` protocol (docs/protocol.md).

Every streaming worker (Nemotron, Parakeet realtime) speaks the same protocol, so the
connection, the `ready` handshake, audio sending, boost phrases, the graceful `close`
drain and the error mapping live here once. A concrete service only names its defaults
and, where its model drives the turn itself, overrides `_on_final`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Optional

from loguru import logger
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.protocol import State

from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import WebsocketSTTService
from pipecat.transcriptions.language import Language
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.time import time_now_iso8601
from pipecat.utils.tracing.service_decorators import traced_stt
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from .client import listen_url
from .protocol import (
    SAMPLE_RATE,
    SUPPORTED_SAMPLE_RATES,
    BoostPhrase,
    Close,
    CloseCode,
    Closed,
    Configure,
    Error,
    ErrorCode,
    Final,
    Finalize,
    Partial,
    ProtocolError,
    Ready,
    dump,
    parse_server_message,
)

# Protocol error codes → Pipecat error categories. A permanent category (authentication)
# marks the service unusable, which is what stops the base class's reconnect loop.
ERROR_CATEGORIES = {
    ErrorCode.UNAUTHORIZED: ErrorCategory.AUTHENTICATION,
    ErrorCode.OVERLOADED: ErrorCategory.RATE_LIMIT,  # retry later or elsewhere
    ErrorCode.INTERNAL: ErrorCategory.SERVER,
    ErrorCode.BAD_AUDIO: ErrorCategory.APPLICATION,
    ErrorCode.BAD_MESSAGE: ErrorCategory.APPLICATION,
}


class WorkerRejected(Exception):
    """The worker refused or ended the session with a protocol error code."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


def boost_phrases(items: Any) -> list[BoostPhrase]:
    """Accept phrases as strings, (phrase, weight) pairs, dicts or BoostPhrase objects."""
    phrases = []
    for item in items or []:
        if isinstance(item, BoostPhrase):
            phrases.append(item)
        elif isinstance(item, str):
            phrases.append(BoostPhrase(item))
        elif isinstance(item, dict):
            phrases.append(BoostPhrase(item["phrase"], float(item.get("weight", 1.0))))
        else:
            phrase, weight = item
            phrases.append(BoostPhrase(phrase, float(weight)))
    return phrases


@dataclass
class NvasrListenSettings(STTSettings):
    """Runtime-updatable settings of a `/v1/listen` service.

    Parameters:
        url: The worker's base URL (`ws(s)://` or `http(s)://host[:port]`). Changing it
            reconnects (after the user's turn).
        boost_phrases: Key phrases the model should favour: strings, (phrase, weight)
            pairs or `BoostPhrase`. Changing them sends `configure`; no reconnect.
    """

    url: str | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    boost_phrases: list | NotGiven = field(default_factory=lambda: NOT_GIVEN)


class NvasrListenSTTService(WebsocketSTTService):
    """A streaming STT service on an nvasr worker's `/v1/listen` WebSocket.

    Audio goes out as raw PCM at the pipeline's rate (declared in the URL; the worker
    resamples, so a VAD `finalize` flushes the resampler's tail too). Partials become
    `InterimTranscriptionFrame`s, finals `TranscriptionFrame`s carrying the protocol's
    `Final` (words with times) as `result`.
    """

    Settings = NvasrListenSettings
    _settings: NvasrListenSettings

    # Send `finalize` on VAD stop. A service whose model ends turns itself turns it off.
    finalize_on_vad_stop: bool = True
    default_url: str = "ws://127.0.0.1:8000"

    def __init__(
        self,
        *,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        sample_rate: Optional[int] = None,
        settings: Optional[NvasrListenSettings] = None,
        ready_timeout: float = 10.0,
        close_timeout: float = 5.0,
        **kwargs,
    ):
        """Args:
        url: the worker's base URL (shorthand for `settings.url`).
        api_key: the worker's token, sent as `Authorization: Bearer`.
        sample_rate: input rate; default the pipeline's.
        settings: runtime-updatable settings; they win over `url`.
        ready_timeout: seconds to wait for the worker's `ready` after connecting.
        close_timeout: seconds to wait on `close` for the last finals and `closed`.
        """
        store = self.Settings(
            model=None,  # the worker serves one model; its `ready` names it
            language=Language.EN,
            url=url or self.default_url,
            boost_phrases=[],
        )
        if settings is not None:
            store.apply_update(settings)
        super().__init__(sample_rate=sample_rate, settings=store, **kwargs)
        self._api_key = api_key
        self._ready_timeout = ready_timeout
        self._close_timeout = close_timeout
        self._receive_task: Optional[asyncio.Task] = None
        self._closed = asyncio.Event()
        self._wire_rate = SAMPLE_RATE
        self._resampler = None
        self.worker_session: Optional[Ready] = None  # the worker's `ready` message

    def can_generate_metrics(self) -> bool:
        return True

    def language_to_service_language(self, language: Language) -> str | None:
        """The worker takes base codes: `en-US` → `en`."""
        return str(language.value).split("-")[0].lower()

    # ------------------------------------------------------------------ lifecycle

    async def setup(self, setup: FrameProcessorSetup):
        await super().setup(setup)
        if self.sample_rate in SUPPORTED_SAMPLE_RATES:
            self._wire_rate = self.sample_rate
        else:  # a rate the worker does not take: resample here, to the model rate
            self._wire_rate = SAMPLE_RATE
            self._resampler = create_stream_resampler()
        await self._connect()

    async def stop(self, frame: EndFrame):
        await self._drain()  # every final reaches the pipeline before EndFrame does
        await super().stop(frame)

    async def _do_reconnect(self):
        await self._drain()  # a settings change must not drop the audio already sent
        await super()._do_reconnect()

    async def _update_settings(self, delta: STTSettings) -> dict[str, Any]:
        changed = await super()._update_settings(delta)
        if "url" in changed or "language" in changed:
            await self._request_reconnect()
        elif "boost_phrases" in changed:
            await self._send_configure()
        self._warn_unhandled_updated_settings(changed.keys() - {"url", "language", "boost_phrases"})
        return changed

    # ------------------------------------------------------------------ connection

    def _url(self) -> str:
        language = self._settings.language or "en"
        return listen_url(str(self._settings.url), self._wire_rate, str(language))

    async def _connect(self):
        await super()._connect()
        try:
            await self._connect_websocket()
        except Exception as e:
            await self.push_error(f"cannot open a session on {self._settings.url}: {e}", exception=e)
        # Started even when connecting failed (the receive loop's reconnect retries it),
        # unless the failure was permanent: then there is nothing to retry.
        if self.is_usable and not self._receive_task:
            self._receive_task = self.create_task(self._receive_task_handler(self._report_error))

    async def _disconnect(self):
        await super()._disconnect()
        if self._receive_task:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        await self._disconnect_websocket()

    async def _connect_websocket(self):
        """Open the socket and wait for `ready`; raise on refusal (see `_classify_error`)."""
        if self._websocket and self._websocket.state is State.OPEN:
            return
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        logger.debug(f"{self}: connecting to {self._url()}")
        websocket = await self._websocket_connect(self._url(), additional_headers=headers, max_size=2**22)
        try:
            first = await asyncio.wait_for(websocket.recv(), self._ready_timeout)
            message = parse_server_message(first)
        except ConnectionClosed as e:
            await websocket.close()
            if e.rcvd is not None and e.rcvd.code == CloseCode.POLICY:
                raise WorkerRejected(ErrorCode.UNAUTHORIZED, e.rcvd.reason or "closed with 1008") from e
            raise ConnectionError(f"worker closed the connection before `ready`: {e}") from e
        except asyncio.TimeoutError:
            await websocket.close()
            raise ConnectionError(f"no `ready` from the worker within {self._ready_timeout}s") from None
        if isinstance(message, Error):
            await websocket.close()
            raise WorkerRejected(message.code, message.message)
        if not isinstance(message, Ready):
            await websocket.close()
            raise ConnectionError(f"expected `ready`, got {message}")
        self.worker_session = message
        self._websocket = websocket
        self._closed.clear()
        if message.model and message.model != self._settings.model:
            self._settings.model = message.model
            self._sync_model_name_to_metrics()
        logger.debug(f"{self}: session {message.session_id} on {message.model} ({message.chunk_ms} ms chunks)")
        await self._send_configure(always=False)
        await self._call_event_handler("on_connected")

    async def _disconnect_websocket(self):
        websocket, self._websocket = self._websocket, None
        if websocket is None:
            return
        try:
            if websocket.state is State.OPEN:
                await websocket.close()
        except Exception as e:
            logger.warning(f"{self}: error closing the websocket: {e}")
        finally:
            await self._call_event_handler("on_disconnected")

    async def _drain(self):
        """Send `close` and wait (bounded) for the remaining finals and `closed`."""
        websocket = self._websocket
        if websocket is None or websocket.state is not State.OPEN or self._receive_task is None:
            return
        self._disconnecting = True  # the worker's normal close after `closed` is no reason to reconnect
        try:
            await websocket.send(dump(Close()))
        except Exception as e:
            logger.warning(f"{self}: could not send `close`: {e}")
            return
        closed = asyncio.ensure_future(self._closed.wait())
        # Done on `closed`, or when the receive loop ends (the socket dropped), or on timeout.
        done, _ = await asyncio.wait({closed, self._receive_task}, timeout=self._close_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        if not done:
            logger.warning(f"{self}: no `closed` within {self._close_timeout}s; the last words may be lost")

    def _classify_error(self, exception: Exception) -> ErrorCategory | None:
        if isinstance(exception, WorkerRejected):
            return ERROR_CATEGORIES.get(exception.code, ErrorCategory.UNKNOWN)
        return None

    # ------------------------------------------------------------------ sending

    async def _send_json(self, message) -> bool:
        websocket = self._websocket
        if websocket is None or websocket.state is not State.OPEN:
            return False
        try:
            await websocket.send(dump(message))
            return True
        except Exception as e:
            logger.warning(f"{self}: could not send {message.type}: {e}")
            return False

    async def _send_configure(self, always: bool = True):
        """Send the boost phrases; on connect only when there are some."""
        phrases = boost_phrases(self._settings.boost_phrases if is_given(self._settings.boost_phrases) else [])
        if phrases or always:
            await self._send_json(Configure(boost=phrases))

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Send PCM; transcripts come back on the receive loop."""
        websocket = self._websocket
        if websocket is not None and websocket.state is State.OPEN:
            if self._resampler is not None:
                audio = await self._resampler.resample(audio, self.sample_rate, self._wire_rate)
            if audio:
                try:
                    await websocket.send(audio)
                except Exception as e:
                    logger.warning(f"{self}: send failed, the receive loop will reconnect: {e}")
        yield None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStoppedSpeakingFrame) and self.finalize_on_vad_stop:
            await self._send_finalize()

    async def _send_finalize(self):
        """The user stopped speaking: ask for the utterance now (answered `from_finalize`)."""
        if self._websocket is None or self._websocket.state is not State.OPEN:
            return
        self.request_finalize()
        await self.start_processing_metrics()  # the finalize round trip is a discrete request
        await self._send_json(Finalize())

    # ------------------------------------------------------------------ receiving

    async def _receive_messages(self):
        if self._websocket is None:
            raise ConnectionError("not connected")
        try:
            async for raw in self._websocket:
                if isinstance(raw, bytes):
                    continue
                try:
                    message = parse_server_message(raw)
                except (ProtocolError, ValueError, TypeError) as e:
                    logger.warning(f"{self}: ignoring a message this client does not understand: {e}")
                    continue
                await self._on_message(message)
        except ConnectionClosedError as e:
            if e.rcvd is not None and e.rcvd.code == CloseCode.POLICY and self.is_usable:
                await self.push_error(
                    f"the worker ended the session (1008): {e.rcvd.reason}",
                    category=ErrorCategory.AUTHENTICATION,
                )
            raise

    async def _on_message(self, message):
        if isinstance(message, Partial):
            await self._on_partial(message)
        elif isinstance(message, Final):
            await self._on_final(message)
        elif isinstance(message, Closed):
            self._closed.set()
        elif isinstance(message, Error):
            await self._on_error(message)

    def _language(self) -> Optional[Language]:
        try:
            return Language(self._settings.language)
        except ValueError:
            return None

    async def _on_partial(self, partial: Partial):
        if partial.text:
            await self.push_frame(
                InterimTranscriptionFrame(
                    partial.text, self._user_id, time_now_iso8601(), self._language(), result=partial
                )
            )

    async def _on_final(self, final: Final):
        """Mirrors Deepgram's `from_finalize` handling in Pipecat 1.14."""
        if final.from_finalize:
            self.confirm_finalize()
        if final.text:
            # Usage before the transcript, so tracing can attach it to the span it closes.
            await self.emit_stt_usage_metrics()
            language = self._language()
            await self.push_frame(
                TranscriptionFrame(final.text, self._user_id, time_now_iso8601(), language, result=final)
            )
            await self._trace_transcription(final.text, True, language)
        elif final.from_finalize:
            # The words already went out in an earlier final; report TTFB now.
            await self.stop_ttfb_metrics()
            await self._cancel_ttfb_timeout()
        if final.from_finalize:
            await self.stop_processing_metrics()  # the finalize round trip

    async def _on_error(self, error: Error):
        category = ERROR_CATEGORIES.get(error.code, ErrorCategory.UNKNOWN)
        await self.push_error(f"worker error {error.code}: {error.message}", category=category)

    @traced_stt
    async def _trace_transcription(self, transcript: str, is_final: bool, language: Optional[Language] = None):
        pass
