"""The vectorised streaming Sortformer step (services/adapters/sortformer_step.py) against NeMo's own
`streaming_update_async` / `forward_streaming_step`, in float64: equal states and speaker probabilities
for sessions at different stages, first chunks, look-ahead cut short, short last chunks and speaker-cache
compression; and its cost per session counted (tensor ops, Python calls), not timed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import conversation, multitalker_models

from benchmarks.opcount import count, per_added


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # NeMo's update allocates in the default dtype
    yield
    torch.set_default_dtype(old)


def _nemo_state(state: dict):
    from nemo.collections.asr.modules.sortformer_modules import StreamingSortformerState

    out = StreamingSortformerState()
    for k, v in state.items():
        setattr(out, k, v.clone())
    return out


def _random_case(rng, modules, batch: int, dim: int, chunk: int, left: int, right: int):
    """States of rows at every stage: empty, filling, FIFO full, cache compressed before (or not)."""
    S, F, n = modules.spkcache_len, modules.fifo_len, modules.n_spk
    cache_len = torch.from_numpy(rng.choice([0, 0, 3, S - 2, S, S], batch))
    fifo_len = torch.from_numpy(rng.integers(0, F + 1, batch))
    fifo_len[cache_len == 0] = torch.from_numpy(rng.integers(0, F + 1, int((cache_len == 0).sum())))
    mask = lambda w, L: (torch.arange(w)[None, :] < L[:, None]).to(torch.float64)  # noqa: E731
    state = {
        "spkcache": torch.from_numpy(rng.standard_normal((batch, S, dim))) * mask(S, cache_len)[..., None],
        "spkcache_lengths": cache_len,
        "spkcache_preds": torch.from_numpy(rng.uniform(0, 1, (batch, S, n))) * mask(S, cache_len)[..., None],
        "fifo": torch.from_numpy(rng.standard_normal((batch, F, dim))) * mask(F, fifo_len)[..., None],
        "fifo_lengths": fifo_len,
        "fifo_preds": torch.zeros(batch, F, n),
        "mean_sil_emb": torch.from_numpy(rng.standard_normal((batch, dim))),
        "n_sil_frames": torch.from_numpy(rng.integers(0, 5, batch)),
    }
    state["mean_sil_emb"][state["n_sil_frames"] == 0] = 0.0
    chunk_len = torch.from_numpy(rng.integers(1, chunk + 1, batch)) + left  # short last chunks too
    chunk_len[: batch // 2] = left + chunk + right
    width = left + chunk + right
    embs = torch.from_numpy(rng.standard_normal((batch, width, dim))) * mask(width, chunk_len)[..., None]
    total = int((cache_len + fifo_len + chunk_len).max())
    # probabilities near 0/1 and in between: silence, speech, overlap
    preds = torch.from_numpy(rng.choice([0.01, 0.1, 0.6, 0.95, 0.99], (batch, total, n))
                             * rng.uniform(0.9, 1.0, (batch, total, n)))
    return state, embs, chunk_len, preds


@pytest.mark.parametrize("period,fifo,cache", [(8, 8, 24), (3, 0, 16), (5, 12, 20)])
def test_update_equals_nemo_streaming_update_async(float64, period, fifo, cache):
    from nemo.collections.asr.modules.sortformer_modules import SortformerModules

    from services.adapters.sortformer_step import streaming_update

    rng = np.random.default_rng(period * 100 + fifo)
    modules = SortformerModules(num_spks=4, fc_d_model=12, tf_d_model=8, spkcache_len=cache, fifo_len=fifo,
                                spkcache_update_period=period, chunk_len=3).eval()
    chunk, left, right = 3, 1, 2
    compressed = 0
    real_compress = modules._compress_spkcache

    def counting(emb_seq, **kwargs):  # NeMo compresses only the rows that overflow
        nonlocal compressed
        compressed += emb_seq.shape[0]
        return real_compress(emb_seq=emb_seq, **kwargs)

    for trial in range(12):
        state, embs, chunk_len, preds = _random_case(rng, modules, 9, 12, chunk, left, right)
        modules._compress_spkcache = counting
        ref_state, ref_preds = modules.streaming_update_async(_nemo_state(state), embs, chunk_len.clone(), preds,
                                                              lc=left, rc=right)
        modules._compress_spkcache = real_compress
        width_preds = torch.zeros(9, cache + fifo + left + chunk + right, 4)
        width_preds[:, : preds.shape[1]] = preds  # our packing is always full width
        new_state, new_preds = streaming_update(modules, state, embs, chunk_len, torch.full((9,), left),
                                                width_preds, chunk)
        assert torch.equal(new_preds, ref_preds)
        for k, v in new_state.items():
            ref = getattr(ref_state, k)
            assert v.shape == ref.shape and v.dtype == ref.dtype, k
            assert torch.allclose(v.double(), ref.double(), rtol=0, atol=1e-12), (k, trial)
    assert compressed >= 5, "the speaker cache must have been compressed in several rows"


# ------------------------------------------------------------------ the diarizer, both implementations


def _schedule():
    """(session, start step, seconds) of audio: different stages, lengths, short last chunks."""
    return [(0, 0, 6.1), (1, 2, 4.53), (2, 5, 3.0), (3, 5, 2.2)]


def _run(diarizer, audios, starts, hold: int):
    """Step sessions joining at different steps; every chunk diarized with `hold` chunks of look-ahead
    (fewer at the end of a stream). Returns the probabilities per session and the final state rows."""
    chunk = diarizer.chunk_samples
    chunks = [[a[i : i + chunk] for i in range(0, len(a), chunk)] for a in audios]
    done = [0] * len(audios)
    probs = [[] for _ in audios]
    step = 0
    while any(d < len(c) for d, c in zip(done, chunks)):
        received = [min(step - s + 1, len(c)) if step >= s else 0 for s, c in zip(starts, chunks)]
        rows = [i for i in range(len(audios)) if done[i] < received[i]
                and (received[i] - 1 - done[i] >= hold or received[i] == len(chunks[i]))]
        if rows:
            windows = [np.concatenate(chunks[i][done[i] : min(done[i] + 1 + hold, received[i])]) for i in rows]
            windows = [w[: diarizer.window_samples] for w in windows]
            valid = np.array([len(w) for w in windows])
            first = np.array([done[i] == 0 for i in rows])
            p, commit = diarizer.step(np.array(rows), windows, valid, first)
            commit()
            for i, row in zip(rows, p):
                probs[i].append(row)
                done[i] += 1
        step += 1
    state = {k: v[: len(audios)].clone() for k, v in diarizer.state.items()}
    return [np.concatenate(p) for p in probs], state


@pytest.fixture(scope="module")
def diarizers():
    from services.adapters.diarizer import StreamingDiarizer
    from services.adapters.diarizer_settings import DiarizerSettings

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        # small cache and FIFO: they fill and the cache is compressed within seconds
        settings = DiarizerSettings(left_context=1, right_context=3, fifo_len=8, spkcache_len=20, update_period=8)
        diar = multitalker_models()[1]
        yield {impl: StreamingDiarizer(diar, 8, 2560, torch.device("cpu"), "float64", settings, impl=impl)
               for impl in ("vectorised", "nemo")}
    finally:
        torch.set_default_dtype(old)


def test_diarizer_equals_nemo_forward_streaming_step(diarizers, float64):
    audios = [conversation(i)[1][: int(16000 * s)] for i, (_, _, s) in enumerate(_schedule())]
    starts = [s for _, s, _ in _schedule()]
    results = {}
    for impl, diarizer in diarizers.items():
        diarizer.reset(list(range(len(audios))))
        results[impl] = _run(diarizer, audios, starts, hold=2)
    (ours, our_state), (ref, ref_state) = results["vectorised"], results["nemo"]
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and a.shape[0] >= 20
        assert np.abs(a - b).max() < 1e-9
    for k in our_state:
        assert float((our_state[k].double() - ref_state[k].double()).abs().max()) < 1e-9, k
    assert int(our_state["spkcache_lengths"].max()) == 20, "the speaker cache should have been compressed"
    assert max(p.max() for p in ours) > 0.5, "somebody speaks"


def test_batched_rows_equal_alone(diarizers, float64):
    """Sessions batched together give what each gives alone (vectorised path only)."""
    diarizer = diarizers["vectorised"]
    audios = [conversation(i)[1][: int(16000 * s)] for i, (_, _, s) in enumerate(_schedule())]
    starts = [s for _, s, _ in _schedule()]
    diarizer.reset(list(range(len(audios))))
    together, _ = _run(diarizer, audios, starts, hold=1)
    for i, audio in enumerate(audios):
        diarizer.reset([0])
        (alone,), _ = _run(diarizer, [audio], [0], hold=1)
        assert np.abs(alone - together[i]).max() < 1e-9


# ------------------------------------------------------------------ cost per session, counted


def steady_step(diarizer, n: int, impl_audio):
    """A closure stepping n sessions (every one past its first chunk, full look-ahead)."""
    slots = np.arange(n)
    windows = [impl_audio[: diarizer.window_samples]] * n
    valid = np.full(n, diarizer.window_samples)
    first = np.zeros(n, bool)

    def run():
        diarizer.step(slots, windows, valid, first)  # not committed: every call sees the same state

    return run


def test_cost_per_additional_session(diarizers):
    """Issue 22's goal for the diarizer: <= 0.5 tensor ops and <= 20 Python calls per added session-step;
    NeMo's own update loops over rows (the 'before')."""
    audio = conversation(0)[1]
    costs = {}
    for impl, diarizer in diarizers.items():
        diarizer.reset(list(range(8)))
        for _ in range(3):  # fill caches a little, every session alike
            _, commit = diarizer.step(np.arange(8), [audio[: diarizer.window_samples]] * 8,
                                      np.full(8, diarizer.window_samples), np.zeros(8, bool))
            commit()
        costs[impl] = {n: count(steady_step(diarizer, n, audio)) for n in (2, 8)}
    ours = per_added(costs["vectorised"][2], costs["vectorised"][8], 2, 8)
    assert ours["ops"] <= 0.5 and ours["calls"] <= 20 and ours["syncs"] == 0, costs
    nemo = per_added(costs["nemo"][2], costs["nemo"][8], 2, 8)
    assert nemo["ops"] > 10, f"NeMo's update should cost ops per row (the baseline moved?) {costs}"
