"""Shared Pipecat client for the `/v1/listen` protocol (docs/protocol.md).

Every streaming worker (Nemotron, Parakeet realtime) speaks the same protocol, so the
connection, the `ready` handshake, audio sending, boost phrases, the graceful `close`
drain and the error mapping live here once. A concrete service only names its defaults
and, where its model drives the turn itself, overrides `_on_final`.

The connection runs in its own task for as long as the pipeline does (`_connection_handler`):
pipeline start never waits for the worker, a cold start or a worker restart is retried with
backoff without end, and the user's audio is kept (bounded) while there is no session and
sent once `ready` arrives. Only a permanent refusal (bad token, unsupported language or
rate) stops it, as one ErrorFrame.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from loguru import logger
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InterimTranscriptionFrame,
    StartFrame,
    TranscriptionFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import WebsocketSTTService
from pipecat.transcriptions.language import Language
from pipecat.utils.errors import ErrorCategory, classify_http_status_code
from pipecat.utils.network import exponential_backoff_time
from pipecat.utils.time import time_now_iso8601
from pipecat.utils.tracing.service_decorators import traced_stt
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from .client import COLD_START_TIMEOUT_S, UnknownTypes, listen_url
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
    UnknownMessage,
    dump,
    parse_server_message,
)

# Protocol error codes → Pipecat error categories, for errors inside a session. A
# permanent category (authentication) marks the service unusable.
ERROR_CATEGORIES = {
    ErrorCode.UNAUTHORIZED: ErrorCategory.AUTHENTICATION,
    ErrorCode.OVERLOADED: ErrorCategory.RATE_LIMIT,  # retry later or elsewhere
    ErrorCode.INTERNAL: ErrorCategory.SERVER,
    ErrorCode.BAD_AUDIO: ErrorCategory.APPLICATION,
    ErrorCode.BAD_MESSAGE: ErrorCategory.APPLICATION,
}
# The same codes as the answer to opening a session (before `ready`): the worker refused
# the session's configuration (rate, language), which no retry will change.
REFUSAL_CATEGORIES = {
    **ERROR_CATEGORIES,
    ErrorCode.BAD_AUDIO: ErrorCategory.INVALID_REQUEST,
    ErrorCode.BAD_MESSAGE: ErrorCategory.INVALID_REQUEST,
}
DEFAULT_AUDIO_BUFFER_S = 10.0
STABLE_CONNECTION_S = 10.0  # a session that lasted this long resets the backoff


class WorkerRejected(Exception):
    """The worker refused or ended the session with a protocol error code."""

    def __init__(self, code: str, message: str, category: Optional[ErrorCategory] = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.category = category or ERROR_CATEGORIES.get(code, ErrorCategory.UNKNOWN)


class UnsupportedConfiguration(ValueError):
    """The service's own settings name something the worker cannot serve (checked locally)."""


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


