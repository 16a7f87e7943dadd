"""Failures injected into the two-phase step, and an engine that knows when it is dead.

- A failure at each point of `prepare` (features, encoder, decoder, word grouping) and in
  `commit`'s per-stream bookkeeping ends the one stream that causes it; every other stream's
  transcript equals a clean run (float64, the trained tiny model, through the engine).
- A dead engine — a device fault that poisons every later call, or its loop killed — tells every
  open session (`unavailable`, close 1011), refuses new ones, answers /health with 503, and the
  worker process (`drain.serve`, as `nvasr serve` runs it) exits non-zero.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from conftest import TOKEN, LiveServer, noise_audio, to_pcm16

from pipecat_nvasr.client import ListenClient
from pipecat_nvasr.protocol import Closed, CloseCode, Error, ErrorCode, Final
from services.engine.core import EngineCore

ROOT = Path(__file__).resolve().parent.parent
STREAMS = 6
POISONED = 2  # the index of the stream whose third chunk breaks the model


def _audio(index: int, heldout):
    return heldout[index]["samples"]


class Poison:
    """Raise at one point of the step once stream POISONED has reached its third chunk."""

    def __init__(self, adapter, point: str):
        self.adapter, self.point, self.armed, self.raised = adapter, point, False, 0
        self.chunks: dict[int, int] = {}  # stream id → chunks stepped, in order of first appearance
        self.poisoned_id = None
        prepare = adapter.prepare

        def watched_prepare(items):
            for item in items:
                if item.is_first and item.stream_id not in self.chunks:
                    self.chunks[item.stream_id] = 0
            if self.poisoned_id is None and len(self.chunks) > POISONED:
                self.poisoned_id = list(self.chunks)[POISONED]
            self.armed = any(i.stream_id == self.poisoned_id and self.chunks[i.stream_id] >= 2 for i in items)
            plan = prepare(items)  # raises where poisoned: the chunk was not stepped
            for item in items:
                self.chunks[item.stream_id] += 1
            return plan

        adapter.prepare = watched_prepare
        if point == "commit":
            apply = adapter.text.apply

            def poisoned_apply(slot, delta):
                if self.armed and adapter.store.slot_of.get(self.poisoned_id) == slot:
                    self.raised += 1
                    raise RuntimeError("bookkeeping failed (simulated)")
                apply(slot, delta)

            adapter.text.apply = poisoned_apply
            return
        owner, name = {"features": (adapter.frontend, "step"), "encoder": (adapter.encoder, "cache_aware_stream_step"),
                       "decoder": (adapter.greedy, "step"), "words": (adapter.text, "words_of")}[point]
        original = getattr(owner, name)

        def poisoned(*args, **kwargs):
            if self.armed:
                self.raised += 1
                raise RuntimeError(f"{point} failed on this stream's input (simulated)")
            return original(*args, **kwargs)

        setattr(owner, name, poisoned)


async def _run(adapter, audios):
    engine = EngineCore(adapter, max_batch=STREAMS)
    await engine.start()
    sessions = [engine.open() for _ in audios]

    async def one(session, audio):
        engine.append(session, audio)  # a backlog: each step holds every stream
        engine.close(session)
        events = []
        while not events or not isinstance(events[-1], (Closed, Error)):
            events.append(await asyncio.wait_for(session.outbox.get(), 120))
        return events

    results = await asyncio.gather(*(one(s, a) for s, a in zip(sessions, audios)))
    await engine.stop()
    return results, engine


@pytest.fixture(scope="module")
def make_adapter(trained_rnnt):
    from services.adapters.vectorised import VectorisedRNNTAdapter

    return lambda: VectorisedRNNTAdapter(str(trained_rnnt), chunk_ms=160, max_streams=8, dtype="float64")


@pytest.fixture(scope="module")
def clean_run(make_adapter, heldout):
    audios = [_audio(i, heldout) for i in range(STREAMS)]
    results, _ = asyncio.run(_run(make_adapter(), audios))
    return audios, results


def _texts(events):
    return [e.text for e in events if isinstance(e, Final) and e.text]


@pytest.mark.parametrize("point", ["features", "encoder", "decoder", "words", "commit"])
async def test_a_failure_anywhere_in_the_step_ends_only_its_stream(point, make_adapter, clean_run):
    audios, clean = clean_run
    adapter = make_adapter()
    poison = Poison(adapter, point)
    results, engine = await _run(adapter, audios)
    assert poison.raised >= 1
    failed = [i for i, events in enumerate(results) if isinstance(events[-1], Error)]
    assert len(failed) == 1
    assert results[failed[0]][-1].code == ErrorCode.INTERNAL
    for i, events in enumerate(results):
        if i != failed[0]:
            assert isinstance(events[-1], Closed) and _texts(events) == _texts(clean[i]), (point, i)
    assert engine.failed_streams == 1 and engine.dead is None
    assert (engine.isolation_steps > 0) == (point != "commit")  # only prepare failures are bisected
    assert adapter.active_streams() == 0 and not adapter.boosting.by_slot


class StickyFault:
    """After `after` steps every model call fails as after an illegal memory access on CUDA."""

    def __init__(self, adapter, after: int):
        self.adapter, self.after, self.calls = adapter, after, 0
        prepare = adapter.prepare

        def faulty(items):
            self.calls += 1
            if self.calls > self.after:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return prepare(items)

        adapter.prepare = faulty


async def _stream(srv, audio):
    """A session's error codes and close code; a refusal at the handshake counts as its error."""
    try:
        async with ListenClient(srv.ws, token=TOKEN) as client:
            await client.send_audio(to_pcm16(audio))
            events = [e async for e in client.events()]
            await asyncio.wait_for(client._ws.wait_closed(), 30)
            return [e.code for e in events if isinstance(e, Error)], client._ws.close_code
    except ConnectionError as exc:  # the worker answered the opening with an error, not `ready`
        code = ErrorCode.UNAVAILABLE if "'unavailable'" in str(exc) else str(exc)
        return [code], CloseCode.INTERNAL


