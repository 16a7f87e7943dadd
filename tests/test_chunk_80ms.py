"""80 ms chunks give real words (issue 19): the tiny model is trained with [70,0] in its contexts,
and the worker's feature buffer holds the frames an 80 ms chunk needs.

Until then a Nemotron worker at 80 ms sent no partial and no final at all: NeMo's buffer
length, int((0.09 + 0.08) / 0.01) = 16, is one frame short of the 17 the chunk needs, and the
encoder's output after dropping the pre-encoded frames was empty. The held-out clips go through
the worker's own adapter, stepped together as the engine batches them.
"""

from __future__ import annotations

import numpy as np

from services.engine.adapter import StepItem

from conftest import ASSETS
from test_nemotron_service import word_accuracy, words


def transcribe_together(adapter, clips: list[np.ndarray]) -> list[str]:
    """One stream per clip, all stepped in the same batches, chunk by chunk; finals joined."""
    n, texts = adapter.chunk_samples, [[] for _ in clips]
    for start in range(0, max(len(x) for x in clips), n):
        live = [k for k, x in enumerate(clips) if start < len(x)]
        items = [StepItem(k, clips[k][start:start + n], start == 0, start + n >= len(clips[k])) for k in live]
        for k, out in zip(live, adapter.step(items)):
            texts[k] += [f.text for f in out.finals]
    return [" ".join(t) for t in texts]


def test_trained_model_at_80ms_chunks_transcribes_heldout_speech(heldout):
    from services.adapters.vectorised import VectorisedRNNTAdapter

    adapter = VectorisedRNNTAdapter(str(ASSETS / "tiny_rnnt.nemo"), chunk_ms=80, max_streams=len(heldout))
    assert adapter.chunk_samples == 1280 and adapter.encoder.att_context_size == [70, 0]
    hyps = transcribe_together(adapter, [item["samples"] for item in heldout])
    reference = [w for item in heldout for w in words(item["text"])]
    hypothesis = [w for h in hyps for w in words(h)]
    accuracy = word_accuracy(reference, hypothesis)
    assert accuracy >= 0.85, f"{accuracy:.0%}: {hyps}"
