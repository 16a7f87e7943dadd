"""Protocol v1 conformance against a real uvicorn server and real WebSocket clients.

Parametrised over the streaming workers: every worker must pass the same contract.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from conftest import TOKEN, LiveServer, noise_audio, to_pcm16

from pipecat_nvasr.client import ListenClient, listen_url, stream_pcm
from pipecat_nvasr.protocol import Closed, Final, Partial
from services.streaming_worker import StreamingConfig, create_streaming_app

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def worker_configs(request) -> dict:
    """Worker name → config on a tiny random model (float64: exact comparisons)."""
    rnnt = request.getfixturevalue("tiny_rnnt")
    eou = request.getfixturevalue("tiny_eou")
    return {
        "nemotron": StreamingConfig(worker="nemotron", model=str(rnnt), dtype="float64", max_sessions=64, token=TOKEN),
        "parakeet-realtime": StreamingConfig(
            worker="parakeet-realtime", model=str(eou), dtype="float64", max_sessions=64, token=TOKEN
        ),
    }


@pytest.fixture(scope="module", params=["nemotron", "parakeet-realtime"])
def server(request):
    cfg = worker_configs(request)[request.param]
    with LiveServer(create_streaming_app(cfg)) as srv:
        srv.worker = request.param
        yield srv


async def transcribe(srv, pcm: bytes, realtime=False, frame_ms=20, **kw) -> list:
    async with ListenClient(srv.ws, token=TOKEN, **kw) as client:
        sender = asyncio.create_task(stream_pcm(client, pcm, kw.get("sample_rate", 16000), frame_ms, realtime))
        events = [e async for e in client.events()]
        await sender
    return events


def finals(events) -> list[tuple]:
    return [(e.text, tuple((w.word, w.start, w.end) for w in e.words)) for e in events if isinstance(e, Final)]


def health(srv) -> dict:
    return httpx.get(srv.http + "/health", headers=AUTH).json()


async def test_message_order_and_normal_close(server):
    async with ListenClient(server.ws, token=TOKEN) as client:
        assert client.ready.protocol == 1 and client.ready.sample_rate == 16000
        sender = asyncio.create_task(stream_pcm(client, to_pcm16(noise_audio(1, 1.5)), realtime=False))
        events = [e async for e in client.events()]
        await sender
        await asyncio.wait_for(client._ws.wait_closed(), 5)
        assert client._ws.close_code == 1000
    kinds = [type(e) for e in events]
    assert kinds[-1] is Closed and Final in kinds and Partial in kinds
    assert kinds.index(Partial) < kinds.index(Final)
    partials = [e for e in events if isinstance(e, Partial)]
    assert all(a.text != b.text for a, b in zip(partials, partials[1:])), "partials repeat"
    final = next(e for e in events if isinstance(e, Final))
    assert final.words and 0 <= final.start <= final.end
    assert all(0 <= w.start <= w.end for w in final.words)


async def test_close_right_after_last_audio_loses_nothing(server):
    """Audio sent at once and closed at once == the same audio paced like a microphone."""
    pcm = to_pcm16(noise_audio(2, 1.37))  # not a whole number of chunks
    fast = await transcribe(server, pcm)
    paced = await transcribe(server, pcm, realtime=True, frame_ms=40)
    assert finals(fast) == finals(paced) and finals(fast)


async def test_finalize_mid_stream(server):
    async with ListenClient(server.ws, token=TOKEN) as client:
        await client.send_audio(to_pcm16(noise_audio(3, 0.9)))
        await client.finalize()
        events = []
        async for event in client.events():
            events.append(event)
            if isinstance(event, Final) and event.from_finalize:
                break
        await client.send_audio(to_pcm16(noise_audio(4, 0.5)))
        await client.close()
        events += [e async for e in client.events()]
    flagged = [e for e in events if isinstance(e, Final) and e.from_finalize]
    # no audio came after the finalize: it ends the utterance at the last whole chunk (0.8 s) and
    # the 0.1 s tail opens the next one
    assert len(flagged) == 1 and flagged[0].end <= 0.8 + 0.01  # 160 ms chunks
    later = [e for e in events if isinstance(e, Final) and not e.from_finalize]
    assert later and later[0].start >= flagged[0].end - 0.01, "times after a finalize continue in stream time"
    assert later[-1].end <= 1.4 + 0.01


async def test_concurrent_clients_with_half_dropped_get_single_stream_results(server):
    audios = [to_pcm16(noise_audio(500 + i, 0.8 + 0.05 * i)) for i in range(50)]
    alone = {i: finals(await transcribe(server, audios[i])) for i in range(1, 50, 2)}

    async def client(i):
        if i % 2 == 0:  # abrupt: half the audio, then the TCP connection just goes away
            ws = await websockets.connect(listen_url(server.ws), additional_headers=AUTH)
            await ws.recv()
            await ws.send(audios[i][: len(audios[i]) // 2])
            await asyncio.sleep(0.05 * (i % 5))
            ws.transport.abort()
            return None
        return finals(await transcribe(server, audios[i], realtime=True, frame_ms=100))

    results = await asyncio.gather(*(client(i) for i in range(50)))
    for i in range(1, 50, 2):
        assert results[i] == alone[i], f"client {i} differs from its single-stream result"
    for _ in range(100):
        state = health(server)
        if state["sessions"] == 0 and state["model_streams"] == 0:
            break
        await asyncio.sleep(0.05)
    assert state["sessions"] == 0 and state["model_streams"] == 0


async def test_resampled_input_rates(server):
    import soxr

    audio16 = noise_audio(9, 1.0)
    audio8 = soxr.resample(audio16, 16000, 8000)
    events = await transcribe(server, to_pcm16(audio8), sample_rate=8000)
    assert isinstance(events[-1], Closed) and finals(events)


async def test_query_token_and_configure(server):
    url = listen_url(server.ws, token=TOKEN)
    async with websockets.connect(url) as ws:
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready"
        await ws.send(json.dumps({"type": "configure", "boost": [{"phrase": "pizza", "weight": 2.0}]}))
        await ws.send(json.dumps({"type": "close"}))
        assert json.loads(await ws.recv())["type"] == "closed"


# ---------------------------------------------------------------------- bad input


async def _expect_error(ws, code: str, close: int | None):
    message = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert message["type"] == "error" and message["code"] == code and message["message"]
    if close is not None:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == close


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"\x01\x02\x03", "bad_audio"),  # odd byte count
        ("not json", "bad_message"),
        (json.dumps({"type": "dance"}), "bad_message"),
        (json.dumps([1, 2]), "bad_message"),
        (json.dumps({"type": "configure", "boost": [{"phrase": ""}]}), "bad_message"),
    ],
)
async def test_recoverable_bad_input_keeps_the_session(server, payload, code):
    async with websockets.connect(listen_url(server.ws), additional_headers=AUTH) as ws:
        await ws.recv()
        await ws.send(payload)
        await _expect_error(ws, code, close=None)
        await ws.send(to_pcm16(noise_audio(5, 0.5)))
        await ws.send(json.dumps({"type": "close"}))
        kinds = []
        while not kinds or kinds[-1] != "closed":
            kinds.append(json.loads(await asyncio.wait_for(ws.recv(), 10))["type"])
        assert "final" in kinds


@pytest.mark.parametrize(
    "query, headers, payload, code, close",
    [
        ("", {}, None, "unauthorized", 1008),
        ("", {"Authorization": "Bearer wrong"}, None, "unauthorized", 1008),
        ("&sample_rate=12345", AUTH, None, "bad_audio", 1003),
        ("&sample_rate=abc", AUTH, None, "bad_audio", 1003),
        ("&language=de", AUTH, None, "bad_message", 1003),
        ("", AUTH, b"\x00" * (256 * 1024 + 2), "bad_audio", 1009),
    ],
)
async def test_fatal_bad_input_closes_with_documented_code(server, query, headers, payload, code, close):
    async with websockets.connect(listen_url(server.ws).replace("&language=en", "") + query, additional_headers=headers, max_size=None) as ws:
        if payload is not None:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(payload)
        await _expect_error(ws, code, close)
    events = await transcribe(server, to_pcm16(noise_audio(6, 0.4)))  # others are still served
    assert isinstance(events[-1], Closed)


def test_http_endpoints_need_the_token(server):
    for path in ("/health", "/metrics"):
        assert httpx.get(server.http + path).status_code == 401
        assert httpx.get(server.http + path, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(server.http + path, headers=AUTH).status_code == 200
    metrics = httpx.get(server.http + "/metrics", headers=AUTH).text
    for name in ("nvasr_active_sessions", "nvasr_batch_size_bucket", "nvasr_step_seconds_bucket",
                 "nvasr_audio_seconds_total", "nvasr_errors_total"):
        assert name in metrics


async def test_session_limit_answers_overloaded(tiny_rnnt):
    cfg = StreamingConfig(model=str(tiny_rnnt), max_sessions=2, token=TOKEN, warmup=False)
    with LiveServer(create_streaming_app(cfg)) as srv:
        async with ListenClient(srv.ws, token=TOKEN), ListenClient(srv.ws, token=TOKEN):
            async with websockets.connect(listen_url(srv.ws), additional_headers=AUTH) as ws:
                await _expect_error(ws, "overloaded", 1013)
        events = await transcribe(srv, to_pcm16(noise_audio(7, 0.3)))  # a slot is free again
        assert isinstance(events[-1], Closed)
