"""Many sessions one after another leave no slot, no state and no memory behind."""

from __future__ import annotations

import asyncio
import gc
import resource

import httpx
from conftest import TOKEN, LiveServer, noise_audio, to_pcm16

from pipecat_nvasr.client import ListenClient
from pipecat_nvasr.protocol import Closed, Final
from services.streaming_worker import StreamingConfig, create_streaming_app


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _session(srv, pcm: bytes, finalize: bool) -> list:
    async with ListenClient(srv.ws, token=TOKEN) as client:
        await client.send_audio(pcm)
        if finalize:
            await client.finalize()
        await client.close()
        return [e async for e in client.events()]


async def test_thousand_sequential_sessions_keep_slots_and_memory_flat(tiny_rnnt):
    cfg = StreamingConfig(model=str(tiny_rnnt), max_sessions=8, token=TOKEN, warmup=False)
    app = create_streaming_app(cfg)
    pcm = to_pcm16(noise_audio(42, 0.3))
    with LiveServer(app) as srv:
        for i in range(100):  # warm up allocators and caches
            await _session(srv, pcm, finalize=i % 2 == 0)
        gc.collect()
        before = _rss_mb()
        for i in range(1000):
            events = await _session(srv, pcm, finalize=i % 2 == 0)
            assert isinstance(events[-1], Closed) and any(isinstance(e, Final) for e in events)
        gc.collect()
        growth = _rss_mb() - before
        health = httpx.get(srv.http + "/health", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    engine = app.state.engine
    assert health["sessions"] == 0 and health["model_streams"] == 0
    assert not engine.sessions and engine.adapter.active_streams() == 0
    leftovers = getattr(engine.adapter, "_processed", None) or getattr(engine.adapter, "_boost_cfg", None)
    assert not leftovers, "per-stream bookkeeping leaked"
    assert growth < 40, f"memory grew by {growth:.1f} MB over 1000 sessions"


def _open_fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


async def test_two_thousand_mixed_sessions_leave_nothing_behind():
    """The CI version of benchmarks/soak.py: closes, finalize-then-close, abrupt disconnects, bad
    input and oversized frames, 16 at a time, with no model (the host side is what is tested)."""
    from benchmarks.soak import run_soak

    # admission control off: a loaded CI machine's event-loop hiccups are not what this tests
    cfg = StreamingConfig(model="null", max_sessions=64, token=TOKEN, warmup=False, admit_lag_ms=None)
    app = create_streaming_app(cfg)
    with LiveServer(app) as srv:
        port = int(srv.http.rsplit(":", 1)[1])
        warm = await run_soak("127.0.0.1", port, 200, concurrency=16, token=TOKEN)
        assert not warm["failures"], warm["failures"]
        gc.collect()
        rss0, fds0 = _rss_mb(), _open_fds()
        result = await run_soak("127.0.0.1", port, 2000, concurrency=16, token=TOKEN)
        await asyncio.sleep(0.5)  # the server finishes tearing the last sockets down
        gc.collect()
        rss_growth, fds_growth = _rss_mb() - rss0, _open_fds() - fds0
        auth = {"Authorization": f"Bearer {TOKEN}"}
        health = httpx.get(srv.http + "/health", headers=auth).json()
        metrics = httpx.get(srv.http + "/metrics", headers=auth).text
    engine = app.state.engine
    assert not result["failures"], (result["failures"], engine.refused)
    assert health["sessions"] == 0 and health["model_streams"] == 0
    assert not engine.sessions and engine.adapter.active_streams() == 0 and not len(engine._ready)
    assert not app.state.listen_state.connections
    assert "nvasr_active_sessions 0.0" in metrics
    assert fds_growth <= 2, f"{fds_growth} file descriptors leaked over 2000 sessions"
    assert rss_growth < 30, f"memory grew by {rss_growth:.1f} MB over 2000 sessions"
