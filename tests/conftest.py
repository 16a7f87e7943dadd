"""Shared fixtures: tiny NeMo models, a real uvicorn server on 127.0.0.1, speech assets.

NeMo is imported once per pytest process (8 s, 800 MB), so models and servers are
session-scoped wherever a test does not change them.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
for _var in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):  # a stray cloud call fails at once
    os.environ.pop(_var, None)

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ASSETS = Path(__file__).parent / "assets"
TOKEN = "test-token"


def pytest_ignore_collect(collection_path, config):
    """tests/gpu is collected only when asked for with `-m gpu` (`make gpu-check`): the CPU run
    neither imports nor skips it."""
    if collection_path == Path(__file__).parent / "gpu" and "gpu" not in (config.getoption("markexpr") or ""):
        return True
    return None


def pytest_configure(config):
    import torch

    torch.set_num_threads(2)
    _admission_off_unless_asked()


def _admission_off_unless_asked() -> None:
    """Admission control refuses new sessions whenever the worker runs 500 ms late — which a
    loaded CI machine does now and then, in tests about something else. In-process workers here
    start with it off; the tests of admission and shedding (test_overload_drain.py) ask for it,
    and workers started through the CLI keep the production default."""
    from services.streaming_worker import StreamingConfig

    init = StreamingConfig.__init__

    def without_admission(self, *args, **kwargs):
        kwargs.setdefault("admit_lag_ms", None)
        kwargs.setdefault("shed_lag_s", None)
        init(self, *args, **kwargs)

    StreamingConfig.__init__ = without_admission


@pytest.fixture(scope="session")
def tiny_rnnt(tmp_path_factory) -> Path:
    """A random-weight cache-aware RNNT (d64 × 2 layers) as a .nemo file."""
    from services.tiny_model import save_tiny_model

    work = tmp_path_factory.mktemp("tiny")
    return save_tiny_model(work / "rnnt.nemo", work, seed=0)


@pytest.fixture(scope="session")
def tiny_eou(tmp_path_factory) -> Path:
    """A random-weight end-of-utterance RNNT (EncDecRNNTBPEEOUModel, <EOU>/<EOB> last)."""
    from services.tiny_model import save_tiny_model

    work = tmp_path_factory.mktemp("tiny_eou")
    return save_tiny_model(work / "eou.nemo", work, seed=0, eou=True)


@pytest.fixture(scope="session")
def trained_rnnt() -> Path:
    """The project's own small model trained on synthetic speech (tools/tiny_model)."""
    path = ASSETS / "tiny_rnnt.nemo"
    assert path.exists(), "tests/assets/tiny_rnnt.nemo is missing: run tools/tiny_model"
    return path


def clip_set(folder: str) -> list[dict]:
    """A committed clip folder's manifest entries, each with its 16 kHz float32 `samples` loaded."""
    import soundfile as sf

    items = json.loads((ASSETS / folder / "manifest.json").read_text())
    for item in items:
        item["samples"], rate = sf.read(ASSETS / folder / item["audio"], dtype="float32")
        assert rate == 16000
    return items


@pytest.fixture(scope="session")
def heldout() -> list[dict]:
    """Held-out utterances, one per clip: [{'audio': file name, 'text': str, 'samples': ...}]."""
    return clip_set("heldout")


@pytest.fixture(scope="session")
def eou_set() -> list[dict]:
    """Clips of 2-3 held-out utterances ~1.2 s apart, with each utterance's true speech end."""
    return clip_set("eou")


@pytest.fixture(scope="session")
def pause_set() -> list[dict]:
    """Held-out sentences cut by one 0.15-0.3 s mid-sentence pause: each is one turn."""
    return clip_set("pause")


def multitalker_models() -> tuple[str, str]:
    """(ASR, diarizer) of a multitalker worker: the tiny trained models (tools/multitalker)."""
    return str(ASSETS / "tiny_multitalker.nemo"), str(ASSETS / "tiny_sortformer.nemo")


def conversation(index: int) -> tuple[dict, np.ndarray]:
    """A held-out two-voice conversation (tests/assets/conversations): its manifest row, 16 kHz samples."""
    import soundfile as sf

    folder = ASSETS / "conversations"
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]
    samples, rate = sf.read(folder / rows[index]["audio_filepath"], dtype="float32")
    assert rate == 16000
    return rows[index], samples


def noise_audio(seed: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def to_pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


class LiveServer:
    """A real uvicorn server for an ASGI app on 127.0.0.1, in a background thread."""

    def __init__(self, app):
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", ws_max_size=4 * 1024 * 1024)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
