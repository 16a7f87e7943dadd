"""A small asyncio client for the `/v1/listen` protocol (CLI, tests, scripts).

The Pipecat services speak the same protocol through Pipecat's WebSocket base class; this
client is for everything outside a pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Optional
from urllib.parse import urlencode

import websockets

from .protocol import LISTEN_PATH, Closed, Ready, ServerMessage, UnknownMessage, parse_server_message

log = logging.getLogger(__name__)

# A scale-to-zero deployment (Modal) holds the WebSocket upgrade while a container boots,
# which takes about a minute: the defaults wait that long for the upgrade and for `ready`.
COLD_START_TIMEOUT_S = 90.0


class UnknownTypes:
    """Remembers which unknown server message types were already logged (log each once)."""

    def __init__(self):
        self.seen: set[str] = set()

    def first_time(self, message: UnknownMessage) -> bool:
        if message.kind in self.seen:
            return False
        self.seen.add(message.kind)
        return True


def listen_url(base_url: str, sample_rate: int = 16000, language: str = "en", token: Optional[str] = None) -> str:
    """`ws(s)://host[:port]` (or http(s)) plus the listen path and query."""
    base = base_url.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[len("http"):]
    if not base.endswith(LISTEN_PATH):
        base += LISTEN_PATH
    query = {"sample_rate": sample_rate, "language": language}
    if token:
        query["token"] = token
    return f"{base}?{urlencode(query)}"


class ListenClient:
    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        sample_rate: int = 16000,
        language: str = "en",
        open_timeout: float = COLD_START_TIMEOUT_S,
        ready_timeout: float = COLD_START_TIMEOUT_S,
    ):
        self.url = listen_url(url, sample_rate, language)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.open_timeout = open_timeout
        self.ready_timeout = ready_timeout
        self.ready: Optional[Ready] = None
        self._ws = None
        self._unknown = UnknownTypes()

    async def __aenter__(self) -> "ListenClient":
        self._ws = await websockets.connect(
            self.url, additional_headers=self.headers, max_size=2**22, open_timeout=self.open_timeout
        )
        try:
            first = await asyncio.wait_for(self._first_known(), self.ready_timeout)
        except BaseException:
            await self._ws.close()
            raise
        if not isinstance(first, Ready):
            await self._ws.close()
            raise ConnectionError(f"worker refused the session: {first}")
        self.ready = first
        return self

    async def _first_known(self):
        while True:
            message = self._skip_unknown(parse_server_message(await self._ws.recv()))
            if message is not None:
                return message

    def _skip_unknown(self, message):
        """None for a message type this client does not know (logged once per type)."""
        if isinstance(message, UnknownMessage):
            if self._unknown.first_time(message):
                log.warning("skipping server messages of unknown type %r (a newer worker?)", message.kind)
            return None
        return message

    async def __aexit__(self, *exc) -> None:
        await self._ws.close()

    async def send_audio(self, pcm: bytes) -> None:
        await self._ws.send(pcm)

    async def send_json(self, text: str) -> None:
        await self._ws.send(text)

    async def finalize(self) -> None:
        await self._ws.send('{"type": "finalize"}')

    async def close(self) -> None:
        await self._ws.send('{"type": "close"}')

    async def events(self) -> AsyncIterator[ServerMessage]:
        """Server messages until `closed` (included) or the socket ends."""
        try:
            async for raw in self._ws:
                event = self._skip_unknown(parse_server_message(raw))
                if event is None:
                    continue
                yield event
                if isinstance(event, Closed):
                    return
        except websockets.ConnectionClosed:
            return


async def stream_pcm(
    client: ListenClient, pcm: bytes, sample_rate: int = 16000, frame_ms: int = 20, realtime: bool = True
) -> None:
    """Send 16-bit PCM in frames (paced like a microphone if `realtime`), then `close`."""
    frame = int(sample_rate * frame_ms / 1000) * 2
    for start in range(0, len(pcm), frame):
        await client.send_audio(pcm[start : start + frame])
        await asyncio.sleep(frame_ms / 1000 if realtime else 0)
    await client.close()
