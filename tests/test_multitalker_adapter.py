"""The multitalker adapter (services/adapters/multitalker.py) on the real tiny models, float64:
sessions at different stages batched in one step give exactly what each gives alone (diarizer
rows and speaker rows both), a step that fails midway changes nothing, and no row or session
slot outlives its stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import conversation, multitalker_models

from services.engine.adapter import StepItem


def conversations() -> list[np.ndarray]:
    return [conversation(i)[1] for i in range(5)]


@pytest.fixture(scope="module")
def adapter():
    from services.adapters.multitalker import MultitalkerAdapter

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # NeMo's Sortformer state update allocates in the default dtype
    try:
        yield MultitalkerAdapter(*multitalker_models(), max_streams=8, dtype="float64")
    finally:
        torch.set_default_dtype(old)


def as_tuples(output) -> list[tuple]:
    out = [("final", f.speaker, f.text, f.start, f.end, tuple((w.word, w.start, w.end) for w in f.words))
           for f in output.finals]
    out += [("partial", p.speaker, p.text, p.start, p.end) for p in output.all_partials()]
    return out


class Plan:
    """One session: its audio, the step it starts at, the chunks after which the client finalizes."""

    def __init__(self, stream_id: int, audio: np.ndarray, start: int, finalize_after: tuple[int, ...] = ()):
        self.stream_id, self.start, self.finalize_after = stream_id, start, finalize_after
        n = 2560
        self.chunks = [audio[i : i + n] for i in range(0, len(audio), n)]

    def item(self, index: int) -> StepItem:
        return StepItem(self.stream_id, self.chunks[index], is_first=index == 0,
                        is_last=index == len(self.chunks) - 1, end_utterance=index in self.finalize_after)


def run(adapter, plans: list[Plan]) -> dict[int, list[tuple]]:
    """Step every plan's chunks, batched across plans by their start step; events per stream."""
    events = {p.stream_id: [] for p in plans}
    total = max(p.start + len(p.chunks) for p in plans)
    for t in range(total):
        due = [(p, t - p.start) for p in plans if 0 <= t - p.start < len(p.chunks)]
        outputs = adapter.step([p.item(i) for p, i in due])
        for (p, _), out in zip(due, outputs):
            events[p.stream_id] += as_tuples(out)
    return events


def test_sessions_at_different_stages_batched_equal_alone(adapter):
    audio = conversations()
    plans = [Plan(100 + i, a[: int(16000 * s)], start, fin)
             for i, (a, s, start, fin) in enumerate(zip(audio, (6.1, 5.3, 4.4, 5.9), (0, 3, 7, 12),
                                                        ((), (20,), (), (9, 30))))]
    alone = {}
    for p in plans:
        alone.update(run(adapter, [Plan(p.stream_id, np.concatenate(p.chunks), 0, p.finalize_after)]))
    assert adapter.active_streams() == 0 and adapter.active_rows() == 0
    rows_before = adapter.stats["rows"]
    together = run(adapter, plans)
    assert adapter.active_streams() == 0 and adapter.active_rows() == 0
    for p in plans:
        assert together[p.stream_id] == alone[p.stream_id], f"stream {p.stream_id} differs when batched"
    finals = [e for p in plans for e in alone[p.stream_id] if e[0] == "final"]
    assert len({e[1] for e in finals}) >= 2, "the conversations should give two speakers"
    assert adapter.stats["rows"] > rows_before


def test_a_step_that_fails_midway_changes_nothing(adapter, monkeypatch):
    """The ASR call raises after the diarizer ran (as an out-of-memory would): retrying the same
    items gives exactly the clean run, and the rows opened for the failed step are gone."""
    audio = conversations()[1][: 16000 * 6]
    clean = run(adapter, [Plan(200, audio, 0)])[200]

    plan = Plan(201, audio, 0)
    events, failed = [], 0
    encoder = adapter.asr.encoder
    real_step = encoder.cache_aware_stream_step

    def flaky(*args, **kwargs):
        nonlocal failed
        if failed < 3 and adapter.stats["steps"] % 5 == 4:
            failed += 1
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(encoder, "cache_aware_stream_step", flaky)
    for i in range(len(plan.chunks)):
        while True:
            rows = adapter.active_rows()
            try:
                out = adapter.step([plan.item(i)])[0]
                break
            except RuntimeError:
                assert adapter.active_rows() == rows  # no row leaked by the failed step
        events += as_tuples(out)
    assert failed == 3
    assert [(e[0], e[1], e[2]) for e in events] == [(e[0], e[1], e[2]) for e in clean]
    assert events == [tuple(x) for x in clean]
    assert adapter.active_streams() == 0 and adapter.active_rows() == 0


def test_release_frees_the_session_and_its_rows(adapter):
    audio = conversations()[0]
    plan = Plan(300, audio, 0)
    opened_rows = 0
    for i in range(40):  # stop mid-conversation, as a disconnect does
        adapter.step([plan.item(i)])
        opened_rows = max(opened_rows, adapter.active_rows())
    assert opened_rows >= 1 and adapter.active_streams() == 1
    adapter.release(300)
    assert adapter.active_streams() == 0 and adapter.active_rows() == 0
    adapter.release(300)  # twice is harmless


def test_unknown_stream_is_refused_without_side_effects(adapter):
    with pytest.raises(RuntimeError, match="not open"):
        adapter.step([StepItem(999, np.zeros(2560, np.float32), is_first=False, is_last=False)])
    assert adapter.active_streams() == 0 and adapter.active_rows() == 0


def test_finalize_ends_every_open_speaker_and_the_rows_carry_on(adapter):
    """A client finalize while both speakers talk: one final per open speaker (the session's
    speaker labels and rows stay), and the rest of the stream goes on as without it."""
    audio = conversations()[0]  # its second speaker barges in at 1.7 s, over the first
    plain = run(adapter, [Plan(400, audio, 0)])[400]
    plan = Plan(401, audio, 0)
    events, at, talking = [], None, set()
    for i in range(len(plan.chunks)):
        item = plan.item(i)
        slot = adapter.slot_of.get(401)
        if at is None and len(talking) == 2:  # both speakers' utterances have words
            at, rows = i, adapter.row_id[slot].copy()
            item.end_utterance = True
        out = adapter.step([item])[0]
        talking = {p.speaker for p in out.all_partials() if p.text}
        if i == at:
            speakers = [f.speaker for f in out.finals]
            assert len(speakers) == 2 and len(set(speakers)) == 2, out.finals
            assert all(f.text for f in out.finals)
            assert not out.all_partials()
            assert (adapter.row_id[slot] == rows).all(), "a finalize must not close the rows"
        events += as_tuples(out)
    assert at is not None, "the two speakers never overlapped"
    # the same text by the same speakers, only split at the finalize (mid-speech, a word's
    # pieces may land on both sides of it: compare letters)
    assert letters_by_speaker(events) == letters_by_speaker(plain)


def letters_by_speaker(events) -> dict[str, str]:
    by: dict[str, str] = {}
    for e in events:
        if e[0] == "final":
            by[e[1]] = by.get(e[1], "") + e[2].replace(" ", "")
    return by
