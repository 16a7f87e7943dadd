"""Real parts for the client-resilience tests: a worker subprocess that can be killed and
restarted on the same port, a TCP proxy that holds the WebSocket upgrade like a
scale-to-zero platform booting a container, and a relay that makes the worker look newer
(extra fields, new message types)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent


async def until(done, timeout: float = 120.0, every: float = 0.02) -> None:
    """Return once `done()` holds (checked every `every` s): for conditions no event marks,
    such as a counter in the server. `timeout` is a safety net that fails the test."""
    async def watch():
        while not done():
            await asyncio.sleep(every)

    await asyncio.wait_for(watch(), timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class WorkerProcess:
    """`python -m services.cli serve nemotron` on a fixed port, as its own process."""

    def __init__(self, model: Path, token: str, port: Optional[int] = None, log: Optional[Path] = None,
                 extra_args: tuple[str, ...] = ()):
        """`log`: a file that gets everything the process prints (stdout and stderr)."""
        self.model, self.token = model, token
        self.port = port or free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.log = open(log if log is not None else os.devnull, "ab")
        self.extra_args = tuple(extra_args)

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> "WorkerProcess":
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "services.cli", "serve", "nemotron", "--model", str(self.model),
               "--device", "cpu", "--port", str(self.port), "--token", self.token, "--max-sessions", "4",
               *self.extra_args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        return self

    async def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds until the port accepts (the app is built before uvicorn binds it)."""
        began = time.monotonic()
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}")
            if time.monotonic() - began > timeout:
                raise TimeoutError("worker did not start")
            await asyncio.sleep(0.2)
        return time.monotonic() - began

    def kill(self) -> None:
        """SIGKILL: a crashed or replaced container; sessions end without a close frame."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (the drain) and wait for the exit; returns the exit status."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=timeout)
        self.log.flush()
        return self.proc.returncode

    def stop(self) -> None:
        self.kill()
        self.log.close()


class HoldingProxy:
    """TCP proxy on 127.0.0.1 that accepts at once but forwards nothing for `hold_s`
    seconds after its first connection, like Modal holding the upgrade during a cold start."""

    def __init__(self, upstream_port: int, hold_s: Optional[float]):
        """`hold_s=None`: hold until the test calls `release()`."""
        self.upstream_port, self.hold_s = upstream_port, hold_s
        self.first_connection: Optional[float] = None
        self.released: Optional[float] = None
        self.connections = 0
        self._server = None
        self._tasks: set[asyncio.Task] = set()
        self._release = asyncio.Event()

    def release(self) -> None:
        self._release.set()

    async def __aenter__(self) -> "HoldingProxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.ws = f"ws://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader, writer):
        task = asyncio.current_task()
        self._tasks.add(task)
        self.connections += 1
        try:
            now = time.monotonic()
            self.first_connection = self.first_connection or now
            if self.hold_s is None:
                await self._release.wait()
            else:
                await asyncio.sleep(max(0.0, self.first_connection + self.hold_s - now))
            self.released = self.released or time.monotonic()
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


class NewerWorkerRelay:
    """A WebSocket relay in front of a real worker that speaks a *newer* protocol v1:
    every server message gains unknown fields, and unknown message types appear before
    `ready` and after every final. Client frames pass through unchanged."""

    greeting = True  # an unknown message type before `ready`

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.added_messages = 0

    async def __aenter__(self) -> "NewerWorkerRelay":
        import websockets

        self._server = await websockets.serve(self._handle, "127.0.0.1", 0, max_size=2**22)
        port = self._server.sockets[0].getsockname()[1]
        self.ws = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _newer(self, text: str) -> list[str]:
        message = json.loads(text)
        message["server_version"] = "1.9.0"
        message["extensions"] = {"diarization": None, "latency_ms": 12}
        if message.get("type") == "final":
            for word in message.get("words", []):
                word["phoneme"] = "?"
        out = [json.dumps(message)]
        if message.get("type") in ("final", "partial"):
            out.append(json.dumps({"type": "turn_stats", "segments": 1, "model_ms": 3.1}))
            self.added_messages += 1
        return out

    async def _handle(self, client):
        import websockets

        headers = {k: v for k, v in client.request.headers.raw_items() if k.lower() == "authorization"}
        async with websockets.connect(self.upstream + client.request.path, additional_headers=headers,
                                      max_size=2**22) as server:
            if self.greeting:
                await client.send(json.dumps({"type": "hello", "features": ["speaker", "language_id"]}))
                self.added_messages += 1

            async def upward():
                async for frame in client:
                    await server.send(frame)

            async def downward():
                async for frame in server:
                    for text in self._newer(frame) if isinstance(frame, str) else [frame]:
                        await client.send(text)
                await client.close()

            tasks = [asyncio.create_task(upward()), asyncio.create_task(downward())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                await asyncio.wait(tasks, timeout=5)
            finally:
                for task in tasks:
                    task.cancel()


class OlderWorkerRelay(NewerWorkerRelay):
    """The same relay making the worker look *older*: `ready` without the fields protocol v1
    added later (`keepalive`, `idle_timeout`, `max_buffer_s`); nothing else changes."""

    greeting = False
    LATER_READY_FIELDS = ("keepalive", "idle_timeout", "max_buffer_s")

    def _newer(self, text: str) -> list[str]:
        message = json.loads(text)
        if message.get("type") == "ready":
            for name in self.LATER_READY_FIELDS:
                message.pop(name, None)
        return [json.dumps(message)]