class AudioBacklog:
    """Audio (and `finalize` marks) waiting for a session, oldest dropped past `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.items: deque[Union[bytes, Finalize]] = deque()
        self.bytes = 0
        self.dropped_bytes = 0  # since the last `clear_counters`

    def add(self, item: Union[bytes, Finalize]) -> int:
        """Queue an item; returns how many bytes of the oldest audio had to go."""
        self.items.append(item)
        if isinstance(item, bytes):
            self.bytes += len(item)
        dropped = 0
        while self.bytes > self.max_bytes:
            index = next(i for i, x in enumerate(self.items) if isinstance(x, bytes))
            oldest = self.items[index]
            del self.items[index]
            self.bytes -= len(oldest)
            dropped += len(oldest)
        self.dropped_bytes += dropped
        return dropped

    def popleft(self) -> Union[bytes, Finalize]:
        item = self.items.popleft()
        if isinstance(item, bytes):
            self.bytes -= len(item)
        return item

    def pushback(self, item: Union[bytes, Finalize]) -> None:
        self.items.appendleft(item)
        if isinstance(item, bytes):
            self.bytes += len(item)

    def clear(self) -> None:
        self.items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class NvasrListenSettings(STTSettings):
    """Runtime-updatable settings of a `/v1/listen` service.

    Parameters:
        url: The worker's base URL (`ws(s)://` or `http(s)://host[:port]`). Changing it
            drains the current session and opens one on the new worker (after the
            user's turn, as Pipecat defers reconnects while the user speaks).
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
    `Final` (words with times) as `result`. Latency is reported as TTFB (speech end →
    final), as for every Pipecat streaming STT.

    Event handlers: `on_connected` (each session opened, also after a reconnect),
    `on_disconnected`, `on_connection_error(service, message)` (each failed attempt or
    lost session; the service keeps retrying unless the error is permanent).
    """

    Settings = NvasrListenSettings
    _settings: NvasrListenSettings

    # Send `finalize` on VAD stop. A service whose model ends turns itself turns it off.
    finalize_on_vad_stop: bool = True
    default_url: str = "ws://127.0.0.1:8000"
    # Languages the worker's model transcribes (base codes), checked before connecting.
    default_languages: Optional[tuple[str, ...]] = ("en",)

    def __init__(
        self,
        *,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        sample_rate: Optional[int] = None,
        settings: Optional[NvasrListenSettings] = None,
        connect_timeout: float = COLD_START_TIMEOUT_S,
        ready_timeout: float = COLD_START_TIMEOUT_S,
        close_timeout: float = 5.0,
        audio_buffer_secs: float = DEFAULT_AUDIO_BUFFER_S,
        languages: Optional[Sequence[str]] | NotGiven = NOT_GIVEN,
        **kwargs,
    ):
        """Args:
        url: the worker's base URL (shorthand for `settings.url`).
        api_key: the worker's token, sent as `Authorization: Bearer`.
        sample_rate: input rate; default the pipeline's.
        settings: runtime-updatable settings; they win over `url`.
        connect_timeout: seconds to wait for the WebSocket upgrade. A scale-to-zero
            deployment holds the upgrade while a container boots (~1 minute on Modal).
        ready_timeout: seconds to wait for the worker's `ready` after the upgrade.
        close_timeout: seconds to wait on `close` for the last finals and `closed`.
        audio_buffer_secs: how much of the user's audio is kept while there is no session
            (connecting, cold start, reconnecting); it is sent once `ready` arrives. Past
            this, the oldest audio is dropped (with a warning).
        languages: base language codes the worker's model transcribes, checked before
            connecting (an unsupported one is a permanent configuration error). `None`
            leaves the check to the worker, which refuses the session just as permanently.
        **kwargs: for `WebsocketSTTService`, e.g. `reconnect_backoff_min_wait` /
            `reconnect_backoff_max_wait` (seconds between attempts; default 4 and 10).
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
        self._connect_timeout = connect_timeout
        self._ready_timeout = ready_timeout
        self._close_timeout = close_timeout
        self._audio_buffer_secs = audio_buffer_secs
        self._languages = self.default_languages if not is_given(languages) else languages
        self._connection_task: Optional[asyncio.Task] = None
        self._live = False  # a session is open and the backlog is sent: audio goes straight out
        self._backlog = AudioBacklog(0)
        self._closed = asyncio.Event()
        self._unknown_types = UnknownTypes()
        self._wire_rate = SAMPLE_RATE
        self._resampler = None
        self.worker_session: Optional[Ready] = None  # the worker's latest `ready` message
        self.sessions_opened = 0
        self.backlog_seconds_sent = 0.0  # audio kept while there was no session, then sent

    def can_generate_metrics(self) -> bool:
        return True

    def language_to_service_language(self, language: Language) -> str | None:
        """The worker takes base codes: `en-US` → `en`."""
        return str(language.value if isinstance(language, Language) else language).split("-")[0].lower()

    # ------------------------------------------------------------------ lifecycle

    async def start(self, frame: StartFrame):
        await super().start(frame)
        if self.sample_rate in SUPPORTED_SAMPLE_RATES:
            self._wire_rate = self.sample_rate
        else:  # a rate the worker does not take: resample here, to the model rate
            self._wire_rate = SAMPLE_RATE
            self._resampler = create_stream_resampler()
        self._backlog.max_bytes = int(self._audio_buffer_secs * self._wire_rate) * 2
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

    def _language_code(self) -> str:
        return self.language_to_service_language(self._settings.language or Language.EN) or "en"

    def _url(self) -> str:
        return listen_url(str(self._settings.url), self._wire_rate, self._language_code())

    def _check_configuration(self):
        """Refuse locally what the worker would refuse: no connection, no retries."""
        language = self._language_code()
        if self._languages is not None and language not in self._languages:
            raise UnsupportedConfiguration(
                f"language {self._settings.language!r} is not served by this worker; use one of {list(self._languages)}"
            )

    async def _connect(self):
        """Start the connection task; never waits for the worker (pipeline start goes on)."""
        await super()._connect()
        if self._connection_task is None and self.is_usable:
            self._connection_task = self.create_task(self._connection_handler(), "nvasr_connection")

    async def _disconnect(self):
        await super()._disconnect()
        self._live = False
        if self._connection_task:
            await self.cancel_task(self._connection_task)
            self._connection_task = None
        await self._disconnect_websocket()

    async def _connection_handler(self):
        """Open sessions for as long as the pipeline runs; back off between failures."""
        failures, reported = 0, False
        while self.is_usable and not self._disconnecting:
            opened_at = None
            try:
                await self._connect_websocket()
                opened_at = time.monotonic()
                if reported:
                    logger.info(f"{self}: session reopened after {failures + 1} attempts")
                reported = False
                await self._receive_messages()
                if self._disconnecting or not self.is_usable:
                    return
                raise ConnectionError("the worker closed the session")
            except Exception as e:
                if self._disconnecting or not self.is_usable:
                    return
                lost = opened_at is not None
                await self._disconnect_websocket()
                category = self._classify_error(e)
                if category is not None and category.is_permanent:
                    self._backlog.clear()
                    await self.push_error(f"cannot use the worker at {self._settings.url}: {e}", exception=e,
                                          category=category)
                    return
                what = "lost the session" if lost else "cannot open a session"
                message = f"{what} on {self._settings.url} ({e}); retrying, the audio is kept"
                await self._call_event_handler("on_connection_error", message)
                if not reported:  # one ErrorFrame per outage; each retry is logged
                    reported = True
                    await self.push_error(message, exception=e, category=category)
                else:
                    logger.warning(f"{self}: attempt {failures + 1} failed: {e}")
            stable = opened_at is not None and time.monotonic() - opened_at >= STABLE_CONNECTION_S
            failures = 0 if stable else failures + 1
            if failures:
                await asyncio.sleep(exponential_backoff_time(
                    failures, self._reconnect_backoff_min_wait, self._reconnect_backoff_max_wait))

    async def _connect_websocket(self):
        """Open the socket, wait for `ready`, send the backlog; raise on refusal."""
        self._check_configuration()
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        logger.debug(f"{self}: connecting to {self._url()}")
        websocket = await self._websocket_connect(
            self._url(), additional_headers=headers, max_size=2**22, open_timeout=self._connect_timeout
        )
        try:
            message = await asyncio.wait_for(self._first_known_message(websocket), self._ready_timeout)
        except ConnectionClosed as e:
            await websocket.close()
            if e.rcvd is not None and e.rcvd.code == CloseCode.POLICY:
                raise WorkerRejected(ErrorCode.UNAUTHORIZED, e.rcvd.reason or "closed with 1008") from e
            raise ConnectionError(f"worker closed the connection before `ready`: {e}") from e
        except asyncio.TimeoutError:
            await websocket.close()
            raise ConnectionError(f"no `ready` from the worker within {self._ready_timeout}s") from None
        except BaseException:
            await websocket.close()
            raise
        if isinstance(message, Error):
            await websocket.close()
            raise WorkerRejected(message.code, message.message, REFUSAL_CATEGORIES.get(message.code))
        if not isinstance(message, Ready):
            await websocket.close()
            raise ConnectionError(f"expected `ready`, got {message}")
        self.worker_session = message
        self._websocket = websocket
        self._closed.clear()
        self.sessions_opened += 1
        if message.model and message.model != self._settings.model:
            self._settings.model = message.model
            self._sync_model_name_to_metrics()
        logger.debug(f"{self}: session {message.session_id} on {message.model} ({message.chunk_ms} ms chunks)")
        await self._send_configure(always=False)
        await self._send_backlog(websocket)
        await self._call_event_handler("on_connected")

    async def _first_known_message(self, websocket):
        while True:
            message = self._parse(await websocket.recv())
            if message is not None:
                return message

    async def _send_backlog(self, websocket):
        """Audio kept while there was no session goes out first, in order, then live audio."""
        sent = 0
        while self._backlog:
            item = self._backlog.popleft()
            try:
                await websocket.send(item if isinstance(item, bytes) else dump(item))
            except Exception:
                self._backlog.pushback(item)
                raise
            sent += len(item) if isinstance(item, bytes) else 0
        self._live = True  # no await between the empty check and this: nothing overtakes the backlog
        if sent:
            seconds = sent / 2 / self._wire_rate
            self.backlog_seconds_sent += seconds
            logger.info(f"{self}: sent {seconds:.2f}s of audio kept while there was no session")
        self._backlog.dropped_bytes = 0

    async def _disconnect_websocket(self):
        self._live = False
        websocket, self._websocket = self._websocket, None
        if websocket is None:
            return
        try:
            await websocket.close()
        except Exception as e:
            logger.warning(f"{self}: error closing the websocket: {e}")
        finally:
            await self._call_event_handler("on_disconnected")

    async def _drain(self):
        """Send `close` and wait (bounded) for the remaining finals and `closed`."""
        websocket, task = self._websocket, self._connection_task
        if not self._live or websocket is None or task is None:
            if self._backlog.bytes:
                logger.warning(f"{self}: ending with {self._backlog.bytes / 2 / self._wire_rate:.2f}s of audio "
                               "the worker never received (no session)")
            return
        self._disconnecting = True  # the worker's normal close after `closed` is no reason to reconnect
        self._live = False
        try:
            await websocket.send(dump(Close()))
        except Exception as e:
            logger.warning(f"{self}: could not send `close`: {e}")
            return
        closed = asyncio.ensure_future(self._closed.wait())
        # Done on `closed`, or when the connection task ends (the socket dropped), or on timeout.
        done, _ = await asyncio.wait({closed, task}, timeout=self._close_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        if not done:
            logger.warning(f"{self}: no `closed` within {self._close_timeout}s; the last words may be lost")

    def _classify_error(self, exception: Exception) -> ErrorCategory | None:
        if isinstance(exception, WorkerRejected):
            return exception.category
        if isinstance(exception, UnsupportedConfiguration):
            return ErrorCategory.INVALID_REQUEST
        if isinstance(exception, InvalidStatus):  # refused at the HTTP upgrade (e.g. a proxy's 401)
            return classify_http_status_code(exception.response.status_code)
        if isinstance(exception, ConnectionClosed) and exception.rcvd is not None:
            if exception.rcvd.code == CloseCode.POLICY:
                return ErrorCategory.AUTHENTICATION
        if isinstance(exception, (ConnectionError, OSError, asyncio.TimeoutError, ConnectionClosed)):
            return ErrorCategory.CONNECTIVITY
        return None

    # ------------------------------------------------------------------ sending

    async def _send_json(self, message) -> bool:
        websocket = self._websocket
        if websocket is None:
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
        """Send PCM (or keep it while there is no session); transcripts come back on the
        connection task."""
        if self._resampler is not None:
            audio = await self._resampler.resample(audio, self.sample_rate, self._wire_rate)
        if audio:
            await self._send_or_keep(audio)
        yield None

    async def _send_or_keep(self, item: Union[bytes, Finalize]):
        websocket = self._websocket
        if self._live and websocket is not None:
            try:
                await websocket.send(item if isinstance(item, bytes) else dump(item))
                return
            except Exception as e:  # the connection task sees the drop and reconnects
                logger.warning(f"{self}: send failed, keeping the audio for the next session: {e}")
                self._live = False
        dropped = self._backlog.add(item)
        if dropped and self._backlog.dropped_bytes == dropped:  # the first drop of this outage
            logger.warning(
                f"{self}: no session for over {self._audio_buffer_secs:.0f}s of audio; dropping the oldest"
            )

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStoppedSpeakingFrame) and self.finalize_on_vad_stop:
            await self._send_finalize()

    async def _send_finalize(self):
        """The user stopped speaking: ask for the utterance now (answered `from_finalize`).

        Without a session the request waits in the backlog behind the audio it ends."""
        if not self.is_usable:
            return
        self.request_finalize()
        await self._send_or_keep(Finalize())

    # ------------------------------------------------------------------ receiving

    def _parse(self, raw):
        """A known server message, or None (binary, unknown type — logged once — or malformed)."""
        if isinstance(raw, bytes):
            return None
        try:
            message = parse_server_message(raw)
        except ProtocolError as e:
            logger.warning(f"{self}: ignoring a malformed server message: {e}")
            return None
        if isinstance(message, UnknownMessage):
            if self._unknown_types.first_time(message):
                logger.warning(f"{self}: skipping server messages of unknown type {message.kind!r} (a newer worker?)")
            return None
        return message

    async def _receive_messages(self):
        """Handle the session's messages until the socket closes (returns or raises)."""
        websocket = self._websocket
        if websocket is None:
            raise ConnectionError("not connected")
        async for raw in websocket:
            message = self._parse(raw)
            if message is not None:
                await self._on_message(message)

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
            return Language(self._language_code())
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
        if final.from_finalize and self._need_reconnect:
            # A `url`/`language` change waits for the user's turn to end; Pipecat learns that
            # from UserStoppedSpeakingFrame, which a pipeline without a user aggregator (the
            # example bots) never sees. The finalize answer is as safe a point: every word
            # sent so far is out. Its own task: the drain waits on this receive loop.
            self.create_task(self._maybe_reconnect_on_user_stopped_speaking(), "nvasr_deferred_reconnect")

    async def _on_error(self, error: Error):
        category = ERROR_CATEGORIES.get(error.code, ErrorCategory.UNKNOWN)
        await self.push_error(f"worker error {error.code}: {error.message}", category=category)

    @traced_stt
    async def _trace_transcription(self, transcript: str, is_final: bool, language: Optional[Language] = None):
        pass
