"""Other vendors' streaming protocols on the same listen backend as `/v1/listen`.

A *dialect* (deepgram_live.py, deepgram_flux.py, openai_realtime.py) translates one
protocol: its handshake parameters, its client messages into audio / finalize / close /
boost, and the backend's events (partials, finals, closed, errors) into its own messages.
This module runs the socket around it, with listen.py's pieces: the same connection record
(so the reaper and the drain see these sessions), the same streaming resampler, the same
backend calls. What differs from `/v1/listen` is only the handshake: everything a client can
get wrong before audio flows (a bad key, a parameter the worker cannot honour, a full
worker) is refused with an HTTP status *before* the socket is accepted, because that is
where those clients look for it (the Deepgram SDK raises `ApiError(401)`, which Pipecat
treats as permanent; accepting and then closing makes it retry forever).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from starlette.datastructures import QueryParams
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from pipecat_nvasr.protocol import BoostPhrase, Closed, CloseCode, Error, ErrorCode, Final, Partial

from ..engine.session import Overloaded
from .auth import accepts
from .compat_auth import compat_credential
from .listen import FATAL_CLOSE, MAX_FRAME_BYTES, ListenBackend, ListenState, _Connection, _Resampler
from .metrics import Metrics

logger = logging.getLogger(__name__)

MIN_RATE, MAX_RATE = 8000, 192000  # any rate in between is resampled to the model's


class Refused(Exception):
    """A handshake the worker turns down: HTTP `status` with `message`, before accepting."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Reaction:
    """What one client message asks of the backend, and what to answer at once."""

    audio: Optional[bytes] = None  # PCM s16le at the dialect's rate
    finalize: bool = False
    close: bool = False
    boost: Optional[list[BoostPhrase]] = None
    replies: list[dict] = field(default_factory=list)
    error: Optional[str] = None  # a bad message: answered with the dialect's error, the session goes on


class Dialect:
    """One protocol's translation; a fresh instance per session (it may keep per-session state)."""

    rate: int = 16000  # the client's sample rate
    boost: tuple[BoostPhrase, ...] | list[BoostPhrase] = ()  # key phrases from the handshake

    def opened(self, session) -> list[dict]:
        return []

    def on_bytes(self, data: bytes) -> Reaction:
        return Reaction(audio=data)

    def on_text(self, text: str) -> Reaction:
        raise NotImplementedError

    def on_event(self, event: Partial | Final) -> list[dict]:
        raise NotImplementedError

    def on_closed(self) -> list[dict]:
        return []

    def on_error(self, code: str, message: str) -> dict:
        raise NotImplementedError


