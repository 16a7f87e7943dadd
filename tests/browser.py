"""Headless Chromium driven over the DevTools protocol (the `websockets` package; nothing else).

`Browser(wav)` starts Chromium with a WAV file as its microphone; `browser.page()` gives a
`Page` to navigate, evaluate JavaScript in and screenshot. Chromium plays the WAV once
(`%noloop`) from when the page opens the microphone.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

import websockets

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> Optional[str]:
    explicit = os.environ.get("NVASR_CHROMIUM")
    if explicit:
        return explicit
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Page:
    """One tab: commands by id over its own DevTools WebSocket, console lines kept for failures."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.console: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if "id" in message:
                future = self.pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
            elif message.get("method") == "Runtime.consoleAPICalled":
                args = message["params"]["args"]
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.console.append(f"EXCEPTION {details.get('exception', {}).get('description', details.get('text'))}")

    async def send(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[msg_id] = future
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply["result"]

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'", timeout=15)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20, poll: float = 0.05) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.evaluate(expression)
            except BrowserError:
                value = None  # e.g. the page is still navigating
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {expression!r}; console: {self.console[-10:]}")
            await asyncio.sleep(poll)

    async def screenshot(self, path: Path) -> Path:
        data = await self.send("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    async def close(self) -> None:
        self.reader.cancel()
        await self.ws.close()


class Browser:
    """A headless Chromium process whose microphone plays `wav` (absolute path) once.

    `allow_mic=False` denies the microphone permission, as a user clicking "Block" would."""

    def __init__(self, wav: Optional[Path] = None, extra_args: tuple[str, ...] = (), size=(1000, 720), allow_mic: bool = True):
        executable = find_chromium()
        if executable is None:
            raise BrowserError("Chromium is not installed")
        self.profile = tempfile.mkdtemp(prefix="nvasr-chromium-")
        args = [
            executable,
            "--headless=new",
            "--no-sandbox",  # needed as root (CI containers); harmless otherwise
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--mute-audio",
            f"--window-size={size[0]},{size[1]}",
            # Allow the microphone without asking, or deny it as a user would.
            "--use-fake-ui-for-media-stream" if allow_mic else "--deny-permission-prompts",
            "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            *extra_args,
        ]
        if wav is not None:
            args.append(f"--use-file-for-fake-audio-capture={Path(wav).resolve()}%noloop")
        args.append("about:blank")
        self.log = Path(tempfile.mkstemp(prefix="nvasr-chromium-", suffix=".log")[1])
        with self.log.open("wb") as log:  # a file, not a pipe: a chatty browser never blocks
            self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
        self.port = self._debugging_port()

    def _debugging_port(self) -> int:
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrowserError(f"Chromium exited: {self.log.read_text(errors='replace')[-2000:]}")
            if marker.exists():
                text = marker.read_text().split()
                if text:
                    return int(text[0])
            time.sleep(0.05)
        raise BrowserError("Chromium did not open its DevTools port")

    async def page(self) -> Page:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as reply:
            targets = json.load(reply)
        target = next(t for t in targets if t["type"] == "page")
        ws = await websockets.connect(target["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024)
        page = Page(ws)
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        return page

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
        self.log.unlink(missing_ok=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
