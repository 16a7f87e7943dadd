"""modal_deploy.py imports offline and its classes serve the real app (run locally, never deployed)."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TOKEN, LiveServer, conversation, multitalker_models, noise_audio, to_pcm16

from pipecat_nvasr.client import ListenClient, stream_pcm
from pipecat_nvasr.protocol import Closed, Final


@pytest.fixture(scope="module")
def deploy(tiny_rnnt, tiny_eou, monkeypatch_module):
    monkeypatch_module.setenv("NVASR_NEMOTRON_MODEL", str(tiny_rnnt))
    monkeypatch_module.setenv("NVASR_REALTIME_MODEL", str(tiny_eou))
    monkeypatch_module.setenv("NVASR_REALTIME_SESSIONS", "16")
    monkeypatch_module.setenv("NVASR_DEVICE", "cpu")
    monkeypatch_module.setenv("NVASR_NEMOTRON_SESSIONS", "16")
    monkeypatch_module.setenv("NVASR_NEMOTRON35_MODEL", str(Path(__file__).parent / "assets" / "tiny_multilingual.nemo"))
    monkeypatch_module.setenv("NVASR_NEMOTRON35_SESSIONS", "8")
    asr, diar = multitalker_models()
    monkeypatch_module.setenv("NVASR_MULTITALKER_MODEL", asr)
    monkeypatch_module.setenv("NVASR_MULTITALKER_DIAR_MODEL", diar)
    monkeypatch_module.setenv("NVASR_MULTITALKER_SESSIONS", "4")
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


async def test_nemotron35_class_serves_languages_per_session(deploy):
    """The multilingual class: its engine runs the prompt adapter, and a Spanish session is one."""
    asgi = await asyncio.to_thread(lambda: deploy.Nemotron35().web.local())
    assert asgi.state.engine.adapter.__class__.__name__ == "MultilingualRNNTAdapter"
    with LiveServer(asgi) as srv:
        async with ListenClient(srv.ws, token=TOKEN, language="es") as client:
            assert client.ready.language == "es-ES" and "auto" in client.ready.languages
            sender = asyncio.create_task(stream_pcm(client, to_pcm16(noise_audio(5, 1.0)), realtime=False))
            events = [e async for e in client.events()]
            await sender
    assert isinstance(events[-1], Closed)
    assert all(e.language == "es-ES" for e in events if isinstance(e, Final) and e.text)


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


async def test_multitalker_class_serves_speaker_labels(deploy):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = deploy.app.registered_functions["Multitalker.*"]._spec_
    assert spec.gpus == deploy.MULTITALKER_GPU == "H100"
    asgi = await asyncio.to_thread(lambda: deploy.Multitalker().web.local())
    assert asgi.state.engine.adapter.__class__.__name__ == "MultitalkerAdapter"
    assert asgi.state.engine.max_sessions == deploy.MULTITALKER_SESSIONS == 4
    _, samples = conversation(0)
    with LiveServer(asgi) as srv:
        async with ListenClient(srv.ws, token=TOKEN) as client:
            sender = asyncio.create_task(stream_pcm(client, to_pcm16(samples[: 6 * 16000]), realtime=False))
            events = [e async for e in client.events()]
            await sender
    finals = [e for e in events if isinstance(e, Final) and e.text]
    assert isinstance(events[-1], Closed) and finals
    assert {e.speaker for e in finals} >= {"spk0", "spk1"}


# What a process that imported modal_deploy.py says it would serve and what it tells Modal.
REPORT = r"""
import json, warnings
warnings.simplefilter("ignore")
import modal_deploy as d
from modal._utils.async_utils import synchronizer

def container_env(name):
    env = {}
    for secret in d.app.registered_functions[name]._spec_.secrets:
        load = synchronizer._translate_in(secret)._load_env_dict
        if load is not None:  # `env=` on the class becomes an inline secret
            env.update(load())
    return env

