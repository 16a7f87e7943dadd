"""Five minutes of speech without a pause: utterances stay bounded on both streaming workers.

Without a bound, a monologue was ONE final of 299.8 s, its partial growing to 4.5 KB (the whole
utterance re-sent every step). With `max_utterance_s`, an utterance is cut before its last word
(that word opens the next one, the decoder keeps its state): finals come at least every
`max_utterance_s`, no partial message grows past a few hundred bytes, and no word is lost or
repeated at a cut (the words equal one uncut run's).
"""

from __future__ import annotations

import numpy as np
import pytest

from pipecat_nvasr.protocol import dump
from services.engine.adapter import StepItem

MAX_S = 10.0


def unbroken_speech(clips, seconds: float) -> np.ndarray:
    """Held-out sentences back to back with their silences cut out: speech that never pauses."""
    voiced = []
    for clip in clips:
        samples = clip["samples"]
        frames = samples[: len(samples) // 160 * 160].reshape(-1, 160)
        loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > 0.02)
        voiced.append(samples[loud[0] * 160 : (loud[-1] + 1) * 160])
    speech = np.concatenate(voiced)
    return np.tile(speech, int(np.ceil(seconds * 16000 / len(speech))))[: int(seconds * 16000)]


def stream(adapter, audio):
    n, finals, partial_bytes = adapter.chunk_samples, [], 0
    chunks = [audio[i : i + n] for i in range(0, len(audio), n)]
    for i, chunk in enumerate(chunks):
        out = adapter.step([StepItem(1, chunk, i == 0, i == len(chunks) - 1)])[0]
        finals += out.finals
        if out.partial is not None:
            partial_bytes = max(partial_bytes, len(dump(out.partial).encode()))
    assert adapter.active_streams() == 0
    return finals, partial_bytes


def words(finals):
    return [w.word for f in finals for w in f.words]


@pytest.mark.parametrize("worker", ["nemotron", "parakeet-realtime"])
def test_five_minutes_without_a_pause_come_out_in_bounded_utterances(worker, trained_rnnt, heldout):
    from conftest import ASSETS
    from services.streaming_worker import StreamingConfig, load_adapter

    model = str(trained_rnnt if worker == "nemotron" else ASSETS / "tiny_eou.nemo")
    adapter = load_adapter(StreamingConfig(worker=worker, model=model, max_sessions=2, max_utterance_s=MAX_S,
                                           endpoint_silence_ms=0))
    audio = unbroken_speech(heldout, 300.0)
    finals, partial_bytes = stream(adapter, audio)
    spans = [f.end - f.start for f in finals if f.text]
    assert len(spans) >= 0.8 * 300 / MAX_S
    # no utterance runs past the limit: a cut lands before the word that crosses it
    assert max(spans) <= MAX_S + 1.0, max(spans)
    assert partial_bytes < 4096
    assert len(words(finals)) > 300  # speech all the way through, not one stuck utterance


def test_a_cut_loses_and_repeats_no_word(trained_rnnt, heldout):
    from services.adapters.vectorised import VectorisedRNNTAdapter

    audio = unbroken_speech(heldout, 45.0)
    uncut = VectorisedRNNTAdapter(str(trained_rnnt), max_streams=2, endpoint_silence_ms=0, max_utterance_s=None,
                                  dtype="float64")
    cut = VectorisedRNNTAdapter(str(trained_rnnt), max_streams=2, endpoint_silence_ms=0, max_utterance_s=MAX_S,
                                dtype="float64")
    whole, _ = stream(uncut, audio)
    pieces, _ = stream(cut, audio)
    assert len(whole) == 1 and len(pieces) >= 4
    assert words(pieces) == words(whole)
    starts = [f.start for f in pieces]
    assert starts == sorted(starts) and all(a.end <= b.start for a, b in zip(pieces, pieces[1:]))
