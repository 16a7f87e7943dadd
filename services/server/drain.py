"""Run an app under uvicorn with a graceful drain on SIGTERM/SIGINT.

Uvicorn's own shutdown fails every open WebSocket with 1012 at once: callers mid-sentence
lose their last words. Here the first signal stops accepting connections, ends every open
session the way a client `close` would (its remaining finals, `closed`, then close 1012 so
the client reconnects elsewhere), waits for them up to `drain_seconds`, and only then lets
uvicorn shut down. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from typing import Optional

import uvicorn

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_seconds: float = 10.0):
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self.draining = False
        self.failed: Optional[str] = None  # why the worker died, if it did

    def fail(self, reason: str) -> None:
        """The engine died (on the loop): let the sessions' errors go out, then stop serving."""
        self.failed = reason
        asyncio.get_running_loop().call_later(FAIL_GRACE_S, setattr, self, "should_exit", True)

    def handle_exit(self, sig: int, frame) -> None:
        app = self.config.app
        state = getattr(getattr(app, "state", None), "listen_state", None)
        if self.draining or state is None or self.drain_seconds <= 0 or not self.started:
            return super().handle_exit(sig, frame)
        self.draining = True
        asyncio.get_event_loop().call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain(app, state)))

    async def _drain(self, app, state) -> None:
        for server in getattr(self, "servers", []):
            server.close()  # stop accepting: a balancer's next try goes elsewhere
        open_now = len(state.connections)
        logger.info("draining %d sessions (up to %.1f s)", open_now, self.drain_seconds)
        left = await state.drain(getattr(app.state, "listen", None), self.drain_seconds)
        logger.info("drained %d of %d sessions; shutting down", open_now - left, open_now)
        self.should_exit = True


FAIL_GRACE_S = 0.5  # from a dead engine to the end of serving: its sessions' errors go out first


def serve(app, host: str, port: int, drain_seconds: float = 10.0, **uvicorn_kwargs) -> None:
    """Serve until a signal (drained) or until the engine dies: then exit non-zero, so that
    whatever runs the worker (systemd, Kubernetes, a shell loop) starts a fresh one."""
    config = uvicorn.Config(app, host=host, port=port, **uvicorn_kwargs)
    server = DrainingServer(config, drain_seconds)
    engine = getattr(app.state, "engine", None)
    if engine is not None:
        engine.on_dead.append(server.fail)
    server.run()
    if server.failed is not None:
        sys.exit(f"nvasr: this worker can no longer serve ({server.failed}); exiting so that it is replaced")


def exit_process_soon(reason: str, grace_s: float = 1.0, code: int = 70) -> None:
    """For hosts that own the server (Modal): end the whole process shortly after a dead engine
    told its sessions, so the platform replaces the container instead of routing to it."""
    logger.critical("exiting in %.1f s: %s", grace_s, reason)
    timer = threading.Timer(grace_s, os._exit, args=(code,))
    timer.daemon = True
    timer.start()

