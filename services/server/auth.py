"""Bearer-token authentication for every endpoint.

Servers send `Authorization: Bearer <token>`; browsers, which cannot set headers on a
WebSocket, may pass `?token=`. Comparison is constant-time.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Optional

from starlette.requests import HTTPConnection


def generate_token() -> str:
    return secrets.token_urlsafe(24)


def presented_token(conn: HTTPConnection) -> Optional[str]:
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return conn.query_params.get("token") or None


def is_authorized(conn: HTTPConnection, token: Optional[str]) -> bool:
    """`token=None` means the operator chose an open server (loopback only, see the CLI)."""
    if token is None:
        return True
    given = presented_token(conn)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())
