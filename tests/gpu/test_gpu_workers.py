"""Every worker end to end on the device: a real server, real WebSocket clients, the models of
production size (random weights) and the trained tiny ones; the multitalker; the batch worker."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from conftest import ASSETS, TOKEN, LiveServer, clip_set, conversation, multitalker_models, to_pcm16

from pipecat_nvasr.client import ListenClient, stream_pcm
from pipecat_nvasr.protocol import Closed, Error, Final

from .conftest import DEVICE, FULL_SIZE

pytestmark = pytest.mark.gpu


async def _stream(srv, samples) -> list:
    async with ListenClient(srv.ws, token=TOKEN) as client:
        sender = asyncio.create_task(stream_pcm(client, to_pcm16(samples), realtime=False))
        events = [e async for e in client.events()]
        await sender
    return events


def _serve(**kwargs):
    from services.streaming_worker import StreamingConfig, create_streaming_app

    return create_streaming_app(StreamingConfig(device=DEVICE, token=TOKEN, max_sessions=8, max_batch=8, **kwargs))


@pytest.mark.parametrize("worker, model, words", [
    ("nemotron", FULL_SIZE["nemotron"], False),
    ("nemotron", str(ASSETS / "tiny_rnnt.nemo"), True),
    ("parakeet-realtime", FULL_SIZE["parakeet-realtime"], False),
    ("parakeet-realtime", str(ASSETS / "tiny_eou.nemo"), True),
])
async def test_streaming_worker_end_to_end(worker, model, words):
    """Four clients at once; every session ends `closed`, trained models write the clip's words."""
    clips = clip_set("heldout")[:4]
    app = _serve(worker=worker, model=model)
    with LiveServer(app) as srv:
        health = httpx.get(f"{srv.http}/health", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        runs = await asyncio.gather(*[_stream(srv, np.concatenate([c["samples"], np.zeros(16000, np.float32)]))
                                      for c in clips])
    adapter = app.state.engine.adapter
    assert str(adapter.device).startswith(DEVICE.split(":")[0]) and health["model_streams"] == 0
    for clip, events in zip(clips, runs):
        assert isinstance(events[-1], Closed) and not any(isinstance(e, Error) for e in events)
        if words:
            text = " ".join(e.text for e in events if isinstance(e, Final) and e.text)
            assert set(text.split()) & set(clip["text"].split()), (clip["text"], text)
    assert adapter.active_streams() == 0


async def test_multitalker_end_to_end():
    asr, diar = multitalker_models()
    app = _serve(worker="multitalker", model=asr, diar_model=diar)
    _, samples = conversation(0)
    with LiveServer(app) as srv:
        events = await _stream(srv, samples[: 6 * 16000])
    assert isinstance(events[-1], Closed) and not any(isinstance(e, Error) for e in events)
    speakers = {e.speaker for e in events if isinstance(e, Final) and e.text}
    assert {"spk0", "spk1"} <= speakers, speakers


def test_batch_worker_on_the_device():
    from services.batch_worker import BatchConfig, load_batch_model

    model = load_batch_model(BatchConfig(model=str(ASSETS / "tiny_rnnt.nemo"), device=DEVICE))
    clips = clip_set("heldout")[:8]
    out = model.transcribe([c["samples"] for c in clips])
    assert str(model.device).startswith(DEVICE.split(":")[0])
    hits = sum(bool(set(t.text.split()) & set(c["text"].split())) for t, c in zip(out, clips))
    assert hits >= 6, [(t.text, c["text"]) for t, c in zip(out, clips)]
