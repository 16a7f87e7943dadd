"""modal_deploy.py imports offline and its classes serve the real app (run locally, never deployed)."""

from __future__ import annotations

import asyncio
import importlib
import sys

import pytest
from conftest import TOKEN, LiveServer, noise_audio, to_pcm16

from pipecat_nvasr.client import ListenClient, stream_pcm
from pipecat_nvasr.protocol import Closed, Final


@pytest.fixture(scope="module")
def deploy(tiny_rnnt, tiny_eou, monkeypatch_module):
    monkeypatch_module.setenv("NVASR_NEMOTRON_MODEL", str(tiny_rnnt))
    monkeypatch_module.setenv("NVASR_REALTIME_MODEL", str(tiny_eou))
    monkeypatch_module.setenv("NVASR_REALTIME_SESSIONS", "16")
    monkeypatch_module.setenv("NVASR_DEVICE", "cpu")
    monkeypatch_module.setenv("NVASR_NEMOTRON_SESSIONS", "16")
    monkeypatch_module.setenv("NVASR_TOKEN", TOKEN)
    monkeypatch_module.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch_module.delenv("MODAL_TOKEN_SECRET", raising=False)
    sys.modules.pop("modal_deploy", None)
    module = importlib.import_module("modal_deploy")
    yield module
    sys.modules.pop("modal_deploy", None)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_deploy_shape(deploy):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        functions = deploy.app.registered_functions
    spec = functions["Nemotron.*"]._spec_
    assert spec.gpus == deploy.GPU == "H100"
    assert "/cache" in spec.volumes and spec.secrets
    assert deploy.SESSION_TIMEOUT_S >= 3600
    assert set(deploy.Nemotron._get_partial_functions()) >= {"load", "serve", "web"}


async def test_nemotron_class_serves_the_streaming_app(deploy):
    """The Modal class's enter hooks + ASGI app, run in-process on CPU with the tiny model."""
    asgi = await asyncio.to_thread(lambda: deploy.Nemotron().web.local())
    with LiveServer(asgi) as srv:
        async with ListenClient(srv.ws, token=TOKEN) as client:
            sender = asyncio.create_task(stream_pcm(client, to_pcm16(noise_audio(3, 1.0)), realtime=False))
            events = [e async for e in client.events()]
            await sender
    assert isinstance(events[-1], Closed) and any(isinstance(e, Final) for e in events)


async def test_parakeet_realtime_class_serves_the_eou_worker(deploy):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = deploy.app.registered_functions["ParakeetRealtime.*"]._spec_
    assert spec.gpus == deploy.REALTIME_GPU == "L4"
    asgi = await asyncio.to_thread(lambda: deploy.ParakeetRealtime().web.local())
    assert asgi.state.engine.adapter.__class__.__name__ == "VectorisedEOUAdapter"
    with LiveServer(asgi) as srv:
        async with ListenClient(srv.ws, token=TOKEN) as client:
            sender = asyncio.create_task(stream_pcm(client, to_pcm16(noise_audio(4, 1.0)), realtime=False))
            events = [e async for e in client.events()]
            await sender
    assert isinstance(events[-1], Closed) and any(isinstance(e, Final) for e in events)
