"""One failing stream fails alone: a batched step that raises is split until only the stream
that makes the model fail is left; every other stream's transcript is exactly what it would
have been (float64, the real tiny RNNT), through the engine and through the real server."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from conftest import TOKEN, LiveServer, noise_audio, to_pcm16

from pipecat_nvasr.client import ListenClient
from pipecat_nvasr.protocol import Closed, CloseCode, Error, ErrorCode, Final
from reference.cache_aware import CacheAwareRNNTAdapter
from services.engine.core import EngineCore
from services.streaming_worker import StreamingConfig, create_streaming_app

STREAMS = 16
POISONED = 7  # the 7th stream the adapter sees makes every step it is in raise


class PoisonedAdapter(CacheAwareRNNTAdapter):
    """The real adapter, except that one stream (from its third chunk on) breaks the model.

    It raises before touching any state, as the adapter contract asks (an atomic step)."""

    def __init__(self, *args, poison: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.poison = poison
        self.seen: list[int] = []
        self.chunks: dict[int, int] = {}
        self.raised = 0

    def prepare(self, items):
        for item in items:
            if item.stream_id >= 0 and item.stream_id not in self.seen:
                self.seen.append(item.stream_id)
            self.chunks[item.stream_id] = self.chunks.get(item.stream_id, 0) + 1
        bad = self.poison and len(self.seen) >= POISONED and any(
            item.stream_id == self.seen[POISONED - 1] and self.chunks[item.stream_id] >= 3 for item in items
        )
        if bad:
            for item in items:  # the step did not happen: undo the bookkeeping above
                self.chunks[item.stream_id] -= 1
            self.raised += 1
            raise RuntimeError("this stream's input makes the model fail (simulated)")
        return super().prepare(items)


@pytest.fixture(scope="module")
def make_adapter(tiny_rnnt):
    def make(poison: bool):
        return PoisonedAdapter(str(tiny_rnnt), chunk_ms=160, max_streams=32, dtype="float64", poison=poison)

    return make


def _audio(seed: int):
    return noise_audio(seed, 1.6 + 0.16 * (seed % 4))


async def _run_engine(adapter) -> list:
    engine = EngineCore(adapter, max_batch=STREAMS)
    await engine.start()
    sessions = [engine.open() for _ in range(STREAMS)]

    async def one(index, session):
        engine.append(session, _audio(index))  # a backlog: every step holds all 16 streams
        engine.close(session)
        events = []
        while not events or not isinstance(events[-1], (Closed, Error)):
            events.append(await asyncio.wait_for(session.outbox.get(), 60))
        return events

    results = await asyncio.gather(*(one(i, s) for i, s in enumerate(sessions)))
    stats = (engine.failed_streams, engine.isolation_steps, adapter.active_streams())
    await engine.stop()
    return results, stats


def _texts(events) -> list[str]:
    return [e.text for e in events if isinstance(e, Final)]


async def test_a_stream_that_breaks_the_model_fails_alone_and_the_rest_are_exact(make_adapter):
    clean, _ = await _run_engine(make_adapter(poison=False))
    adapter = make_adapter(poison=True)
    poisoned, (failed, isolation_steps, active) = await _run_engine(adapter)

    assert adapter.raised >= 1
    errors = [i for i, events in enumerate(poisoned) if isinstance(events[-1], Error)]
    assert len(errors) == 1, f"sessions that failed: {errors}"
    assert poisoned[errors[0]][-1].code == ErrorCode.INTERNAL
    assert failed == 1 and isolation_steps >= 2
    for index in range(STREAMS):
        if index != errors[0]:
            assert isinstance(poisoned[index][-1], Closed)
            assert _texts(poisoned[index]) == _texts(clean[index]), f"stream {index} changed"
    assert active == 0, "the failed stream's model state was not released"


async def test_through_the_server_only_the_failing_session_is_closed_1011(make_adapter):
    adapter = make_adapter(poison=True)
    app = create_streaming_app(StreamingConfig(token=TOKEN, warmup=False, max_sessions=32), adapter=adapter)

    async def one(index, srv, start):
        async with ListenClient(srv.ws, token=TOKEN) as client:
            await start.wait()
            await client.send_audio(to_pcm16(_audio(index)))
            await client.close()
            events = [e async for e in client.events()]
            await asyncio.wait_for(client._ws.wait_closed(), 10)
            return events, client._ws.close_code

    with LiveServer(app) as srv:
        start = asyncio.Event()
        tasks = [asyncio.create_task(one(i, srv, start)) for i in range(STREAMS)]
        await asyncio.sleep(0.5)
        start.set()
        results = await asyncio.gather(*tasks)
        metrics = httpx.get(srv.http + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text

    failed = [(events, code) for events, code in results if any(isinstance(e, Error) for e in events)]
    assert len(failed) == 1
    events, code = failed[0]
    assert next(e for e in events if isinstance(e, Error)).code == ErrorCode.INTERNAL
    assert code == CloseCode.INTERNAL
    closed = [code for events, code in results if isinstance(events[-1], Closed)]
    assert closed == [CloseCode.NORMAL] * (STREAMS - 1)
    assert "nvasr_failed_streams_total 1.0" in metrics
