"""The compatible streaming protocols' routes, mounted on every worker with a listen backend.

Each route is one dialect (bridge.py) over the worker's backend: Deepgram live and Flux,
OpenAI Realtime transcription. docs/protocol.md documents each mapping.
"""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, WebSocket

from .bridge import serve_dialect
from .deepgram_flux import FLUX_PATH, DeepgramFlux
from .deepgram_live import LIVE_PATH, DeepgramLive, deepgram_denial
from .listen import ListenBackend, ListenState
from .metrics import Metrics
from .openai_realtime import REALTIME_PATH, OpenAIRealtime, openai_denial


def compat_router(backend: ListenBackend, token: Optional[str], metrics: Metrics, state: ListenState) -> APIRouter:
    router = APIRouter()

    @router.websocket(LIVE_PATH)
    async def deepgram_live(ws: WebSocket) -> None:
        await serve_dialect(ws, backend, token, metrics, state, DeepgramLive, deepgram_denial)

    @router.websocket(FLUX_PATH)
    async def deepgram_flux(ws: WebSocket) -> None:
        await serve_dialect(ws, backend, token, metrics, state, DeepgramFlux, deepgram_denial)

    @router.websocket(REALTIME_PATH)
    async def openai_realtime(ws: WebSocket) -> None:
        await serve_dialect(ws, backend, token, metrics, state, OpenAIRealtime, openai_denial)

    return router
