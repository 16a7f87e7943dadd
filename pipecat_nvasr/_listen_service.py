"""Shared Pipecat client for the `/v1/listen` protocol (docs/protocol.md).

Every streaming worker (Nemotron, Parakeet realtime) speaks the same protocol, so the
connection, the `ready` handshake, audio sending, boost phrases, the graceful `close`
drain and the error mapping live here once. A concrete service only names its defaults
and, where its model drives the turn itself, overrides `_on_final`.

The connection runs in its own task for as long as the pipeline does (`_listen_session.py`):
pipeline start never waits for the worker, a cold start or a worker restart is retried with
backoff without end, and the user's audio is kept (bounded) while there is no session and
sent once `ready` arrives. Only a permanent refusal (bad token, unsupported language or
rate) stops it, as one ErrorFrame.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from loguru import logger

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
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.time import time_now_iso8601
from pipecat.utils.tracing.service_decorators import traced_stt
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from ._audio_gatherer import AudioGatherer
from ._backlog import AudioBacklog
from ._listen_errors import ERROR_CATEGORIES, UnsupportedConfiguration
from ._listen_session import ListenSessionMixin
from .client import COLD_START_TIMEOUT_S, UnknownTypes, listen_url
from .protocol import (
    SAMPLE_RATE,
    SUPPORTED_SAMPLE_RATES,
    BoostPhrase,
    Closed,
    Configure,
    Error,
    FATAL_CLOSE,
    Final,
    Finalize,
    Partial,
    Ready,
)

# Kept while there is no session, then sent at once: below the worker's per-session cap
# (10 s ahead of transcription, announced in `ready` as `max_buffer_s`), so a catch-up after
# an outage never trips `overloaded` and loses what it was meant to save.
DEFAULT_AUDIO_BUFFER_S = 8.0
# Without audio for this long (a muted STT, a bot that talks), the service tells the worker it
# is still there (`keepalive`), well inside the worker's idle timeout (60 s by default).
DEFAULT_KEEPALIVE_S = 10.0


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
            drains the current session and opens one on the new worker (after the
            user's turn, as Pipecat defers reconnects while the user speaks).
        boost_phrases: Key phrases the model should favour: strings, (phrase, weight)
            pairs or `BoostPhrase`. Changing them sends `configure`; no reconnect.
    """

    url: str | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    boost_phrases: list | NotGiven = field(default_factory=lambda: NOT_GIVEN)


