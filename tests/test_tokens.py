"""Short-lived listen tokens (`POST /v1/tokens`) and the public page, on a real server.

The listen backend is scripted (no model): what is tested is who may do what.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
import websockets

from conftest import TOKEN, LiveServer
from scripted_worker import ScriptedBackend
from services.server.app import create_app
from services.server.auth import mint_short_lived

MAIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server():
    backend = ScriptedBackend("hello")
    with LiveServer(create_app(worker="scripted", token=TOKEN, listen=backend)) as live:
        yield live


async def listen_reply(server, token: str | None = None, header: str | None = None) -> tuple[dict, int | None]:
    """The first message on /v1/listen, and the close code if the server then closed."""
    url = f"{server.ws}/v1/listen" + (f"?token={token}" if token is not None else "")
    headers = {"Authorization": f"Bearer {header}"} if header else None
    async with websockets.connect(url, additional_headers=headers) as ws:
        first = json.loads(await ws.recv())
        if first["type"] == "ready":
            return first, None
        try:
            await ws.recv()
        except websockets.ConnectionClosed as closed:
            return first, closed.rcvd.code if closed.rcvd else None
        raise AssertionError("a refused connection must be closed")


def mint(server, **body) -> dict:
    reply = httpx.post(f"{server.http}/v1/tokens", headers=MAIN, json=body or None)
    assert reply.status_code == 200, reply.text
    return reply.json()


async def test_a_minted_token_opens_listen_by_query_or_header(server):
    minted = mint(server)
    assert minted["expires_in"] == 300 and minted["token"] != TOKEN
    for kwargs in ({"token": minted["token"]}, {"header": minted["token"]}):
        first, _ = await listen_reply(server, **kwargs)
        assert first["type"] == "ready", first


async def test_a_token_offered_as_subprotocol_opens_listen_and_is_never_echoed(server):
    """The browser page's way: `new WebSocket(url, ["nvasr.v1", "nvasr.token.<token>"])`."""
    from pipecat_nvasr.protocol import LISTEN_SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX

    for token in (mint(server)["token"], TOKEN):
        offered = [LISTEN_SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX + token]
        async with websockets.connect(f"{server.ws}/v1/listen", subprotocols=offered) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            assert ws.subprotocol == LISTEN_SUBPROTOCOL  # the answer names the protocol, not the token
    for wrong in ("st1.x.y.z", "not-the-token"):
        offered = [LISTEN_SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX + wrong]
        async with websockets.connect(f"{server.ws}/v1/listen", subprotocols=offered) as ws:
            assert json.loads(await ws.recv())["code"] == "unauthorized"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 1008


def test_a_short_lived_token_cannot_mint_or_read_admin_routes(server):
    short = mint(server)["token"]
    for method, path in (("POST", "/v1/tokens"), ("GET", "/metrics"), ("GET", "/health")):
        for auth in ({"headers": {"Authorization": f"Bearer {short}"}}, {"params": {"token": short}}):
            reply = httpx.request(method, server.http + path, **auth)
            assert reply.status_code == 401, (path, reply.text)
            assert "short-lived token opens /v1/listen only" in reply.json()["detail"]
    assert httpx.post(f"{server.http}/v1/tokens").status_code == 401  # no token at all
    assert httpx.get(f"{server.http}/metrics", headers=MAIN).status_code == 200


async def test_expired_forged_and_foreign_tokens_are_refused_with_1008(server):
    good = mint(server)["token"]
    body, _, signature = good.rpartition(".")
    prefix, expiry, nonce = body.split(".")
    bad = {
        "expired": mint_short_lived(TOKEN, ttl=60, now=time.time() - 120),
        "forged signature": f"{body}.{signature[::-1]}",
        "later expiry, old signature": f"{prefix}.{int(expiry) + 3600}.{nonce}.{signature}",
        "another worker's": mint_short_lived("another-worker-token"),
        "garbage": "st1.x.y.z",
    }
    for name, token in bad.items():
        first, code = await listen_reply(server, token=token)
        assert first["type"] == "error" and first["code"] == "unauthorized", name
        assert code == 1008, name


async def test_a_token_works_until_it_expires(server):
    token = mint(server, expires_in=1)["token"]
    first, _ = await listen_reply(server, token=token)
    assert first["type"] == "ready"
    time.sleep(1.05 + (int(token.split(".")[1]) - time.time()))
    first, code = await listen_reply(server, token=token)
    assert (first["code"], code) == ("unauthorized", 1008)


@pytest.mark.parametrize("body", ['{"expires_in": 0}', '{"expires_in": 3601}', '{"expires_in": "60"}',
                                  '{"expires_in": true}', "[60]", "not json"])
def test_bad_expiry_requests_get_400(server, body):
    reply = httpx.post(f"{server.http}/v1/tokens", headers={**MAIN, "Content-Type": "application/json"}, content=body)
    assert reply.status_code == 400 and "expires_in" in reply.json()["detail"]


def test_expiry_can_be_chosen(server):
    assert mint(server, expires_in=60)["expires_in"] == 60


def test_the_page_is_public_and_locked_down(server):
    page = httpx.get(f"{server.http}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert 'id="transcript"' in page.text and "http" not in page.text.split("<body>")[1]  # nothing external
    for asset in ("app.js", "capture-worklet.js", "resampler.js", "style.css"):
        assert httpx.get(f"{server.http}/static/{asset}").status_code == 200
    for missing in ("auth.py", "..%2Fservices%2Fserver%2Fauth.py", "index.html.bak"):
        assert httpx.get(f"{server.http}/static/{missing}").status_code == 404


def test_a_worker_without_listen_has_no_page_or_tokens():
    with LiveServer(create_app(worker="batch", token=TOKEN)) as live:
        assert httpx.get(f"{live.http}/").status_code == 404
        assert httpx.post(f"{live.http}/v1/tokens", headers=MAIN).status_code == 404


def test_the_segmenter_serves_the_page_and_mints_tokens():
    from services.segmenter import SegmenterConfig, create_segmenter_app

    async def never_called(segments):
        raise AssertionError("no audio in this test")

    app = create_segmenter_app(SegmenterConfig(token=TOKEN), transcribe=never_called)
    with LiveServer(app) as live:
        assert 'id="transcript"' in httpx.get(f"{live.http}/").text
        assert httpx.post(f"{live.http}/v1/tokens", headers=MAIN).json()["expires_in"] == 300
