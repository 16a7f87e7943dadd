"""bfloat16 (the GPU default, docs/gpu.md) against float32 on the trained tiny models, on the CPU.

The same held-out clips stream, batched, through the vectorised step with float32 weights
and with bfloat16 weights (cast for real: NeMo's own device setup would compute in float32
on a CPU whatever was asked). Tolerances, stated: bfloat16 transcripts differ from float32's
on at most 5 % of tokens, and bfloat16's WER is at most 3 points above float32's. Measured
here (2026-12, 24 held-out clips, 160 ms chunks): RNNT 2.5 % of words differ, WER 7.3 % →
5.7 %; EOU model (8 three-utterance clips): identical transcripts and turn ends.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ASSETS, clip_set

from services.engine.adapter import StepItem

TOKEN_DISAGREEMENT_MAX = 5.0  # % of float32's tokens that bfloat16 may change
WER_WORSE_MAX = 3.0  # points bfloat16's WER may exceed float32's


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine a second one spins waiting for a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _stream_all(adapter, audios) -> tuple[list[str], list[int]]:
    """Every clip as its own stream, all batched; each stream's finals joined, and its EOU count."""
    n, pos = adapter.chunk_samples, [0] * len(audios)
    texts: list[list[str]] = [[] for _ in audios]
    turns = [0] * len(audios)
    while any(p is not None for p in pos):
        items = []
        for i, audio in enumerate(audios):
            if pos[i] is not None:
                start = pos[i]
                last = start + n >= len(audio)
                items.append(StepItem(i, audio[start : start + n], start == 0, last))
                pos[i] = None if last else start + n
        for item, out in zip(items, adapter.step(items)):
            texts[item.stream_id] += [f.text for f in out.finals]
            turns[item.stream_id] += sum(f.end_of_turn for f in out.finals)
    return [" ".join(t) for t in texts], turns


def _wer(hyps, refs) -> float:
    from nemo.collections.asr.metrics.wer import word_error_rate

    return 100.0 * word_error_rate(hypotheses=hyps, references=refs)


def _token_disagreement(adapter, hyps, refs) -> float:
    """Token edit distance of `hyps` against `refs`, in % of the refs' tokens."""
    def ids(text: str) -> str:
        return " ".join(map(str, adapter.wrapper.tokenizer.text_to_ids(text)))

    return _wer([ids(h) for h in hyps], [ids(r) for r in refs])


@pytest.fixture(scope="module", params=["rnnt", "eou"])
def runs(request):
    from services.adapters.vectorised import VectorisedRNNTAdapter
    from services.adapters.vectorised_eou import VectorisedEOUAdapter

    cls, asset, clips = {"rnnt": (VectorisedRNNTAdapter, "tiny_rnnt.nemo", "heldout"),
                         "eou": (VectorisedEOUAdapter, "tiny_eou.nemo", "eou")}[request.param]
    items = clip_set(clips)
    audios = [np.concatenate([it["samples"], np.zeros(16000, np.float32)]) for it in items]
    out = {"kind": request.param, "refs": [it["text"] for it in items], "items": items}
    for dtype in ("float32", "bfloat16"):
        adapter = cls(str(ASSETS / asset), chunk_ms=160, max_streams=len(audios), dtype=dtype)
        out[dtype] = _stream_all(adapter, audios)
        out[dtype + "_adapter"] = adapter
    return out


def test_bfloat16_weights_are_really_bfloat16(runs):
    adapter = runs["bfloat16_adapter"]
    assert adapter.wrapper.cast_dtype == torch.bfloat16
    assert {p.dtype for p in adapter.wrapper.asr_model.parameters()} == {torch.bfloat16}
    # the per-stream state the step carries is bfloat16 too: encoder caches, decoder state
    assert adapter.store.cache_channel.dtype == adapter.store.cache_time.dtype == torch.bfloat16
    assert {s.dtype for s in adapter.store.pred_states} == {torch.bfloat16}
    assert {p.dtype for p in runs["float32_adapter"].wrapper.asr_model.parameters()} == {torch.float32}


def test_bfloat16_transcribes_like_float32_within_tolerance(runs):
    (fp32, fp32_turns), (bf16, bf16_turns) = runs["float32"], runs["bfloat16"]
    refs = runs["refs"]
    assert any(fp32) and any(bf16)
    disagreement = _token_disagreement(runs["float32_adapter"], bf16, fp32)
    assert disagreement <= TOKEN_DISAGREEMENT_MAX, (disagreement, list(zip(fp32, bf16)))
    fp32_wer, bf16_wer = _wer(fp32, refs), _wer(bf16, refs)
    assert bf16_wer <= fp32_wer + WER_WORSE_MAX, (fp32_wer, bf16_wer)
    if runs["kind"] == "eou":  # the model's <EOU> ends the same turns in both precisions
        expected = [len(it["utterances"]) for it in runs["items"]]
        assert fp32_turns == expected and bf16_turns == expected
