"""The `/v1/listen` WebSocket: protocol v1 on top of any listen backend.

A backend is the streaming engine (Nemotron, Parakeet realtime) or the VAD segmenter; both
expose open/append/finalize/close/drop and a per-session outbox of protocol messages. This
module only speaks the protocol: auth, validation, resampling, and the two halves of the
socket (client → backend, outbox → client) running concurrently.

Hostile or broken clients are bounded here: one reaper task per app ends sessions whose
client sent nothing for `idle_timeout` (`timeout`, close 4408) or stopped reading while
messages pile up (`overloaded`, 1013); `ListenState.drain` ends every session cleanly
(finals, `closed`, close 1012) when the worker shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from pipecat_nvasr.protocol import (
    FATAL_CLOSE,
    Close,
    CloseCode,
    Closed,
    Configure,
    Error,
    ErrorCode,
    Finalize,
    KeepAlive,
    SUPPORTED_SAMPLE_RATES,
    ProtocolError,
    Ready,
    dump,
    parse_client_message,
)

from ..errors import Overloaded, Unavailable
from ..languages import refusal, resolve_locale
from .auth import accepted_subprotocol, is_authorized
from .limits import TokenBucket
from .metrics import Metrics

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 256 * 1024  # 8 s of 16 kHz audio in one frame is plenty
PCM_SCALE = np.float32(1 / 32768)

@dataclass
class ListenSettings:
    idle_timeout: Optional[float] = 60.0  # seconds without any client frame → `timeout`, 4408
    max_pending: int = 256  # messages waiting for a client that does not read → `overloaded`
    reap_interval: float = 0.5  # how often the reaper looks (one task for all sessions)
    give_up_send: float = 2.0  # how long a last error/close may wait on a client that does not read
    configure_burst: int = 5  # `configure`s a session may send in a row...
    configure_per_s: float = 0.5  # ...then this many per second; beyond: `rate_limited`, not applied


class ListenBackend(Protocol):
    model_name: str
    sample_rate: int
    chunk_ms: int

    def open(self): ...
    def append(self, session, samples: np.ndarray) -> None: ...
    def finalize(self, session) -> None: ...
    def close(self, session) -> None: ...
    def drop(self, session) -> None: ...


class _Resampler:
    """Client rate → model rate, streaming: one soxr stream for the whole session.

    A finalize is a pause, not the end of the stream, so the filter state carries across it
    and the model sees exactly the audio it would without the finalize; only `close` flushes
    the filter's tail (a few ms of delay, docs/protocol.md)."""

    def __init__(self, rate_in: int, rate_out: int):
        import soxr

        self._stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32")

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        return self._stream.resample_chunk(samples)

    def flush(self) -> np.ndarray:
        """The last samples; the stream is over after this."""
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


