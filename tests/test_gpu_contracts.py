"""Contracts of the GPU world, held on CPU (CI has no GPU; tests/gpu/ runs the real thing).

1. NeMo's CUDA-graph greedy decoder returns hypotheses and decoding state padded to the largest
   batch it has seen. Run through that very code path (`gpu_world.graph_decoder`), with batches
   that shrink and grow, the vectorised step must give exactly the tokens of NeMo's plain path.
2. Every tensor a step computes with is on the model's device: `gpu_world.HostTensorCheck`
   raises on any op that would mix host and device tensors on CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest
from gpu_world import HostTensorCheck, graph_decoder
from test_vectorised_step import clip_streams, run, schedule


@pytest.fixture(scope="module")
def plain_and_graph(trained_rnnt):
    from services.adapters.vectorised import VectorisedRNNTAdapter

    plain = VectorisedRNNTAdapter(str(trained_rnnt), chunk_ms=160, max_streams=16, dtype="float64")
    graph = VectorisedRNNTAdapter(str(trained_rnnt), chunk_ms=160, max_streams=16, dtype="float64")
    graph_decoder(graph.greedy.computer)
    return plain, graph


def test_graph_decoder_padded_returns_give_the_plain_tokens(plain_and_graph, heldout):
    plain, graph = plain_and_graph
    n = plain.chunk_samples
    clips = [c["samples"] for c in heldout]
    audios = clip_streams(clips, 14)
    # six streams of different lengths leave one by one (6 → 1), then eight join (→ 8 > 6: the
    # decoder reallocates), one at a time on its own in between
    for i in range(6):
        audios[i] = audios[i][: (6 + 3 * i) * n + 700]
    joins = [0] * 6 + [24] + [30] * 7
    steps = schedule(audios, n, joins=joins, ends={(2, 8), (9, 36)}, empty_ends={(0, 5)})
    sizes = [len(s) for s in steps]
    assert max(sizes[:24]) == 6 and 1 in sizes[:30] and max(sizes[30:]) == 8, sizes
    expected, got = run(plain, steps), run(graph, steps)
    assert got == expected
    words = [w.word for outs in got.values() for o in outs for f in o.finals for w in f.words]
    assert len(words) >= 40
    assert graph.greedy.computer.state.batch_size == 8  # the graph path really ran, padded to 8
    assert plain.active_streams() == graph.active_streams() == 0


def _device_tensors(adapter):
    store = adapter.store
    return [store.cache_channel, store.cache_time, store.cache_len, store.audio_tail, store.features,
            *store.pred_states, store.pred_out, store.labels, store.decoded, *store.fusion,
            *store.sos.predictor_states, store.sos.predictor_outputs, store.sos.labels, *store.sos.fusion_states_list]


def test_every_tensor_of_a_step_is_on_the_model_device(trained_rnnt, heldout):
    from services.adapters.vectorised import VectorisedRNNTAdapter
    from services.engine.adapter import StepItem
    from pipecat_nvasr.protocol import BoostPhrase

    adapter = VectorisedRNNTAdapter(str(trained_rnnt), chunk_ms=160, max_streams=4)
    n = adapter.chunk_samples
    audio = heldout[0]["samples"]
    modules = [adapter.wrapper.asr_model, adapter.frontend.preprocessor]
    with HostTensorCheck(modules, _device_tensors(adapter)) as check:
        items = [StepItem(1, audio[:n], True, False, boost=[BoostPhrase("coffee", 2.0)]), StepItem(2, audio[:n], True, False)]
        adapter.step(items)
        for i in range(1, 8):
            adapter.step([StepItem(1, audio[i * n:(i + 1) * n], False, False, end_utterance=i == 4),
                          StepItem(2, audio[i * n:(i + 1) * n], False, i == 7)])
            if i == 2:  # a forked finalize beside a plain row: only the plain row's state is stored
                adapter.step([StepItem(1, audio[3 * n:3 * n + 900], False, False, end_utterance=True, fork=True),
                              StepItem(2, audio[3 * n:4 * n], False, False)])
        adapter.step([StepItem(1, audio[8 * n: 8 * n + 100], False, True)])
    assert check.ops > 500  # the whole step ran under the check
    assert adapter.active_streams() == 0


def test_the_check_catches_a_host_tensor_in_a_device_op():
    import torch

    weights = torch.nn.Linear(4, 4)
    with HostTensorCheck([weights]):
        weights(torch.zeros(2, 4).to("cpu"))  # uploaded: fine
        with pytest.raises(RuntimeError, match="would fail on CUDA"):
            weights(torch.from_numpy(np.zeros((2, 4), np.float32)))


def test_every_tensor_of_a_multitalker_step_is_on_the_model_device():
    """The diarizer and the speaker-conditioned ASR rows, several sessions, rows opening and closing."""
    from conftest import conversation, multitalker_models
    from services.adapters.multitalker import MultitalkerAdapter
    from services.engine.adapter import StepItem

    asr, diar = multitalker_models()
    adapter = MultitalkerAdapter(asr, diar, chunk_ms=160, max_streams=3)
    n = adapter.chunk_samples
    talks = [conversation(i)[1][: 40 * n] for i in range(2)]
    modules = [adapter.asr.wrapper.asr_model, adapter.asr.frontend.preprocessor, adapter.diar.model]
    state = [*_device_tensors(adapter.asr), *adapter.diar.state.values(), adapter.diar.audio_tail, adapter.diar.left]
    speakers = set()
    with HostTensorCheck(modules, state) as check:
        for i in range(40):
            items = [StepItem(s + 1, talk[i * n:(i + 1) * n], i == 0, i == 39, end_utterance=i == 20)
                     for s, talk in enumerate(talks)]
            for output in adapter.step(items):
                speakers |= {f.speaker for f in output.finals if f.text}
    assert check.ops > 2000  # diarizer, rows and decoder all ran under the check
    assert speakers, "the sessions were transcribed, with speaker labels"
    assert adapter.active_streams() == 0