def _health(srv):
    return httpx.get(srv.http + "/health", headers={"Authorization": f"Bearer {TOKEN}"})


async def test_a_device_fault_kills_the_worker_not_one_session_at_a_time(make_adapter):
    from services.streaming_worker import StreamingConfig, create_streaming_app

    adapter = make_adapter()
    fault = StickyFault(adapter, after=6)
    deaths = []
    app = create_streaming_app(StreamingConfig(token=TOKEN, warmup=False, max_sessions=8), adapter=adapter,
                               on_dead=deaths.append)
    with LiveServer(app) as srv:
        assert _health(srv).status_code == 200
        results = await asyncio.gather(*(_stream(srv, noise_audio(i, 3.0)) for i in range(4)))
        assert results == [([ErrorCode.UNAVAILABLE], CloseCode.INTERNAL)] * 4
        health = _health(srv)
        assert health.status_code == 503 and health.json()["status"] == "dead"
        # a newcomer is refused at once
        assert await _stream(srv, noise_audio(9, 0.5)) == ([ErrorCode.UNAVAILABLE], CloseCode.INTERNAL)
    engine = app.state.engine
    assert len(deaths) == 1 and "illegal memory access" in deaths[0]
    assert engine.isolation_steps == 0  # no 2B-1 retries of a batch that cannot succeed
    assert fault.calls == 7 and adapter.active_streams() == 0


async def test_a_killed_engine_loop_turns_health_to_503_and_refuses_sessions(make_adapter):
    from services.streaming_worker import StreamingConfig, create_streaming_app

    import threading

    deaths, died = [], threading.Event()
    app = create_streaming_app(StreamingConfig(token=TOKEN, warmup=False, max_sessions=8), adapter=make_adapter(),
                               on_dead=lambda reason: (deaths.append(reason), died.set()))
    with LiveServer(app) as srv:
        engine = app.state.engine
        task = engine._task
        task.get_loop().call_soon_threadsafe(task.cancel)  # the loop is killed, on its own event loop
        assert await asyncio.to_thread(died.wait, 30)
        assert _health(srv).status_code == 503
        assert await _stream(srv, noise_audio(1, 0.5)) == ([ErrorCode.UNAVAILABLE], CloseCode.INTERNAL)
    assert deaths and "loop ended" in deaths[0]


WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, "tests")
    from test_engine_failures import StickyFault
    from services.adapters.vectorised import VectorisedRNNTAdapter
    from services.server import drain
    from services.streaming_worker import StreamingConfig, create_streaming_app

    adapter = VectorisedRNNTAdapter(sys.argv[1], chunk_ms=160, max_streams=4)
    StickyFault(adapter, after=3)
    app = create_streaming_app(StreamingConfig(token="t0k3n", max_sessions=4, warmup=False), adapter=adapter)
    drain.serve(app, "127.0.0.1", int(sys.argv[2]), log_level="info")
""")


def test_the_worker_process_exits_non_zero_when_its_engine_dies(trained_rnnt, tmp_path):
    import socket

    import websockets.sync.client as ws_client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(trained_rnnt), str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:  # uvicorn says when it listens
            lines.append(line)
            if "Uvicorn running on" in line:
                break
        conn = ws_client.connect(f"ws://127.0.0.1:{port}/v1/listen", additional_headers={"Authorization": "Bearer t0k3n"})
        with conn:
            conn.recv()  # ready
            conn.send(to_pcm16(noise_audio(3, 2.0)))
            messages = []
            try:
                while True:
                    messages.append(conn.recv(timeout=60))
            except Exception:
                pass
        assert any('"unavailable"' in m for m in messages if isinstance(m, str))
        code = proc.wait(timeout=60)
        output = "".join(lines) + proc.stdout.read()
    finally:
        proc.kill()
    assert code != 0
    assert "can no longer serve" in output
