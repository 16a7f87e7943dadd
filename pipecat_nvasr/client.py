"""A small asyncio client for the `/v1/listen` protocol (CLI, tests, scripts).

The Pipecat services speak the same protocol through Pipecat's WebSocket base class; this
client is for everything outside a pipeline.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Optional
from urllib.parse import urlencode

import websockets

from .protocol import LISTEN_PATH, Closed, Ready, ServerMessage, parse_server_message


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
    def __init__(self, url: str, token: Optional[str] = None, sample_rate: int = 16000, language: str = "en"):
        self.url = listen_url(url, sample_rate, language)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.ready: Optional[Ready] = None
        self._ws = None

    async def __aenter__(self) -> "ListenClient":
        self._ws = await websockets.connect(self.url, additional_headers=self.headers, max_size=2**22)
        first = parse_server_message(await self._ws.recv())
        if not isinstance(first, Ready):
            await self._ws.close()
            raise ConnectionError(f"worker refused the session: {first}")
        self.ready = first
        return self

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
                event = parse_server_message(raw)
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
