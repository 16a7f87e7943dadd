"""Bearer-token authentication for every endpoint, and short-lived listen tokens for browsers.

Servers send `Authorization: Bearer <token>`. Browsers cannot set headers on a WebSocket:
they offer the token as a subprotocol (`Sec-WebSocket-Protocol: nvasr.v1, nvasr.token.<token>`;
the server answers `nvasr.v1`, never echoing the token), or, as a fallback, pass `?token=` —
which travels in the URL, where a proxy may log it (this process redacts it from its own
logs: services/redaction.py). Comparison is constant-time.

A browser should never hold the worker's token: a server that has it calls
`POST /v1/tokens` and hands the browser a short-lived token instead. Such a token is
stateless — `st1.<expiry unix seconds>.<nonce>.<HMAC-SHA256>` keyed by a key derived from
the worker's token — so every replica sharing the token verifies it without a database,
and it opens `/v1/listen` only (never `/v1/tokens`, `/metrics` or other routes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Optional

from starlette.requests import HTTPConnection

from pipecat_nvasr.protocol import LISTEN_SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX

SHORT_LIVED_PREFIX = "st1"
DEFAULT_TTL_SECONDS = 300
MIN_TTL_SECONDS = 1
MAX_TTL_SECONDS = 3600

# An open server (no token) still mints tokens, so a page that asks for one works; it
# accepts anything anyway. The key then lives for this process only.
_OPEN_SERVER_KEY = secrets.token_bytes(32)


def generate_token() -> str:
    return secrets.token_urlsafe(24)


def offered_subprotocols(conn: HTTPConnection) -> list[str]:
    header = conn.headers.get("sec-websocket-protocol", "")
    return [item.strip() for item in header.split(",") if item.strip()]


def presented_token(conn: HTTPConnection) -> Optional[str]:
    """The token from the Authorization header, a `nvasr.token.` subprotocol, or `?token=`."""
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():  # `Token`: Deepgram's clients
        return value.strip()
    for offered in offered_subprotocols(conn):
        if offered.startswith(TOKEN_SUBPROTOCOL_PREFIX) and len(offered) > len(TOKEN_SUBPROTOCOL_PREFIX):
            return offered[len(TOKEN_SUBPROTOCOL_PREFIX):]
    return conn.query_params.get("token") or None


def accepted_subprotocol(conn: HTTPConnection) -> Optional[str]:
    """What the server answers in `Sec-WebSocket-Protocol`: `nvasr.v1` when offered (a browser
    fails a socket whose offered subprotocols get no answer), never the token entry."""
    return LISTEN_SUBPROTOCOL if LISTEN_SUBPROTOCOL in offered_subprotocols(conn) else None


def _signing_key(token: Optional[str]) -> bytes:
    """A key of its own, so a short-lived token's signature reveals nothing about the token."""
    if token is None:
        return _OPEN_SERVER_KEY
    return hmac.new(token.encode(), b"nvasr short-lived listen token v1", hashlib.sha256).digest()


def _signature(key: bytes, body: str) -> str:
    digest = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def mint_short_lived(token: Optional[str], ttl: int = DEFAULT_TTL_SECONDS, now: Optional[float] = None) -> str:
    """A listen-only token valid for `ttl` seconds from `now`."""
    expires = int((time.time() if now is None else now) + ttl)
    body = f"{SHORT_LIVED_PREFIX}.{expires}.{secrets.token_urlsafe(9)}"
    return f"{body}.{_signature(_signing_key(token), body)}"


def is_short_lived(given: str) -> bool:
    return given.startswith(SHORT_LIVED_PREFIX + ".")


def verify_short_lived(given: str, token: Optional[str], now: Optional[float] = None) -> bool:
    """Signed with this worker's key and not yet expired."""
    body, _, signature = given.rpartition(".")
    parts = body.split(".")
    if len(parts) != 3 or parts[0] != SHORT_LIVED_PREFIX or not parts[1].isdigit():
        return False
    if not hmac.compare_digest(signature.encode(), _signature(_signing_key(token), body).encode()):
        return False
    return int(parts[1]) > (time.time() if now is None else now)


def is_authorized(conn: HTTPConnection, token: Optional[str], *, listen: bool = False) -> bool:
    """The worker's token opens everything; a short-lived token only routes with `listen=True`.

    `token=None` means the operator chose an open server (loopback only, see the CLI).
    """
    return accepts(presented_token(conn), token, listen=listen)


def accepts(given: Optional[str], token: Optional[str], *, listen: bool = False) -> bool:
    """`is_authorized` for a credential already taken from the request (the compatible
    protocols carry it in their own header forms: services/server/compat_auth.py)."""
    if token is None:
        return True
    if given is None:
        return False
    if hmac.compare_digest(given.encode(), token.encode()):
        return True
    return listen and is_short_lived(given) and verify_short_lived(given, token)
