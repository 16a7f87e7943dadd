"""FastAPI app factory shared by every worker (streaming, segmenter, batch).

A worker brings a listen backend (for `/v1/listen`) and/or extra routers (the batch
worker's `/v1/audio/transcriptions`); the app adds auth, `/health` and `/metrics`, and runs
the backend's start/stop with the app's lifespan. A worker with a listen backend also serves
the browser page at `/` and mints short-lived listen tokens at `POST /v1/tokens`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Awaitable, Callable, Optional, Sequence

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import JSONResponse, Response

from pipecat_nvasr.protocol import LISTEN_PATH, PROTOCOL_VERSION

from .. import redaction
from .auth import is_authorized, is_short_lived, presented_token
from .compat import compat_router
from .frontend import page_router, token_router
from .listen import ListenBackend, ListenSettings, ListenState, serve_listen
from .metrics import Metrics

Hook = Callable[[], Awaitable[None]]


def require_token(token: Optional[str]):
    """A FastAPI dependency rejecting requests without the worker's token (401)."""

    def check(request: Request) -> None:
        if not is_authorized(request, token):
            given = presented_token(request)
            detail = "missing or wrong token: send 'Authorization: Bearer <token>'"
            if given is not None and is_short_lived(given):
                detail = "a short-lived token opens /v1/listen only; this route needs the worker's token"
            raise HTTPException(
                status_code=401,
                detail=detail,
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def create_app(
    *,
    worker: str,
    token: Optional[str],
    listen: Optional[ListenBackend] = None,
    routers: Sequence[APIRouter] = (),
    metrics: Optional[Metrics] = None,
    on_startup: Sequence[Hook] = (),
    on_shutdown: Sequence[Hook] = (),
    health: Optional[Callable[[], dict]] = None,
    listen_settings: Optional[ListenSettings] = None,
) -> FastAPI:
    redaction.install(token)  # every worker (CLI, Modal) comes through here: no token in any log
    metrics = metrics or Metrics(worker)
    listen_state = ListenState(listen_settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for hook in on_startup:
            await hook()
        try:
            yield
        finally:
            for hook in on_shutdown:
                await hook()

    app = FastAPI(title=f"nvasr {worker} worker", lifespan=lifespan)
    app.state.metrics = metrics
    app.state.listen = listen
    app.state.listen_state = listen_state  # open sockets: the reaper and the drain (server/drain.py)
    auth = [Depends(require_token(token))]

    @app.get("/health", dependencies=auth)
    async def get_health() -> JSONResponse:
        body = {"status": "ok", "worker": worker, "protocol": PROTOCOL_VERSION}
        if listen is not None:
            body["model"] = listen.model_name
        if health is not None:
            body.update(health())
        dead = getattr(listen, "dead", None)
        if dead is not None:  # a dead engine: the orchestrator must route elsewhere and replace us
            body.update(status="dead", reason=dead)
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @app.get("/metrics", dependencies=auth)
    async def get_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    if listen is not None:

        @app.websocket(LISTEN_PATH)
        async def listen_socket(ws: WebSocket) -> None:
            await serve_listen(ws, listen, token, metrics, listen_state)

        # Deepgram's and OpenAI's streaming protocols on the same backend (server/compat.py).
        app.include_router(compat_router(listen, token, metrics, listen_state))
        # The browser page (public static files) and short-lived tokens for it.
        app.include_router(page_router())
        app.include_router(token_router(token, auth[0]))

    for router in routers:
        app.include_router(router, dependencies=auth)
    return app