class _Connection:
    """One open session's socket-side state, visible to the reaper and the drain."""

    __slots__ = ("ws", "backend", "session", "resample", "last_rx", "client_closed", "drained", "ending", "tasks",
                 "pending", "coalesce_bytes", "configure_budget", "received")

    def __init__(self, ws: WebSocket, backend: ListenBackend, session, resample, rate: int,
                 settings: Optional[ListenSettings] = None):
        self.ws = ws
        self.backend = backend
        self.session = session
        self.resample = resample
        # Frames are gathered into one chunk of audio before they are converted and handed on:
        # the engine cannot step a stream before it holds a whole chunk, so this costs no
        # latency, and small frames (20 ms) pay the conversion and the append once per chunk.
        self.pending = bytearray()
        self.received = 0  # bytes handed to the backend: where the stream is on its chunk grid
        self.coalesce_bytes = 2 * max(1, rate * int(getattr(backend, "chunk_ms", 0) or 0) // 1000)
        self.last_rx = time.monotonic()
        self.client_closed = False  # the client sent `close`
        self.drained = False  # the worker ended the session to shut down
        self.ending: Optional[Error] = None  # set by the reaper: why the session is cut off
        self.tasks: tuple = ()
        settings = settings or ListenSettings()
        self.configure_budget = TokenBucket(settings.configure_burst, settings.configure_per_s)

    def push_pending(self, data: Optional[bytes] = None) -> None:
        """Hand the gathered frames (or `data`, when nothing is gathered) to the backend;
        raises Overloaded like append."""
        if data is None:
            if not self.pending:
                return
            data, self.pending = self.pending, bytearray()
        self.received += len(data)
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32)
        samples *= PCM_SCALE
        if self.resample is not None:
            samples = self.resample(samples)
        self.backend.append(self.session, samples)

    def gather(self, data: bytes) -> None:
        """Hand audio on once the stream reaches its next chunk boundary, counted from its first
        byte (the engine's chunk grid), not once a chunk's worth is gathered: after a finalize
        flushed part of a chunk, the audio that completes it must not wait for a whole chunk
        more (the engine would pad the chunk at its deadline and the encoder hear the zeros).
        An odd byte waits for its pair. Raises Overloaded like append."""
        chunk = self.coalesce_bytes
        if not self.pending and not len(data) & 1 and self.received % chunk + len(data) >= chunk:
            self.push_pending(data)  # it completes a chunk: no gathering, no copy
            return
        self.pending += data
        if self.received % chunk + len(self.pending) < chunk:
            return
        even = len(self.pending) & ~1
        whole, self.pending = bytes(self.pending[:even]), self.pending[even:]
        self.push_pending(whole)

    def flush_audio(self, end_of_stream: bool = False) -> None:
        """Everything received so far reaches the backend (before a finalize or close); at the
        end of the stream the resampler's tail too."""
        self.push_pending()
        if end_of_stream and self.resample is not None:
            self.backend.append(self.session, self.resample.flush())
            self.resample = None

    def flush_and_close(self) -> None:
        if self.session.closing:
            return
        try:
            self.flush_audio(end_of_stream=True)
        except Overloaded:
            pass  # the close below still flushes what the session holds
        self.backend.close(self.session)

    def cut_off(self, error: Error) -> None:
        if self.ending is None:
            self.ending = error
            for task in self.tasks:
                task.cancel()


