"""The session side of a `/v1/listen` service: one task that opens sessions for as long as
the pipeline runs, and the audio that waits while there is none.

`ListenSessionMixin` goes before `WebsocketSTTService` in a service's bases. Pipeline start
never waits for the worker; a cold start, a lost session or a worker restart is retried with
backoff (`reconnect_backoff_min_wait`/`_max_wait`) without end; the user's audio is kept in an
`AudioBacklog` and sent, in order, once `ready` arrives. Only a permanent refusal (bad token,
unsupported language or rate) stops it, as one ErrorFrame. The service supplies `_url()`,
`_check_configuration()`, `_send_configure()` and `_on_message()`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Union

from loguru import logger
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pipecat.utils.errors import ErrorCategory, classify_http_status_code
from pipecat.utils.network import exponential_backoff_time

from ._listen_errors import REFUSAL_CATEGORIES, UnsupportedConfiguration, WorkerRejected
from .protocol import (
    Close,
    CloseCode,
    Error,
    ErrorCode,
    Finalize,
    KeepAlive,
    ProtocolError,
    Ready,
    UnknownMessage,
    dump,
    parse_server_message,
)

STABLE_CONNECTION_S = 10.0  # a session that lasted this long resets the backoff


class ListenSessionMixin:
    """Session lifecycle for `NvasrListenSTTService` (see the module docstring)."""

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
                if lost and self._session_end_reported:
                    reported = True  # the worker's `error` said why: that was this outage's ErrorFrame
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
        self._session_end_reported = False
        self.sessions_opened += 1
        if message.model and message.model != self._settings.model:
            self._settings.model = message.model
            self._sync_model_name_to_metrics()
        logger.debug(f"{self}: session {message.session_id} on {message.model} ({message.chunk_ms} ms chunks)")
        await self._send_configure(always=False)
        self._fit_backlog(message)
        await self._send_backlog(websocket)
        await self._fit_keepalive(message)
        await self._call_event_handler("on_connected")

    def _fit_backlog(self, ready: Ready):
        """Send at most 80 % of the worker's per-session cap at once: more would be cut off
        as `overloaded`, losing all of it (the oldest audio goes first, as when it is kept)."""
        if not ready.max_buffer_s:
            return
        limit = int(ready.max_buffer_s * 0.8 * self._wire_rate) * 2
        dropped = self._backlog.trim(limit)
        if dropped:
            logger.warning(f"{self}: the worker takes {ready.max_buffer_s:g}s of audio at once; dropping the "
                           f"oldest {dropped / 2 / self._wire_rate:.2f}s of the {self._audio_buffer_secs:g}s kept")

    async def _fit_keepalive(self, ready: Ready):
        """Keepalives well inside the idle timeout this worker announced (a third of it)."""
        timeout, interval = self._keepalive_asked
        if timeout is None:
            return
        if ready.idle_timeout:
            timeout = min(timeout, ready.idle_timeout / 3)
            interval = min(interval, timeout / 2)
        if (timeout, interval) != (self._keepalive_timeout, self._keepalive_interval):
            self._keepalive_timeout, self._keepalive_interval = timeout, interval
            await self._cancel_keepalive_task()
            self._create_keepalive_task()

    def _is_keepalive_ready(self) -> bool:
        return self._live and self._websocket is not None

    async def _send_keepalive(self, silence: bytes):
        """`keepalive` to a worker that announced it; to an older one, 100 ms of silence
        at the wire rate (any frame resets its idle timer)."""
        websocket = self._websocket
        if websocket is None:
            return
        if self.worker_session is not None and self.worker_session.keepalive:
            await websocket.send(dump(KeepAlive()))
        else:
            await websocket.send(b"\x00\x00" * (self._wire_rate // 10))
        self.keepalives_sent += 1

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
            if isinstance(item, Finalize):
                self.request_finalize()  # now, so a VAD start since then cannot cancel it
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
            return  # no session: a backlog stays for the next one (or is reported by `stop`)
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
