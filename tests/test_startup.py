"""Start-up as a user meets it: the device flag, where the weights come from, and one-line refusals.

Refusals are checked the way a user sees them (`nvasr serve ...` in a real process: one line,
no traceback, a non-zero exit) and in-process through `load_adapter` for the other cases.
Hub models are served from a real Hugging Face cache laid out on disk (offline), so the
revision pin, the fallback rule and the reported revision run through huggingface_hub itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ASSETS, multitalker_models

from services.devices import nemo_device_args, parse_device
from services.refusal import StartupRefusal
from services.streaming_worker import StreamingConfig, load_adapter, warm_up
from services.weights import DownloadError, fetch

NVASR = [sys.executable, "-m", "services.cli"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a commit of the fake hub cache below


# ---------------------------------------------------------------- the device flag


def test_device_specs_parse_once_into_torch_devices():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device(" CPU ") == torch.device("cpu")
    assert parse_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    for bad in ("gpu", "cuda:x", "cpu:1", "cuda:-1", "mps", ""):
        with pytest.raises(StartupRefusal, match="expected auto, cpu, cuda or cuda:N"):
            parse_device(bad)
    assert nemo_device_args("cpu") == ("cpu", -1)
    assert StreamingConfig(device="auto").device in ("cpu", "cuda:0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a missing GPU needs a machine without one")
def test_cuda_without_a_gpu_is_refused_at_config_time():
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(StartupRefusal, match="torch sees no CUDA GPU"):
            StreamingConfig(device=spec)


def test_cuda_n_names_gpu_n_and_a_missing_gpu_is_refused(monkeypatch):
    """With two GPUs (as torch reports them), cuda:1 is GPU 1 for NeMo's (type, id) constructors —
    never NeMo's silent fallback to GPU 0 — and cuda:2 is refused."""
    from services.adapters.streaming_config import pipeline_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_device("cuda") == torch.device("cuda", 0)
    assert parse_device("cuda:1") == torch.device("cuda", 1)
    assert nemo_device_args("cuda:1") == ("cuda", 1)
    assert StreamingConfig(device="cuda:1").device == "cuda:1"
    asr = pipeline_config("m.nemo", 160, 4, device="cuda:1")["asr"]
    assert (asr["device"], asr["device_id"]) == ("cuda", 1)
    with pytest.raises(StartupRefusal, match="has 2 CUDA GPU"):
        parse_device("cuda:2")


# ---------------------------------------------------------------- one-line refusals


def _serve(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(NVASR + ["serve", *args, "--token", "t", "--port", "0"], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, expected", [
    (["nemotron", "--model", str(ASSETS / "tiny_sortformer.nemo"), "--device", "cpu"],
     "nvasr: the nemotron worker needs a cache-aware RNNT ASR model (EncDecRNNTBPEModel or a subclass); "
     "tiny_sortformer.nemo is a SortformerEncLabelModel"),
    (["nemotron", "--model", str(ASSETS / "tiny_rnnt.nemo"), "--device", "cpu", "--chunk-ms", "1120"],
     "nvasr: --chunk-ms 1120 needs att_context_size [70,13]; tiny_rnnt.nemo was trained for [70,6]/[70,1]/[70,0] "
     "only (chunks: 80 ms, 160 ms, 560 ms)"),
])
def test_nvasr_serve_refuses_in_one_line(args, expected):
    done = _serve(*args)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == expected


