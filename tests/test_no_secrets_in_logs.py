"""No token in anything a worker prints.

A real `nvasr serve nemotron` process (uvicorn's access log on, as in production) is used with
the worker's token and a short-lived token every way docs/protocol.md allows — the
Authorization header, a `nvasr.token.` WebSocket subprotocol (the browser page), the `?token=`
fallback, on /v1/listen, /health, /metrics, /v1/tokens and the page — and refused ones too.
Everything the process wrote to stdout and stderr must hold neither token, while the request
lines themselves are there (so the test fails if logging were simply off).
"""

from __future__ import annotations

import json
import logging

import httpx
import websockets

from conftest import ASSETS
from listen_helpers import WorkerProcess
from pipecat_nvasr.protocol import LISTEN_SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX
from services import redaction

WORKER_TOKEN = "wkr-Secret-4f1d9c2ab7e0"


async def _listen_once(url: str, **connect) -> dict:
    """Open a session, send a little audio and `close`; the first message (ready or error)."""
    async with websockets.connect(url, **connect) as ws:
        first = json.loads(await ws.recv())
        if first["type"] == "ready":
            await ws.send(b"\x00\x00" * 3200)
            await ws.send(json.dumps({"type": "close"}))
            async for raw in ws:
                if json.loads(raw)["type"] == "closed":
                    break
        return first


async def test_no_token_appears_in_anything_the_worker_prints(tmp_path):
    log = tmp_path / "worker.log"
    worker = WorkerProcess(ASSETS / "tiny_rnnt.nemo", WORKER_TOKEN, log=log)
    worker.start()
    try:
        await worker.wait_ready()
        http = f"http://127.0.0.1:{worker.port}"
        bearer = {"Authorization": f"Bearer {WORKER_TOKEN}"}
        async with httpx.AsyncClient(base_url=http) as client:
            short = (await client.post("/v1/tokens", headers=bearer)).json()["token"]
            answers = [
                (await client.get("/health", headers=bearer)).status_code,
                (await client.get(f"/health?token={WORKER_TOKEN}")).status_code,
                (await client.get(f"/metrics?token={WORKER_TOKEN}")).status_code,
                (await client.post(f"/v1/tokens?token={WORKER_TOKEN}")).status_code,
                (await client.get(f"/metrics?token={short}")).status_code,  # listen-only: refused
                (await client.get(f"/health?token={WORKER_TOKEN}x")).status_code,  # wrong: refused
                (await client.get(f"/?token={short}&autostart=1")).status_code,  # an old page link
                (await client.get("/?autostart=1")).status_code,  # `#token=` is never sent
            ]
        assert answers == [200, 200, 200, 200, 401, 401, 200, 200]

        listen = f"ws://127.0.0.1:{worker.port}/v1/listen?sample_rate=16000&language=en"
        kinds = []
        for token in (WORKER_TOKEN, short):
            kinds.append((await _listen_once(listen, additional_headers={"Authorization": f"Bearer {token}"}))["type"])
            kinds.append((await _listen_once(f"{listen}&token={token}"))["type"])
            kinds.append((await _listen_once(
                listen, subprotocols=[LISTEN_SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX + token]))["type"])
        refused = await _listen_once(f"{listen}&token={short}tampered")
        assert kinds == ["ready"] * 6 and refused["code"] == "unauthorized"
    finally:
        status = worker.terminate()
        worker.stop()
    printed = log.read_text(errors="replace")

    assert WORKER_TOKEN not in printed
    assert short not in printed
    assert short.rsplit(".", 1)[1] not in printed  # not even its signature
    # What was redacted is there, as the operator needs it: every request line, its path.
    assert printed.count("/health?token=[redacted]") == 2
    assert "/metrics?token=[redacted]" in printed and "/v1/tokens?token=[redacted]" in printed
    assert printed.count("/v1/listen?sample_rate=16000&language=en&token=[redacted]") >= 3
    assert '"WebSocket /v1/listen?sample_rate=16000&language=en" [accepted]' in printed
    assert status == 0, printed[-2000:]


def test_redaction_covers_messages_arguments_and_tracebacks(caplog):
    """Our own log calls too: a token in a format argument, an exception text or a traceback."""
    redaction.install("my-worker-token-123")
    logger = logging.getLogger("services.test_redaction")
    with caplog.at_level(logging.INFO, logger="services.test_redaction"):
        logger.info("GET %s %d", "/v1/listen?token=st1.1796200000.abc.def&x=1", 200)
        logger.info("the worker token is my-worker-token-123")
        logger.warning("upstream said %s", ValueError("Authorization: Bearer my-worker-token-123"))
        try:
            raise RuntimeError("wss://w/v1/listen?token=abc123")
        except RuntimeError:
            logger.exception("failed")
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    for secret in ("st1.1796200000.abc.def", "my-worker-token-123", "abc123"):
        assert secret not in text
    assert "/v1/listen?token=[redacted]&x=1 200" in text
    assert "RuntimeError: wss://w/v1/listen?token=[redacted]" in text


def test_every_worker_app_installs_the_redaction(caplog):
    """The app factory every worker goes through (CLI, Modal's web functions, batch, segmenter)
    registers the worker's token: a log line that quotes it anywhere comes out redacted."""
    from services.server.app import create_app

    create_app(worker="batch", token="batch-worker-token-xyz")
    with caplog.at_level(logging.INFO, logger="services.anything"):
        logging.getLogger("services.anything").info("configured with batch-worker-token-xyz")
    assert caplog.records[-1].getMessage() == "configured with [redacted]"
