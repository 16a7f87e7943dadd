"""The `/v1/listen` socket layer (services/server/listen.py) on a real uvicorn server with a
backend that records what reaches it: the resampler across finalizes, `keepalive`, the
`configure` rate limit, and a cancelled handler."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets

from conftest import TOKEN, LiveServer
from scripted_worker import ScriptedBackend
from services.server.app import create_app
from services.server.listen import ListenSettings, ListenState, serve_listen
from services.server.metrics import Metrics

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class RecordingBackend(ScriptedBackend):
    """Keeps every sample handed to it and where each finalize fell."""

    def __init__(self):
        super().__init__("hello")
        self.samples: list[np.ndarray] = []
        self.finalized_at: list[int] = []
        self.boosts: list[list] = []

    def received(self) -> int:
        return sum(len(s) for s in self.samples)

    def append(self, session, samples) -> None:
        self.samples.append(np.array(samples, copy=True))
        super().append(session, samples)

    def finalize(self, session) -> None:
        self.finalized_at.append(self.received())
        super().finalize(session)


async def _until_closed(ws) -> list[dict]:
    """Every message up to `closed`."""
    seen = []
    async for raw in ws:
        seen.append(json.loads(raw))
        if seen[-1]["type"] == "closed":
            return seen
    raise AssertionError(f"no `closed`: {seen}")


async def test_the_resampler_carries_across_finalizes_and_flushes_only_on_close():
    """A 48 kHz client with two VAD finalizes: the model gets exactly the audio one
    continuous resampling gives (the old code flushed and rebuilt it at every finalize)."""
    import soxr

    rng = np.random.default_rng(7)
    audio = (rng.standard_normal(48000 * 2) * 3000).astype("<i2")
    frames = [audio[i : i + 960] for i in range(0, len(audio), 960)]  # 20 ms
    backend = RecordingBackend()
    with LiveServer(create_app(worker="t", token=TOKEN, listen=backend)) as server:
        url = f"{server.ws}/v1/listen?sample_rate=48000"
        async with websockets.connect(url, additional_headers=AUTH) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            for i, frame in enumerate(frames):
                await ws.send(frame.tobytes())
                if i in (30, 70):
                    await ws.send(json.dumps({"type": "finalize"}))
            await ws.send(json.dumps({"type": "close"}))
            seen = await _until_closed(ws)
    assert sum(m.get("from_finalize", False) for m in seen) == 2

    stream = soxr.ResampleStream(48000, 16000, 1, dtype="float32")
    pcm = audio.astype(np.float32) * np.float32(1 / 32768)
    expected = np.concatenate([stream.resample_chunk(pcm), stream.resample_chunk(np.zeros(0, np.float32), last=True)])
    got = np.concatenate(backend.samples)
    assert len(got) == len(expected) == 32000
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # Each finalize came after the audio sent before it, less what the filter still held
    # (its delay: 13 ms measured at 48 kHz).
    lags_ms = [(n * 320 - at) / 16 for n, at in zip((31, 71), backend.finalized_at)]
    print(f"\nfinalize lands this much before the end of the audio sent before it: {lags_ms} ms")
    assert all(0 <= lag <= 20 for lag in lags_ms), lags_ms


async def test_keepalive_holds_a_silent_session_open_past_the_idle_timeout():
    settings = ListenSettings(idle_timeout=1.0, reap_interval=0.1)
    backend = RecordingBackend()
    with LiveServer(create_app(worker="t", token=TOKEN, listen=backend, listen_settings=settings)) as server:
        async with websockets.connect(f"{server.ws}/v1/listen", additional_headers=AUTH) as ws:
            ready = json.loads(await ws.recv())
            assert ready["keepalive"] is True and ready["idle_timeout"] == 1.0
            for _ in range(10):  # 3 s of a muted client, four times the idle timeout over
                await ws.send(json.dumps({"type": "keepalive"}))
                await asyncio.sleep(0.3)  # pacing the client, as a muted bot's keepalive timer does
            await ws.send(json.dumps({"type": "close"}))
            seen = await _until_closed(ws)
    assert [m["type"] for m in seen] == ["closed"]  # no `bad_message`, no `timeout`
    assert backend.received() == 0  # a keepalive is not audio

    # The control: the same silence without keepalives is cut off.
    with LiveServer(create_app(worker="t", token=TOKEN, listen=RecordingBackend(), listen_settings=settings)) as server:
        async with websockets.connect(f"{server.ws}/v1/listen", additional_headers=AUTH) as ws:
            await ws.recv()
            error = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
    assert error["code"] == "timeout" and closed.value.rcvd.code == 4408


async def test_configure_is_rate_limited_per_session_with_a_clear_error():
    settings = ListenSettings(configure_burst=3, configure_per_s=0.001)
    backend = RecordingBackend()
    with LiveServer(create_app(worker="t", token=TOKEN, listen=backend, listen_settings=settings)) as server:
        async with websockets.connect(f"{server.ws}/v1/listen", additional_headers=AUTH) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            session = next(iter(backend.sessions.values()))
            for i in range(6):
                await ws.send(json.dumps({"type": "configure", "boost": [{"phrase": f"word{i}"}]}))
            errors = [json.loads(await ws.recv()) for _ in range(3)]
            assert [b.phrase for b in session.boost] == ["word2"]  # the last one within the budget
            # another session has its own budget
            async with websockets.connect(f"{server.ws}/v1/listen", additional_headers=AUTH) as other:
                assert json.loads(await other.recv())["type"] == "ready"
                await other.send(json.dumps({"type": "configure", "boost": ["other"]}))
                await other.send(json.dumps({"type": "close"}))
                assert [m["type"] for m in await _until_closed(other)] == ["closed"]
            await ws.send(json.dumps({"type": "close"}))
            assert [m["type"] for m in await _until_closed(ws)] == ["closed"]  # the session carried on
    assert [e["code"] for e in errors] == ["rate_limited"] * 3
    assert "at most 3 in a row" in errors[0]["message"] and "previous boost list still applies" in errors[0]["message"]


async def test_a_cancelled_handler_propagates_cancellation_and_frees_its_session():
    """The server cancelling a socket's handler (shutdown) must see it end cancelled, with
    its session dropped; the old handler swallowed the CancelledError."""
    from starlette.websockets import WebSocket

    backend = RecordingBackend()
    incoming: asyncio.Queue = asyncio.Queue()
    outgoing: asyncio.Queue = asyncio.Queue()
    scope = {"type": "websocket", "path": "/v1/listen", "query_string": b"", "headers": [], "subprotocols": []}
    incoming.put_nowait({"type": "websocket.connect"})
    ws = WebSocket(scope, incoming.get, outgoing.put)  # Starlette's socket on a bare ASGI channel
    handler = asyncio.create_task(serve_listen(ws, backend, None, Metrics("t"), ListenState()))
    assert (await outgoing.get())["type"] == "websocket.accept"
    assert json.loads((await outgoing.get())["text"])["type"] == "ready"
    assert len(backend.sessions) == 1
    handler.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handler
    assert handler.cancelled() and not backend.sessions
