"""Credentials in the header forms other vendors' clients send.

Deepgram's SDKs send `Authorization: Token <key>` (or `Bearer <token>`); its browser SDK,
which cannot set headers, offers `Sec-WebSocket-Protocol: token, <key>`. OpenAI's clients
send `Authorization: Bearer <key>`; its browser form offers the subprotocols `realtime` and
`openai-insecure-api-key.<key>`. The credential is then checked exactly as on `/v1/listen`
(`auth.accepts`: the worker's token or a short-lived listen token). The key is never logged.
"""

from __future__ import annotations

from typing import Optional

from starlette.requests import HTTPConnection

OPENAI_KEY_PROTOCOL = "openai-insecure-api-key."


def offered_subprotocols(conn: HTTPConnection) -> list[str]:
    header = conn.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


def compat_credential(conn: HTTPConnection) -> tuple[Optional[str], Optional[str]]:
    """(the credential presented, the subprotocol to accept the socket with or None)."""
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip(), None
    offered = offered_subprotocols(conn)
    if len(offered) >= 2 and offered[0].lower() in ("token", "bearer"):
        return offered[1], offered[0]
    for protocol in offered:
        if protocol.startswith(OPENAI_KEY_PROTOCOL) and "realtime" in offered:
            return protocol[len(OPENAI_KEY_PROTOCOL):], "realtime"
    return conn.query_params.get("token") or None, None