print(json.dumps({
    "served": {"Nemotron": d.Nemotron.config, "ParakeetRealtime": d.ParakeetRealtime.config,
               "Multitalker": d.Multitalker.config, "Parakeet": d.Parakeet.config},
    "pins": d.PINS,
    "offline": {n: d.SERVING_ENV.get("HF_HUB_OFFLINE") for n in ("Nemotron",)},
    "concurrency": {"Nemotron": d.NEMOTRON_SESSIONS, "ParakeetRealtime": d.REALTIME_SESSIONS,
                    "Multitalker": d.MULTITALKER_SESSIONS,
                    "Parakeet": d.PARAKEET_INPUTS, "ParakeetSegmenter": d.SEGMENTER_SESSIONS},
    "gpus": {n: d.app.registered_functions[n + ".*"]._spec_.gpus
             for n in ("Nemotron", "ParakeetRealtime", "Multitalker", "Parakeet")},
    "scaling": {n: getattr(d, "_scaling", lambda p: None)(n) for n in ("NEMOTRON", "REALTIME", "MULTITALKER", "PARAKEET")},
    "container_env": {n: container_env(n + ".*")
                      for n in ("Nemotron", "ParakeetRealtime", "Multitalker", "Parakeet", "ParakeetSegmenter")},
}))
"""


def _import_report(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", REPORT], env=env, cwd=Path(__file__).parent.parent,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_containers_serve_the_deploy_time_settings(tmp_path):
    """Deploy with custom settings; then import the module as a container does: a fresh
    interpreter with none of the deploying shell's NVASR_* variables, only the environment
    the deployment gave the class. It must serve what was deployed."""
    root = str(Path(__file__).parent.parent)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NVASR_", "MODAL_TOKEN_"))}
    base["PYTHONPATH"] = root
    deploy_env = dict(
        base,
        NVASR_GPU="L40S",
        NVASR_NEMOTRON_MODEL=str(tmp_path / "custom-nemotron.nemo"),
        NVASR_NEMOTRON_CHUNK_MS="80",
        NVASR_NEMOTRON_SESSIONS="48",
        NVASR_NEMOTRON_MIN_CONTAINERS="1",
        NVASR_NEMOTRON_BUFFER_CONTAINERS="2",
        NVASR_REALTIME_SESSIONS="24",
        NVASR_STREAMING_MAX_BATCH="32",
        NVASR_PARAKEET_MODEL="nvidia/parakeet-tdt-0.6b-v2",
        NVASR_PARAKEET_MAX_BATCH="64",
        NVASR_MULTITALKER_DIAR_MODEL=str(tmp_path / "custom-sortformer.nemo"),
        NVASR_MULTITALKER_GPU="A100-80GB",
        NVASR_MULTITALKER_CHUNK_MS="80",
        NVASR_MULTITALKER_SESSIONS="12",
        NVASR_MULTITALKER_MIN_CONTAINERS="1",
        NVASR_PARAKEET_REVISION="1" * 40,  # a pin overridden at deploy time
    )
    deployed = _import_report(deploy_env)
    for name, carried in deployed["container_env"].items():
        # the container: the image's environment plus the class's `env`, nothing from the deploy shell
        in_container = _import_report(dict(base, MODAL_IS_REMOTE="1", **carried))
        assert in_container["served"] == deployed["served"], name
        assert in_container["concurrency"] == deployed["concurrency"], name
        assert in_container["gpus"] == deployed["gpus"], name
        assert in_container["pins"] == deployed["pins"], name

    # every hub model is pinned to a commit (or, unknown here, locked at the first image build);
    # the serving containers never reach the hub, so a redeploy cannot change the model
    assert deployed["pins"]["nvidia/parakeet-tdt-0.6b-v2"] == "1" * 40
    assert deployed["pins"]["nvidia/multitalker-parakeet-streaming-0.6b-v1"] is None  # unknown: locked at build
    assert deployed["offline"]["Nemotron"] == "1"
    nemotron = deployed["served"]["Nemotron"]
    assert nemotron["model"].endswith("custom-nemotron.nemo") and nemotron["chunk_ms"] == 80
    assert nemotron["max_sessions"] == deployed["concurrency"]["Nemotron"] == 48
    assert deployed["served"]["ParakeetRealtime"]["max_sessions"] == deployed["concurrency"]["ParakeetRealtime"] == 24
    assert deployed["gpus"]["Nemotron"] == "L40S"
    assert deployed["scaling"]["NEMOTRON"] == {"min_containers": 1, "buffer_containers": 2}
    assert deployed["scaling"]["PARAKEET"] == {"min_containers": None, "buffer_containers": None}

    multitalker = deployed["served"]["Multitalker"]
    assert multitalker["worker"] == "multitalker"
    assert multitalker["model"] == "nvidia/multitalker-parakeet-streaming-0.6b-v1"  # the default
    assert multitalker["diar_model"].endswith("custom-sortformer.nemo") and multitalker["chunk_ms"] == 80
    assert multitalker["max_sessions"] == deployed["concurrency"]["Multitalker"] == 12
    assert multitalker["max_batch"] == 32
    assert deployed["gpus"]["Multitalker"] == "A100-80GB" and deployed["gpus"]["Nemotron"] == "L40S"
    assert deployed["scaling"]["MULTITALKER"] == {"min_containers": 1, "buffer_containers": None}