def parse_json_object(text: str) -> Optional[dict]:
    try:
        data = json.loads(text)
    except (ValueError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def parse_rate(params: QueryParams, key: str, default: int) -> int:
    raw = params.get(key)
    if raw is None:
        return default
    try:
        rate = int(raw)
    except ValueError:
        rate = -1
    if not MIN_RATE <= rate <= MAX_RATE:
        raise Refused(400, f"{key} must be an integer from {MIN_RATE} to {MAX_RATE} Hz, not {raw!r}")
    return rate


def check_language(backend: ListenBackend, language: Optional[str]) -> None:
    languages = getattr(backend, "languages", None)
    if language and languages and language.split("-")[0].lower() not in languages:
        raise Refused(400, f"language {language!r} is not supported by {backend.model_name}; "
                           f"use one of {list(languages)}")


_DENIAL_CODES = {401: ErrorCode.UNAUTHORIZED, 400: ErrorCode.BAD_MESSAGE, 503: ErrorCode.OVERLOADED}


async def _deny(ws: WebSocket, metrics: Metrics, status: int, body: dict) -> None:
    """An HTTP answer to the upgrade request instead of a socket (uvicorn's denial-response extension)."""
    metrics.errors.labels(code=_DENIAL_CODES.get(status, ErrorCode.BAD_MESSAGE)).inc()
    headers = {"WWW-Authenticate": "Token"} if status == 401 else None
    await ws.send_denial_response(JSONResponse(body, status_code=status, headers=headers))


async def serve_dialect(
    ws: WebSocket,
    backend: ListenBackend,
    token: Optional[str],
    metrics: Metrics,
    state: ListenState,
    make_dialect: Callable[[QueryParams, ListenBackend], Dialect],
    denial: Callable[[int, str], dict],
) -> None:
    """One session of a compatible protocol: handshake checks, then the two socket halves."""
    given, subprotocol = compat_credential(ws)
    if not accepts(given, token, listen=True):
        return await _deny(ws, metrics, 401, denial(401, "missing or wrong key"))
    try:
        dialect = make_dialect(ws.query_params, backend)
        if state.draining:
            raise Refused(503, "this worker is shutting down; connect again (another worker takes it)")
        try:
            session = backend.open()
        except Overloaded as exc:
            raise Refused(503, str(exc)) from None
    except Refused as refused:
        return await _deny(ws, metrics, refused.status, denial(refused.status, refused.message))
    if dialect.boost:
        session.boost = list(dialect.boost)

    conn = _Connection(ws, backend, session, None, dialect.rate)
    if dialect.rate != backend.sample_rate:
        conn.resample = _Resampler(dialect.rate, backend.sample_rate)
    metrics.sessions.inc()
    metrics.active_sessions.inc()
    state.add(conn)
    try:
        await ws.accept(subprotocol=subprotocol)
        for message in dialect.opened(session):
            await ws.send_json(message)
        sender = asyncio.create_task(_send_events(conn, dialect, metrics))
        receiver = asyncio.create_task(_receive(conn, dialect, metrics))
        conn.tasks = (sender, receiver)
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        if receiver in done and not receiver.cancelled() and receiver.exception() is None and receiver.result():
            await sender  # the client closed the stream: let every result go out
    except (WebSocketDisconnect, RuntimeError, asyncio.CancelledError):
        pass
    finally:
        for task in conn.tasks:
            task.cancel()
        state.remove(conn)
        backend.drop(session)
        metrics.active_sessions.dec()
        metrics.audio_seconds.inc(session.audio_seconds)
    if conn.ending is not None:  # cut off by the reaper or the drain
        try:
            await asyncio.wait_for(_send_error(conn, dialect, metrics, conn.ending, close=True),
                                   state.settings.give_up_send)
        except asyncio.TimeoutError:
            logger.info("session %s: client did not take its last error; dropping the socket", session.id)


async def _send_error(conn: _Connection, dialect: Dialect, metrics: Metrics, error: Error, close: bool) -> None:
    metrics.errors.labels(code=error.code).inc()
    try:
        await conn.ws.send_json(dialect.on_error(error.code, error.message))
        code = FATAL_CLOSE.get(error.code) if close else None
        if code is not None:
            await conn.ws.close(code=code, reason=error.message[:120])
    except (WebSocketDisconnect, RuntimeError):
        pass


async def _receive(conn: _Connection, dialect: Dialect, metrics: Metrics) -> bool:
    """Client → backend until the client closes the stream (True) or goes away (False)."""
    ws, backend, session = conn.ws, conn.backend, conn.session
    while True:
        message = await ws.receive()
        conn.last_rx = time.monotonic()
        if message["type"] == "websocket.disconnect":
            return False
        data = message.get("bytes")
        reaction = dialect.on_bytes(data) if data is not None else dialect.on_text(message.get("text") or "")
        for reply in reaction.replies:
            await ws.send_json(reply)
        if reaction.error is not None:
            await _send_error(conn, dialect, metrics, Error(ErrorCode.BAD_MESSAGE, reaction.error), close=False)
        if reaction.boost is not None:
            session.boost = reaction.boost
        try:
            if reaction.audio and not session.closing:
                if len(reaction.audio) > MAX_FRAME_BYTES:
                    error = Error(ErrorCode.BAD_AUDIO, f"an audio frame of {len(reaction.audio)} bytes exceeds "
                                                       f"{MAX_FRAME_BYTES}")
                    await _send_error(conn, dialect, metrics, error, close=False)
                    await ws.close(code=CloseCode.TOO_BIG, reason=error.message)
                    return False
                conn.gather(reaction.audio)
            if (reaction.finalize or reaction.close) and not session.closing:
                if len(conn.pending) & 1:
                    conn.pending = conn.pending[:-1]  # half a sample at the end of the stream
                conn.flush_audio()
                if reaction.close:
                    conn.client_closed = True
                    backend.close(session)
                    return True
                backend.finalize(session)
        except Overloaded as exc:
            await _send_error(conn, dialect, metrics, Error(ErrorCode.OVERLOADED, str(exc)), close=True)
            return False


async def _send_events(conn: _Connection, dialect: Dialect, metrics: Metrics) -> None:
    ws, outbox = conn.ws, conn.session.outbox
    while True:
        event = await outbox.get()
        if isinstance(event, Error):
            await _send_error(conn, dialect, metrics, event, close=True)
            if FATAL_CLOSE.get(event.code) is not None:
                return
            continue
        if isinstance(event, Closed):
            for message in dialect.on_closed():
                await ws.send_json(message)
            if ws.application_state == WebSocketState.CONNECTED:
                await ws.close(code=CloseCode.SERVICE_RESTART if conn.drained else CloseCode.NORMAL)
            return
        for message in dialect.on_event(event):
            await ws.send_json(message)
