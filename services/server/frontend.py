"""The browser page (frontend/) at `GET /`, and `POST /v1/tokens` for short-lived tokens.

The page and its assets are public: they are the same static files for every deployment
and carry no secret. What they open — the `/v1/listen` WebSocket — needs a token, which the
page takes from `?token=` (a short-lived one, minted by a server that holds the worker's
token). Strict headers keep the page from loading anything but itself and from leaking
the token in a Referer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse

from .auth import DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS, MIN_TTL_SECONDS, mint_short_lived

# The repository's frontend/ (Modal images copy it to /root/frontend, next to services/).
FRONTEND_DIR = Path(os.environ.get("NVASR_FRONTEND_DIR") or Path(__file__).resolve().parents[2] / "frontend")
PAGE_ASSETS = ("app.js", "capture-worklet.js", "resampler.js", "style.css")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _file(name: str) -> FileResponse:
    path = FRONTEND_DIR / name
    if not path.is_file():
        raise HTTPException(status_code=404, detail=f"{name} is missing from {FRONTEND_DIR}")
    return FileResponse(path, headers=SECURITY_HEADERS)


def page_router() -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return _file("index.html")

    @router.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        if name not in PAGE_ASSETS:  # a fixed list: no path ever reaches the filesystem
            raise HTTPException(status_code=404, detail="no such file")
        return _file(name)

    return router


def token_router(token: Optional[str], auth: Depends) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/tokens", dependencies=[auth])
    async def mint(request: Request) -> JSONResponse:
        """`{"expires_in": s}` (optional body) → `{"token", "expires_in"}`, listen-only."""
        ttl = DEFAULT_TTL_SECONDS
        if await request.body():
            try:
                body = await request.json()
                ttl = body.get("expires_in", DEFAULT_TTL_SECONDS) if isinstance(body, dict) else None
            except ValueError:
                ttl = None
            if not isinstance(ttl, int) or isinstance(ttl, bool) or not MIN_TTL_SECONDS <= ttl <= MAX_TTL_SECONDS:
                raise HTTPException(
                    status_code=400,
                    detail=f"body must be JSON {{\"expires_in\": seconds}}, {MIN_TTL_SECONDS}-{MAX_TTL_SECONDS}",
                )
        return JSONResponse({"token": mint_short_lived(token, ttl), "expires_in": ttl})

    return router