def test_every_worker_refuses_a_model_it_cannot_serve(trained_rnnt):
    asr, diar = multitalker_models()
    sortformer = str(ASSETS / "tiny_sortformer.nemo")
    cases = [
        (dict(worker="parakeet-realtime", model=str(trained_rnnt)), "needs an end-of-utterance model"),
        (dict(worker="parakeet-realtime", model=str(ASSETS / "tiny_eou.nemo"), chunk_ms=560), "chunks of (80, 160) ms"),
        (dict(worker="multitalker", model=sortformer, diar_model=diar), "multitalker worker's ASR needs a cache-aware"),
        (dict(worker="multitalker", model=asr, diar_model=str(trained_rnnt)), "must be a streaming Sortformer"),
        (dict(worker="multitalker", model=asr, diar_model=diar, chunk_ms=80), "--chunk-ms 80 needs att_context_size"),
        (dict(worker="multitalker", model=asr, diar_model=diar, cuda_graphs=True), "--cuda-graphs is not supported"),
    ]
    for kwargs, message in cases:
        with pytest.raises(StartupRefusal, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_adapter(StreamingConfig(max_sessions=2, device="cpu", **kwargs))


def test_the_batch_worker_refuses_a_diarizer():
    from services.batch_worker import BatchConfig, load_batch_model

    with pytest.raises(StartupRefusal, match="needs an RNNT/TDT ASR model; .*SortformerEncLabelModel"):
        load_batch_model(BatchConfig(model=str(ASSETS / "tiny_sortformer.nemo"), device="cpu"))


# ---------------------------------------------------------------- weights: pins, fallback


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache holding `nvidia/fake-rnnt` (the trained tiny RNNT) and
    `nvidia/fake-sortformer` (the tiny diarizer under an ASR's name), each at COMMIT on main."""
    import huggingface_hub.constants as hf_constants

    for repo, asset in (("fake-rnnt", "tiny_rnnt.nemo"), ("fake-sortformer", "tiny_sortformer.nemo")):
        root = tmp_path / f"models--nvidia--{repo}"
        (root / "snapshots" / COMMIT).mkdir(parents=True)
        shutil.copy(ASSETS / asset, root / "snapshots" / COMMIT / f"{repo}.nemo")
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def test_a_hub_model_is_served_at_its_revision_and_reports_it(hub_cache):
    assert fetch("nvidia/fake-rnnt").revision == COMMIT
    for revision in (None, COMMIT):
        adapter = load_adapter(StreamingConfig(model="nvidia/fake-rnnt", model_revision=revision, max_sessions=2,
                                               device="cpu"))
        assert adapter.model_name == f"nvidia/fake-rnnt@{COMMIT}"  # what `ready` and /health report
    with pytest.raises(DownloadError, match="could not download nvidia/fake-rnnt at revision f{40}"):
        fetch("nvidia/fake-rnnt", "f" * 40)


def test_the_fallback_is_served_only_when_the_download_fails(hub_cache, trained_rnnt, capsys):
    fallback = str(ASSETS / "tiny_eou.nemo")
    # the pinned revision is not in the cache (offline): a download failure, so the fallback, loudly
    adapter = load_adapter(StreamingConfig(model="nvidia/fake-rnnt", model_revision="e" * 40,
                                           fallback_model=fallback, max_sessions=2, device="cpu"))
    assert adapter.model_name == fallback
    assert "NOTE: model nvidia/fake-rnnt could not be downloaded" in capsys.readouterr().out
    # downloaded fine but not servable: the cause stops the worker, the fallback is NOT served
    with pytest.raises(StartupRefusal, match="fake-sortformer.* is a SortformerEncLabelModel"):
        load_adapter(StreamingConfig(model="nvidia/fake-sortformer", fallback_model=fallback, max_sessions=2,
                                     device="cpu"))
    assert "NOTE" not in capsys.readouterr().out
    # without a fallback a failed download is a one-line refusal too
    with pytest.raises(DownloadError, match="could not download nvidia/not-cached"):
        load_adapter(StreamingConfig(model="nvidia/not-cached", max_sessions=2, device="cpu"))


# ---------------------------------------------------------------- CUDA graphs


def test_cuda_graphs_are_off_unless_asked_and_warm_up_runs_the_largest_batch(trained_rnnt):
    """Off by default, as in NeMo's reference streaming config; with --cuda-graphs the warm-up steps
    the engine's largest batch, so a GPU captures its graphs then and not while serving."""
    default = load_adapter(StreamingConfig(model=str(trained_rnnt), max_sessions=8, device="cpu"))
    assert default.wrapper.decoding_cfg.greedy.use_cuda_graph_decoder is False
    # without boosting no fusion model stands in the way (on a GPU NeMo's boosting keeps graphs
    # too when Triton is there; on this CPU it has no Triton and switches them off itself)
    off = load_adapter(StreamingConfig(model=str(trained_rnnt), max_sessions=8, device="cpu", boosting=False))
    assert off.greedy.computer.allow_cuda_graphs is False
    cfg = StreamingConfig(model=str(trained_rnnt), max_sessions=8, max_batch=6, device="cpu", cuda_graphs=True,
                          boosting=False)
    on = load_adapter(cfg)
    assert on.greedy.computer.allow_cuda_graphs is True
    computer, seen = on.greedy.computer, []
    original = type(computer).__call__

    def record(self, x, out_len, *args, **kwargs):
        seen.append(int(x.shape[0]))
        return original(self, x, out_len, *args, **kwargs)

    type(computer).__call__ = record
    try:
        warm_up(on, cfg)
    finally:
        type(computer).__call__ = original
    assert max(seen) == 6 and on.active_streams() == 0


def test_an_unpinned_model_stays_at_the_commit_its_first_build_recorded(hub_cache, tmp_path):
    """modal_deploy's image build: a pin wins; without one the first build's commit is kept."""
    from services.weights import lock_revisions, locked_revision

    lock = str(tmp_path / "revisions.json")
    assert lock_revisions({"nvidia/fake-rnnt": None, str(ASSETS / "tiny_rnnt.nemo"): None}, lock) == {
        "nvidia/fake-rnnt": COMMIT}
    assert locked_revision("nvidia/fake-rnnt", None, lock) == COMMIT
    assert locked_revision("nvidia/fake-rnnt", "9" * 40, lock) == "9" * 40
    assert locked_revision(str(ASSETS / "tiny_rnnt.nemo"), None, lock) is None
    # main moves on (a retrained checkpoint): the next build still serves the recorded commit
    newer = "fedcba9876543210fedcba9876543210fedcba98"
    root = Path(hub_cache) / "models--nvidia--fake-rnnt"
    shutil.copytree(root / "snapshots" / COMMIT, root / "snapshots" / newer)
    (root / "refs" / "main").write_text(newer)
    assert lock_revisions({"nvidia/fake-rnnt": None}, lock)["nvidia/fake-rnnt"] == COMMIT
    assert lock_revisions({"nvidia/fake-rnnt": newer}, lock)["nvidia/fake-rnnt"] == newer  # pinned on purpose
