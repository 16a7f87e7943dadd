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

import uvicorn

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_seconds: float = 10.0):
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self.draining = False

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


def serve(app, host: str, port: int, drain_seconds: float = 10.0, **uvicorn_kwargs) -> None:
    config = uvicorn.Config(app, host=host, port=port, **uvicorn_kwargs)
    DrainingServer(config, drain_seconds).run()

