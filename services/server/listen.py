"""The `/v1/listen` WebSocket: protocol v1 on top of any listen backend.

A backend is the streaming engine (Nemotron, Parakeet realtime) or the VAD segmenter; both
expose open/append/finalize/close/drop and a per-session outbox of protocol messages. This
module only speaks the protocol: auth, validation, resampling, and the two halves of the
socket (client → backend, outbox → client) running concurrently.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional, Protocol

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from pipecat_nvasr.protocol import (
    Close,
    CloseCode,
    Closed,
    Configure,
    Error,
    ErrorCode,
    Finalize,
    SUPPORTED_SAMPLE_RATES,
    ProtocolError,
    Ready,
    dump,
    parse_client_message,
)

from ..engine.session import Overloaded
from .auth import is_authorized
from .metrics import Metrics

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 256 * 1024  # 8 s of 16 kHz audio in one frame is plenty

FATAL_CLOSE = {
    ErrorCode.UNAUTHORIZED: CloseCode.POLICY,
    ErrorCode.OVERLOADED: CloseCode.OVERLOADED,
    ErrorCode.INTERNAL: CloseCode.INTERNAL,
}


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
    """Client rate → model rate, streaming (soxr keeps filter state between frames)."""

    def __init__(self, rate_in: int, rate_out: int):
        import soxr

        self._make = lambda: soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32")
        self._stream = self._make()

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        return self._stream.resample_chunk(samples)

    def flush(self) -> np.ndarray:
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._stream = self._make()
        return tail


async def _send_error(ws: WebSocket, metrics: Metrics, code: str, message: str, close: Optional[int] = None):
    metrics.errors.labels(code=code).inc()
    try:
        await ws.send_text(dump(Error(code, message)))
        if close is not None:
            await ws.close(code=close, reason=message[:120])
    except (WebSocketDisconnect, RuntimeError):
        pass


async def serve_listen(ws: WebSocket, backend: ListenBackend, token: Optional[str], metrics: Metrics) -> None:
    await ws.accept()
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
    if languages and language.split("-")[0].lower() not in languages:
        await _send_error(
            ws, metrics, ErrorCode.BAD_MESSAGE,
            f"language {language!r} is not supported by {backend.model_name}; use one of {list(languages)}",
            CloseCode.UNSUPPORTED,
        )
        return
    try:
        session = backend.open()
    except Overloaded as exc:
        await _send_error(ws, metrics, ErrorCode.OVERLOADED, str(exc), CloseCode.OVERLOADED)
        return

    metrics.sessions.inc()
    metrics.active_sessions.inc()
    resample = _Resampler(rate, backend.sample_rate) if rate != backend.sample_rate else None
    ready = Ready(session.id, backend.model_name, backend.sample_rate, backend.chunk_ms)
    sender = None
    try:
        await ws.send_text(dump(ready))
        sender = asyncio.create_task(_send_outbox(ws, session, metrics))
        receiver = asyncio.create_task(_receive(ws, backend, session, resample, metrics))
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        if receiver in done and receiver.exception() is None and receiver.result():
            await sender  # the client said close: let every final and `closed` go out
        for task in (sender, receiver):
            task.cancel()
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        backend.drop(session)
        metrics.active_sessions.dec()
        metrics.audio_seconds.inc(session.audio_seconds)
        if sender is not None and not sender.done():
            sender.cancel()


async def _receive(ws: WebSocket, backend: ListenBackend, session, resample, metrics: Metrics) -> bool:
    """Client → backend until the client closes (True) or goes away / is cut off (False)."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return False
        data, text = message.get("bytes"), message.get("text")
        if data is not None:
            if session.closing:
                continue  # audio after `close` has nowhere to go
            if len(data) > MAX_FRAME_BYTES:
                await _send_error(
                    ws, metrics, ErrorCode.BAD_AUDIO,
                    f"audio frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}", CloseCode.TOO_BIG,
                )
                return False
            if len(data) % 2:
                await _send_error(
                    ws, metrics, ErrorCode.BAD_AUDIO,
                    "PCM s16le frames need an even number of bytes; this frame was dropped",
                )
                continue
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
            if resample is not None:
                samples = resample(samples)
            try:
                backend.append(session, samples)
            except Overloaded as exc:
                await _send_error(ws, metrics, ErrorCode.OVERLOADED, str(exc), CloseCode.OVERLOADED)
                return False
            continue
        try:
            command = parse_client_message(text or "")
        except ProtocolError as exc:
            await _send_error(ws, metrics, exc.code, exc.message)
            continue
        if isinstance(command, Configure):
            session.boost = command.boost
        elif isinstance(command, (Finalize, Close)):
            if resample is not None:
                backend.append(session, resample.flush())
            if isinstance(command, Finalize):
                backend.finalize(session)
            else:
                backend.close(session)
                return True


async def _send_outbox(ws: WebSocket, session, metrics: Metrics) -> None:
    while True:
        event = await session.outbox.get()
        if isinstance(event, Error):
            close = FATAL_CLOSE.get(event.code)
            await _send_error(ws, metrics, event.code, event.message, close)
            if close is not None:
                return
            continue
        await ws.send_text(dump(event))
        if isinstance(event, Closed):
            if ws.application_state == WebSocketState.CONNECTED:
                await ws.close(code=CloseCode.NORMAL)
            return
