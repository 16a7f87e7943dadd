"""A lean RFC 6455 WebSocket client for load generation and hostile-client tests.

The `websockets` client costs tens of microseconds per frame; on a 2-core machine that is
CPU the worker under test does not get. This one sends frames that were masked once, up
front (`mask_frames`), with a single `transport.write`, and parses the server's frames
itself — a few microseconds per message. It also lets a test do what a well-behaved
client never would: stop reading (a tiny receive buffer, `pause_reading`), drop the TCP
connection without a close frame, or send arbitrary bytes.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from typing import Callable, Optional

import numpy as np

MASK_KEY = b"\x5a\xc3\x19\x7e"  # any key is valid (RFC 6455 5.3); a fixed one lets frames be masked once
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 1, 2, 8, 9, 10


def frame(opcode: int, payload: bytes) -> bytes:
    """One complete client frame (FIN set, masked with MASK_KEY)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if n:
        key = np.frombuffer(MASK_KEY * (n // 4 + 1), dtype=np.uint8)[:n]
        payload = (np.frombuffer(payload, dtype=np.uint8) ^ key).tobytes()
    return header + MASK_KEY + payload


def mask_frames(pcm: bytes, frame_bytes: int) -> list[bytes]:
    """Cut PCM into binary frames of `frame_bytes`, each ready to write."""
    return [frame(OP_BINARY, pcm[i : i + frame_bytes]) for i in range(0, len(pcm), frame_bytes)]


class RawWebSocket(asyncio.Protocol):
    """One connection. `on_text(text)` is called per text message; `closed` resolves to the
    close code (1006 when the TCP connection ended without a close frame)."""

    def __init__(self, on_text: Optional[Callable[[str], None]] = None):
        self.on_text = on_text or (lambda text: None)
        self.transport: Optional[asyncio.Transport] = None
        self._buffer = bytearray()
        self._handshake: Optional[asyncio.Future] = None
        self.closed: Optional[asyncio.Future] = None
        self.close_code: Optional[int] = None
        self.close_reason = ""
        self.texts: list[str] = []  # kept only when on_text is not given
        if on_text is None:
            self.on_text = self.texts.append

    @classmethod
    async def connect(
        cls, host: str, port: int, path: str, headers: Optional[dict] = None,
        on_text: Optional[Callable[[str], None]] = None, rcvbuf: Optional[int] = None, timeout: float = 30,
    ) -> "RawWebSocket":
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        _, proto = await loop.create_connection(lambda: cls(on_text), sock=sock)
        await asyncio.wait_for(proto._upgrade(host, port, path, headers or {}), timeout)
        return proto

    async def _upgrade(self, host, port, path, headers) -> None:
        loop = asyncio.get_running_loop()
        self._handshake = loop.create_future()
        self.closed = loop.create_future()
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self._handshake

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._handshake is not None and not self._handshake.done():
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._buffer[:end]).split(b"\r\n", 1)[0]
            del self._buffer[: end + 4]
            if b" 101 " not in status + b" ":
                self._handshake.set_exception(ConnectionError(status.decode(errors="replace")))
                self.transport.close()
                return
            self._handshake.set_result(None)
        self._parse()

    def _parse(self) -> None:
        buf = self._buffer
        while len(buf) >= 2:
            opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, offset = struct.unpack_from("!H", buf, 2)[0], 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, offset = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < offset + length:
                return
            payload = bytes(buf[offset : offset + length])
            del buf[: offset + length]
            if opcode == OP_TEXT:
                self.on_text(payload.decode())
            elif opcode == OP_PING:
                self.write(frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.close_code, self.close_reason = code, payload[2:].decode(errors="replace")
                self.write(frame(OP_CLOSE, payload[:2]))
                self.transport.close()

    def connection_lost(self, exc) -> None:
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(ConnectionError("connection closed during the handshake"))
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(self.close_code or 1006)

    # ------------------------------------------------------------------ sending

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_text(self, text: str) -> None:
        self.write(frame(OP_TEXT, text.encode()))

    def send_binary(self, data: bytes) -> None:
        self.write(frame(OP_BINARY, data))

    def close(self, code: int = 1000) -> None:
        self.write(frame(OP_CLOSE, struct.pack("!H", code)))

    def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        if self.transport is not None:
            self.transport.abort()

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and self.close_code is None