class NvasrListenSTTService(ListenSessionMixin, WebsocketSTTService):
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
        keepalive_timeout: Optional[float] = DEFAULT_KEEPALIVE_S,
        keepalive_interval: float = 5.0,
        audio_gather_fraction: float = 1.0,
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
            this, the oldest audio is dropped (with a warning). A worker that announces its
            per-session cap (`ready.max_buffer_s`) gets at most 80 % of it at once.
        keepalive_timeout: seconds without audio after which the service tells the worker it
            is still there (`keepalive`; silence to a worker that predates it), so a muted STT
            is not cut off by the worker's idle timeout. Shortened to a third of the idle
            timeout a worker announces. `None` turns it off.
        keepalive_interval: how often the service checks (shortened with the timeout).
        languages: base language codes the worker's model transcribes, checked before
            connecting (an unsupported one is a permanent configuration error). `None`
            leaves the check to the worker, which refuses the session just as permanently.
        audio_gather_fraction: audio goes out in messages of this fraction of the worker's
            chunk (`ready.chunk_ms`), on the stream's chunk boundaries, instead of one message
            per pipeline frame; held audio is sent right before every `finalize` and `close`.
            0 sends every frame as it comes.
        **kwargs: for `WebsocketSTTService`, e.g. `reconnect_backoff_min_wait` /
            `reconnect_backoff_max_wait` (seconds between attempts; default 4 and 10).
        """
        store = self.Settings(
            model=None,  # the worker serves one model; its `ready` names it
            language=Language.EN,
            url=url or self.default_url,
            boost_phrases=[],
            **self._store_defaults(),
        )
        if settings is not None:
            store.apply_update(settings)
        super().__init__(sample_rate=sample_rate, settings=store, keepalive_timeout=keepalive_timeout,
                         keepalive_interval=keepalive_interval, **kwargs)
        self._keepalive_asked = (keepalive_timeout, keepalive_interval)
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
        self._session_end_reported = False  # the worker's fatal `error` already became an ErrorFrame
        self._unknown_types = UnknownTypes()
        self._wire_rate = SAMPLE_RATE
        self._resampler = None
        self._gatherer = AudioGatherer()  # chunk-sized messages (_audio_gatherer.py)
        self._gather_fraction = audio_gather_fraction
        self._gathering_for: Optional[Ready] = None  # the session whose chunk grid it counts
        self._backlog_sent_at_switch = 0.0
        self.worker_session: Optional[Ready] = None  # the worker's latest `ready` message
        self.sessions_opened = 0
        self.backlog_seconds_sent = 0.0  # audio kept while there was no session, then sent
        self.keepalives_sent = 0

    def _store_defaults(self) -> dict[str, Any]:
        """Store-mode values of the fields a subclass's Settings adds."""
        return {}

    def can_generate_metrics(self) -> bool:
        return True

    def language_to_service_language(self, language: Language) -> str | None:
        """The BCP-47 tag as given (`es`, `es-ES`, `auto`): an English-only worker checks its base
        code, a multilingual one maps it to its locale (docs/protocol.md has the table)."""
        return str(language.value if isinstance(language, Language) else language)

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
        if self._backlog.bytes:
            logger.warning(f"{self}: ending with {self._backlog.bytes / 2 / self._wire_rate:.2f}s of audio "
                           "the worker never received (no session)")
        await super().stop(frame)

    async def _do_reconnect(self):
        await self._drain()  # a settings change must not drop the audio already sent
        await super()._do_reconnect()

    async def _update_settings(self, delta: STTSettings) -> dict[str, Any]:
        changed = await super()._update_settings(delta)
        live_language = "language" in changed and self._takes_live_language()
        if "url" in changed or ("language" in changed and not live_language):
            await self._request_reconnect()
        else:
            if live_language:
                await self._send_language()
            if "boost_phrases" in changed:
                await self._send_configure()
        self._warn_unhandled_updated_settings(changed.keys() - {"url", "language", "boost_phrases"})
        return changed

    # ------------------------------------------------------------------ connection

    def _language_code(self) -> str:
        return self.language_to_service_language(self._settings.language or Language.EN) or "en"

    def _takes_live_language(self) -> bool:
        """A worker whose model takes a language per session (its `ready` lists `languages`)
        switches in the same session; any other needs a new session in the new language."""
        return self.worker_session is not None and self.worker_session.languages is not None

    def _url(self) -> str:
        return listen_url(str(self._settings.url), self._wire_rate, self._language_code())

    def _check_configuration(self):
        """Refuse locally what the worker would refuse: no connection, no retries."""
        language = self._language_code().split("-")[0].lower()
        if self._languages is not None and language not in self._languages:
            raise UnsupportedConfiguration(
                f"language {self._settings.language!r} is not served by this worker; use one of {list(self._languages)}"
            )

    # ------------------------------------------------------------------ sending (the
    # socket side, `_send_or_keep`, is in `ListenSessionMixin`)

    async def _send_configure(self, always: bool = True):
        """Send the boost phrases; on connect only when there are some."""
        phrases = boost_phrases(self._settings.boost_phrases if is_given(self._settings.boost_phrases) else [])
        if phrases or always:
            await self._send_json(Configure(boost=phrases))

    async def _send_language(self):
        """A live language change: from the worker's next chunk, in this session (no drain, no
        reconnect). Without a session now, the next one opens in the new language anyway."""
        try:
            self._check_configuration()
        except UnsupportedConfiguration as exc:
            await self.push_error(str(exc))
            return
        if self._live:
            await self._send_json(Configure(boost=None, language=self._language_code()))

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Send PCM (or keep it while there is no session); transcripts come back on the
        connection task."""
        if self._resampler is not None:
            audio = await self._resampler.resample(audio, self.sample_rate, self._wire_rate)
        if audio:
            await self._send_gathered(audio)
        yield None

    async def _send_gathered(self, audio: bytes):
        """Send on the worker's chunk boundaries; a new session starts a new chunk grid."""
        session = self.worker_session if self._live else None
        if session is not self._gathering_for:
            await self._flush_gathered()
            backlog = round((self.backlog_seconds_sent - self._backlog_sent_at_switch) * self._wire_rate) * 2
            self._backlog_sent_at_switch = self.backlog_seconds_sent
            self._gatherer.reset(AudioGatherer.chunk_bytes_for(
                session.chunk_ms if session else 0, self._wire_rate, self._gather_fraction))
            self._gatherer.position = backlog if session else 0  # the backlog opened this session's grid
            self._gathering_for = session
        due = self._gatherer.add(audio)
        if due:
            await self._send_or_keep(due)

    async def _flush_gathered(self):
        """What the gatherer holds goes out now (before `finalize` / `close`), in order."""
        held = self._gatherer.flush()
        if held:
            await self._send_or_keep(held)

    async def _drain(self):
        await self._flush_gathered()  # the last audio before `close`
        await super()._drain()

    async def _disconnect_websocket(self):
        await super()._disconnect_websocket()
        await self._flush_gathered()  # no session: held audio joins the backlog, in order
        self._gathering_for = None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStoppedSpeakingFrame) and self.finalize_on_vad_stop:
            await self._send_finalize()

    async def _send_finalize(self):
        """The user stopped speaking: ask for the utterance now (answered `from_finalize`).

        Without a session the request waits in the backlog behind the audio it ends."""
        if not self.is_usable:
            return
        await self._flush_gathered()  # the audio the finalize ends goes first
        if self._live:  # a kept finalize is requested when the backlog sends it
            self.request_finalize()
        await self._send_or_keep(Finalize())

    # ------------------------------------------------------------------ receiving (the loop,
    # `_receive_messages`, is in `ListenSessionMixin`)

    async def _on_message(self, message):
        if isinstance(message, Partial):
            await self._on_partial(message)
        elif isinstance(message, Final):
            await self._on_final(message)
        elif isinstance(message, Closed):
            self._closed.set()
        elif isinstance(message, Error):
            await self._on_error(message)

    def _language(self, message: Optional[Partial | Final] = None) -> Optional[Language]:
        """The transcript's language: what the worker says it transcribed (a multilingual
        worker's locale, detected in `auto` mode), else the requested one."""
        for code in (getattr(message, "language", None), self._language_code()):
            if not code:
                continue
            try:
                return Language(code)
            except ValueError:
                continue
        return None

    def _speaker_user_id(self, message: Partial | Final) -> str:
        """The frame's `user_id`: the transport's user; a multitalker service names the speaker."""
        return self._user_id

    async def _on_partial(self, partial: Partial):
        if partial.text:
            user_id = self._speaker_user_id(partial)
            await self.push_frame(
                InterimTranscriptionFrame(partial.text, user_id, time_now_iso8601(), self._language(partial),
                                          result=partial)
            )

    async def _on_final(self, final: Final):
        """Mirrors Deepgram's `from_finalize` handling in Pipecat 1.14."""
        if final.from_finalize:
            self.confirm_finalize()
        if final.text:
            # Usage before the transcript, so tracing can attach it to the span it closes.
            await self.emit_stt_usage_metrics()
            language = self._language(final)
            user_id = self._speaker_user_id(final)
            await self.push_frame(TranscriptionFrame(final.text, user_id, time_now_iso8601(), language, result=final))
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
        if error.code in FATAL_CLOSE:  # the close that follows is this error, not a second one
            self._session_end_reported = True
        await self.push_error(f"worker error {error.code}: {error.message}", category=category)

    @traced_stt
    async def _trace_transcription(self, transcript: str, is_final: bool, language: Optional[Language] = None):
        pass
