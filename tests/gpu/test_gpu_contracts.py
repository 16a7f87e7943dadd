"""The GPU contracts the CPU suite can only approximate: CUDA-graph decoding at shrinking and
growing batches, bfloat16 on the device, every step tensor on the device, and `cuda:1`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ASSETS, clip_set

from services.engine.adapter import StepItem

from .conftest import BATCHES, DEVICE, FULL_SIZE

pytestmark = pytest.mark.gpu


def _adapter(model, max_streams=max(BATCHES), **kwargs):
    from services.adapters.vectorised import VectorisedRNNTAdapter

    return VectorisedRNNTAdapter(model, chunk_ms=160, max_streams=max_streams, device=DEVICE, **kwargs)


def _rounds(adapter, clips) -> list[list[str]]:
    """One round per batch size in BATCHES (32 → 8 → 1 → 48): that many streams, each a held-out
    clip, stepped together to their last chunk. NeMo's CUDA-graph decoder keeps buffers for the
    largest batch it has seen and pads smaller ones: this is where a row mix-up would show."""
    texts = []
    for size in BATCHES:
        audios = [np.concatenate([clips[i % len(clips)]["samples"], np.zeros(8000, np.float32)]) for i in range(size)]
        n, pos, out = adapter.chunk_samples, [0] * size, [[] for _ in range(size)]
        while any(p is not None for p in pos):
            items = []
            for i, audio in enumerate(audios):
                if pos[i] is not None:
                    start = pos[i]
                    last = start + n >= len(audio)
                    items.append(StepItem(i, audio[start : start + n], start == 0, last))
                    pos[i] = None if last else start + n
            for item, result in zip(items, adapter.step(items)):
                out[item.stream_id] += [f.text for f in result.finals]
        texts.append([" ".join(t) for t in out])
        assert adapter.active_streams() == 0
    return texts


@pytest.mark.parametrize("model", [str(ASSETS / "tiny_rnnt.nemo"), FULL_SIZE["nemotron"]])
def test_cuda_graphs_on_and_off_give_identical_tokens_as_batches_shrink_and_grow(model):
    clips = clip_set("heldout")
    off = _rounds(_adapter(model, dtype="float32", boosting=False), clips)
    graphs = _adapter(model, dtype="float32", boosting=False, cuda_graphs=True)
    on = _rounds(graphs, clips)
    assert on == off
    if DEVICE.startswith("cuda"):  # the graphs really ran
        assert graphs.greedy.computer.cuda_graphs_mode is not None
    if "tiny_rnnt" in model:
        assert any(t for r in off for t in r)


def test_bfloat16_on_the_device_is_within_the_cpu_tolerances():
    """tests/test_bf16.py's tolerances, with the device's bfloat16 kernels."""
    from test_bf16 import TOKEN_DISAGREEMENT_MAX, WER_WORSE_MAX, _stream_all, _token_disagreement, _wer

    items = clip_set("heldout")
    audios = [np.concatenate([it["samples"], np.zeros(16000, np.float32)]) for it in items]
    refs = [it["text"] for it in items]
    fp32 = _adapter(str(ASSETS / "tiny_rnnt.nemo"), len(audios), dtype="float32")
    hyp32, _ = _stream_all(fp32, audios)
    hyp16, _ = _stream_all(_adapter(str(ASSETS / "tiny_rnnt.nemo"), len(audios), dtype="bfloat16"), audios)
    assert _token_disagreement(fp32, hyp16, hyp32) <= TOKEN_DISAGREEMENT_MAX
    assert _wer(hyp16, refs) <= _wer(hyp32, refs) + WER_WORSE_MAX


def test_every_tensor_of_the_stream_state_lives_on_the_device():
    adapter = _adapter(str(ASSETS / "tiny_rnnt.nemo"))
    clip = clip_set("heldout")[0]["samples"]
    adapter.step([StepItem(1, clip[: adapter.chunk_samples], True, False)])
    device = torch.device(DEVICE if DEVICE != "cuda" else "cuda:0")
    store = vars(adapter.store)
    tensors = {k: v for k, v in store.items() if isinstance(v, torch.Tensor)}
    tensors.update({f"{k}[{i}]": t for k, v in store.items() if isinstance(v, (list, tuple))
                    for i, t in enumerate(v) if isinstance(t, torch.Tensor)})
    assert tensors and {k for k, t in tensors.items() if t.device != device} == set()
    assert {p.device for p in adapter.wrapper.asr_model.parameters()} == {device}
    adapter.release(1)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_cuda_1_runs_on_gpu_1():
    from services.streaming_worker import StreamingConfig, load_adapter, warm_up

    asr, diar = str(ASSETS / "tiny_multitalker.nemo"), str(ASSETS / "tiny_sortformer.nemo")
    cfg = StreamingConfig(worker="multitalker", model=asr, diar_model=diar, device="cuda:1", max_sessions=2,
                          cuda_graphs=True)
    adapter = load_adapter(cfg)
    warm_up(adapter, cfg)
    one = torch.device("cuda", 1)
    assert {p.device for p in adapter.asr.wrapper.asr_model.parameters()} == {one}
    assert {p.device for p in adapter.diar.model.parameters()} == {one}