class ListenState:
    """Per-app bookkeeping of open sessions: the reaper, the drain, the settings."""

    def __init__(self, settings: Optional[ListenSettings] = None):
        self.settings = settings or ListenSettings()
        self.connections: set[_Connection] = set()
        self.draining = False
        self.cut_off = {"idle": 0, "slow_consumer": 0}
        self._reaper: Optional[asyncio.Task] = None
        self._empty = asyncio.Event()

    def add(self, conn: _Connection) -> None:
        self.connections.add(conn)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    def remove(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._empty.set()

    async def _reap(self) -> None:
        s = self.settings
        while self.connections:
            await asyncio.sleep(s.reap_interval)
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.ending is not None or conn.client_closed or conn.drained:
                    continue
                if conn.session.outbox.qsize() > s.max_pending:
                    self.cut_off["slow_consumer"] += 1
                    conn.cut_off(Error(ErrorCode.OVERLOADED, (
                        f"the client is not reading: more than {s.max_pending} messages wait to be sent")))
                elif s.idle_timeout is not None and now - conn.last_rx > s.idle_timeout:
                    self.cut_off["idle"] += 1
                    conn.cut_off(Error(ErrorCode.TIMEOUT, f"no frame from the client for {s.idle_timeout:g} s"))

    async def drain(self, backend: Optional[ListenBackend], timeout: float) -> int:
        """Refuse new sessions, end the open ones (their finals, `closed`, close 1012);
        returns how many were still open after `timeout` seconds."""
        self.draining = True
        if backend is not None and hasattr(backend, "start_drain"):
            backend.start_drain()
        for conn in list(self.connections):
            if not conn.session.closing:
                conn.drained = True
                conn.flush_and_close()
        if self.connections:
            self._empty.clear()
            try:
                await asyncio.wait_for(self._empty.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        left = len(self.connections)
        for conn in list(self.connections):
            conn.cut_off(Error(ErrorCode.OVERLOADED, "the worker is shutting down"))
        return left


async def _send_error(ws: WebSocket, metrics: Metrics, code: str, message: str, close: Optional[int] = None):
    metrics.errors.labels(code=code).inc()
    try:
        await ws.send_text(dump(Error(code, message)))
        if close is not None:
            await ws.close(code=close, reason=message[:120])
    except (WebSocketDisconnect, RuntimeError):
        pass


async def serve_listen(
    ws: WebSocket, backend: ListenBackend, token: Optional[str], metrics: Metrics, state: Optional[ListenState] = None
) -> None:
    state = state or ListenState()
    await ws.accept(subprotocol=accepted_subprotocol(ws))
    if not is_authorized(ws, token, listen=True):  # short-lived browser tokens too
        await _send_error(ws, metrics, ErrorCode.UNAUTHORIZED, "missing or wrong token", CloseCode.POLICY)
        return
    try:
        rate = int(ws.query_params.get("sample_rate", backend.sample_rate))
    except ValueError:
        rate = -1
    if rate not in SUPPORTED_SAMPLE_RATES:
        await _send_error(
            ws, metrics, ErrorCode.BAD_AUDIO,
            f"unsupported sample_rate; use one of {list(SUPPORTED_SAMPLE_RATES)}", CloseCode.UNSUPPORTED,
        )
        return
    language = ws.query_params.get("language", "en")
    languages = getattr(backend, "languages", None)
    locales = getattr(backend, "locales", ())
    locale = resolve_locale(language, locales) if locales else None
    if locales and locale is None:
        await _send_error(ws, metrics, ErrorCode.BAD_MESSAGE, refusal(language, backend.model_name, locales),
                          CloseCode.UNSUPPORTED)
        return
    if not locales and languages and language.split("-")[0].lower() not in languages:
        await _send_error(
            ws, metrics, ErrorCode.BAD_MESSAGE,
            f"language {language!r} is not supported by {backend.model_name}; use one of {list(languages)}",
            CloseCode.UNSUPPORTED,
        )
        return
    try:
        if state.draining:
            raise Overloaded("this worker is shutting down; connect again (another worker takes it)")
        session = backend.open()
    except Overloaded as exc:
        await _send_error(ws, metrics, ErrorCode.OVERLOADED, str(exc), CloseCode.OVERLOADED)
        return
    except Unavailable as exc:
        await _send_error(ws, metrics, ErrorCode.UNAVAILABLE, str(exc), CloseCode.INTERNAL)
        return

    metrics.sessions.inc()
    metrics.active_sessions.inc()
    resample = _Resampler(rate, backend.sample_rate) if rate != backend.sample_rate else None
    conn = _Connection(ws, backend, session, resample, rate, state.settings)
    state.add(conn)
    # the per-session cap on audio ahead of transcription (engine and segmenter both keep one)
    max_buffer = getattr(session, "max_buffer_samples", None) or getattr(backend, "max_buffer_samples", None)
    ready = Ready(session.id, backend.model_name, backend.sample_rate, backend.chunk_ms, keepalive=True,
                  idle_timeout=state.settings.idle_timeout,
                  max_buffer_s=max_buffer / backend.sample_rate if max_buffer else None)
    if locale is not None:
        session.language = locale
        ready.language, ready.languages = locale, list(locales)
    try:
        await ws.send_text(dump(ready))
        sender = asyncio.create_task(_send_outbox(conn, metrics))
        receiver = asyncio.create_task(_receive(conn, metrics))
        conn.tasks = (sender, receiver)
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        if receiver in done and not receiver.cancelled() and receiver.exception() is None and receiver.result():
            await asyncio.wait({sender})  # the client said close: let every final and `closed` go out
        for task in (sender, receiver):
            task.cancel()
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away (an asyncio.CancelledError of this handler propagates)
    finally:
        for task in conn.tasks:
            task.cancel()
        state.remove(conn)
        backend.drop(session)
        metrics.active_sessions.dec()
        metrics.audio_seconds.inc(session.audio_seconds)
    if conn.ending is not None:  # cut off by the reaper or the drain: tell the client if it listens
        error = conn.ending
        try:
            await asyncio.wait_for(
                _send_error(ws, metrics, error.code, error.message, FATAL_CLOSE.get(error.code)),
                state.settings.give_up_send,
            )
        except asyncio.TimeoutError:
            logger.info("session %s: client did not take its last error; dropping the socket", session.id)


async def _receive(conn: _Connection, metrics: Metrics) -> bool:
    """Client → backend until the client closes (True) or goes away / is cut off (False)."""
    ws, backend, session = conn.ws, conn.backend, conn.session
    while True:
        message = await ws.receive()
        conn.last_rx = time.monotonic()
        data = message.get("bytes")
        if data is not None:
            if session.closing:
                continue  # audio after `close` has nowhere to go
            size = len(data)
            if size > MAX_FRAME_BYTES:
                await _send_error(
                    ws, metrics, ErrorCode.BAD_AUDIO,
                    f"audio frame of {size} bytes exceeds {MAX_FRAME_BYTES}", CloseCode.TOO_BIG,
                )
                return False
            if size & 1:
                await _send_error(
                    ws, metrics, ErrorCode.BAD_AUDIO,
                    "PCM s16le frames need an even number of bytes; this frame was dropped",
                )
                continue
            try:
                conn.gather(data)
            except Overloaded as exc:
                await _send_error(ws, metrics, ErrorCode.OVERLOADED, str(exc), CloseCode.OVERLOADED)
                return False
            continue
        if message["type"] == "websocket.disconnect":
            return False
        try:
            command = parse_client_message(message.get("text") or "")
        except ProtocolError as exc:
            await _send_error(ws, metrics, exc.code, exc.message)
            continue
        if isinstance(command, KeepAlive):
            continue  # `last_rx` above is all it is for
        if isinstance(command, Configure):
            if command.language is not None and not _configure_language(conn, command.language):
                await _send_error(ws, metrics, ErrorCode.BAD_MESSAGE, _language_refusal(backend, command.language))
                continue  # nothing of this configure applies; the session goes on as it was
            if command.boost is not None:
                if not conn.configure_budget.take():
                    s = conn.configure_budget
                    await _send_error(ws, metrics, ErrorCode.RATE_LIMITED, (
                        f"configure ignored: at most {s.burst} in a row, then {s.per_second:g} per second; "
                        f"the next is accepted in {s.wait_s():.1f} s (the previous boost list still applies)"))
                    continue
                configure = getattr(conn.backend, "configure", None)
                if configure is not None:
                    await configure(session, command.boost)  # compiles the phrases off the inference thread
                else:
                    session.boost = command.boost
        elif isinstance(command, (Finalize, Close)):
            if session.closing:
                continue  # the worker is already flushing this session (a drain)
            try:
                conn.flush_audio(end_of_stream=isinstance(command, Close))
            except Overloaded as exc:
                await _send_error(ws, metrics, ErrorCode.OVERLOADED, str(exc), CloseCode.OVERLOADED)
                return False
            if isinstance(command, Finalize):
                backend.finalize(session)
            else:
                conn.client_closed = True
                backend.close(session)
                return True


def _configure_language(conn: _Connection, requested: str) -> bool:
    """A mid-stream language change: from the session's next chunk, same session and stream."""
    locales = getattr(conn.backend, "locales", ())
    locale = resolve_locale(requested, locales) if locales else None
    if locale is None:
        return False
    conn.session.language = locale
    return True


def _language_refusal(backend, requested: str) -> str:
    locales = getattr(backend, "locales", ())
    if not locales:
        return f"{backend.model_name} takes no language per session; 'language' in configure needs a multilingual model"
    return refusal(requested, backend.model_name, locales)


async def _send_outbox(conn: _Connection, metrics: Metrics) -> None:
    ws, outbox = conn.ws, conn.session.outbox
    while True:
        event = await outbox.get()
        if isinstance(event, Error):
            close = FATAL_CLOSE.get(event.code)
            await _send_error(ws, metrics, event.code, event.message, close)
            if close is not None:
                return
            continue
        await ws.send_text(dump(event))
        if isinstance(event, Closed):
            if ws.application_state == WebSocketState.CONNECTED:
                code = CloseCode.SERVICE_RESTART if conn.drained else CloseCode.NORMAL
                await ws.close(code=code)
            return
