"""Many sessions one after another leave no slot, no state and no memory behind."""

from __future__ import annotations

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
