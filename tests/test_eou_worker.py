"""The parakeet-realtime worker: `<EOU>`/`<EOB>` end utterances, per stream, under batching.

A "chatty" random EOU model (float64, joint biased so `<EOU>`, `<EOB>` and words all
occur) exercises the marker path and the per-stream decoder resets; the project's trained
EOU model (tests/assets/tiny_eou.nemo) checks real utterances and EOU latency against the
true speech ends in tests/assets/eou/manifest.json. Protocol conformance and bad input are
in test_server_protocol.py, parametrised over both workers.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np
import pytest
from conftest import ASSETS, TOKEN, LiveServer, noise_audio, to_pcm16

from pipecat_nvasr.client import ListenClient
from pipecat_nvasr.protocol import Closed, Final, Partial
from services.streaming_worker import StreamingConfig, create_streaming_app

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MARKERS = ("<EOU>", "<EOB>")


def save_chatty_eou_model(path, workdir):
    """A random EOU model whose joint emits words, <EOU> and <EOB> in a mix (seeded)."""
    import torch

    from services.tiny_model import build_model, train_tokenizer

    model = build_model(train_tokenizer(workdir, eou=True), seed=0, eou=True)
    out = model.joint.joint_net[-1]
    with torch.no_grad():
        out.weight *= 6  # random logits are nearly flat; make them depend on the audio
        out.bias[-1] += 1.0  # blank
        out.bias[-3] += 2.0  # <EOU>
        out.bias[-2] += 1.5  # <EOB>
    model.save_to(str(path))
    return path


@pytest.fixture(scope="module")
def chatty_eou(tmp_path_factory):
    work = tmp_path_factory.mktemp("chatty_eou")
    return save_chatty_eou_model(work / "chatty.nemo", work / "tok")


@pytest.fixture(scope="module")
def server(chatty_eou):
    cfg = StreamingConfig(
        worker="parakeet-realtime", model=str(chatty_eou), dtype="float64", max_sessions=32, token=TOKEN
    )
    app = create_streaming_app(cfg)
    with LiveServer(app) as srv:
        srv.app = app
        yield srv


async def session(srv, parts: list[bytes], realtime: bool = False) -> list:
    """Send each part (a `finalize` between parts), then `close`; every event until `closed`."""
    async with ListenClient(srv.ws, token=TOKEN) as client:

        async def send():
            for index, part in enumerate(parts):
                step = 3200 if realtime else len(part) or 1
                for start in range(0, len(part), step):
                    await client.send_audio(part[start : start + step])
                    await asyncio.sleep(0.1 if realtime else 0)
                if index < len(parts) - 1:
                    await client.finalize()
            await client.close()

        sender = asyncio.create_task(send())
        events = [e async for e in client.events()]
        await sender
    return events


def eou_latency_count(srv) -> float:
    text = httpx.get(srv.http + "/metrics", headers=AUTH).text
    match = re.search(r"^nvasr_eou_latency_seconds_count (\S+)$", text, re.M)
    return float(match.group(1))


def as_tuples(events) -> list[tuple]:
    out = []
    for e in events:
        if isinstance(e, Final):
            words = tuple((w.word, w.start, w.end) for w in e.words)
            out.append(("final", e.text, e.start, e.end, e.from_finalize, e.end_of_turn, e.backchannel, words))
        elif isinstance(e, Partial):
            out.append(("partial", e.text, e.start, e.end))
    return out


async def test_markers_end_utterances_and_never_reach_the_text(server):
    before = eou_latency_count(server)
    events = await session(server, [to_pcm16(noise_audio(11, 6.0))])
    assert isinstance(events[-1], Closed)
    finals = [e for e in events if isinstance(e, Final)]
    texts = [e.text for e in events if isinstance(e, (Final, Partial))]
    assert not [t for t in texts if any(m in t for m in MARKERS)]
    eou = [f for f in finals if f.end_of_turn]
    eob = [f for f in finals if f.backchannel]
    assert eou and eob, "the chatty model should end utterances both ways"
    assert not [f for f in finals if f.end_of_turn and f.backchannel]
    # Stream time runs on across decoder resets: utterances follow each other, inside the audio.
    for prev, cur in zip(finals, finals[1:]):
        assert cur.start >= prev.start and cur.end >= prev.end - 1e-6
    assert all(0 <= f.start <= f.end <= 6.0 + 1e-6 for f in finals)
    assert eou_latency_count(server) - before == len(eou)


async def test_eou_resets_the_decoder_but_keeps_the_encoder_cache(chatty_eou):
    from reference.eou import EOUAdapter
    from services.engine.adapter import StepItem

    adapter = EOUAdapter(str(chatty_eou), chunk_ms=160, max_streams=4, dtype="float64")
    latencies: list[float] = []
    adapter.on_eou = latencies.append
    audio, n = noise_audio(12, 4.0), adapter.chunk_samples
    pipeline, seen_eou = adapter.pipeline, 0
    for i, start in enumerate(range(0, len(audio) - n, n)):
        out = adapter.step([StepItem(7, audio[start : start + n], is_first=i == 0, is_last=False)])[0]
        if any(f.end_of_turn or f.backchannel for f in out.finals):
            seen_eou += 1
            assert pipeline.get_state(7).previous_hypothesis is None, "decoder not reset"
            assert 7 in pipeline.context_manager.streamidx2slotidx, "encoder cache slot lost"
    assert seen_eou and latencies and all(0 <= x < 4.0 for x in latencies)
    adapter.release(7)
    assert adapter.active_streams() == 0


async def test_sixteen_concurrent_clients_get_their_single_stream_results(server):
    """Float64, batched steps: each client's events (partials, finals, EOU/EOB flags, word
    times) equal what it gets alone. Clients differ in audio, length, finalize points."""
    rng = np.random.default_rng(5)
    plans = []
    for i in range(16):
        # No part is a whole number of 160 ms chunks: whether its last full chunk is cut
        # before or after `close` arrives would depend on timing, not on batching.
        audio = to_pcm16(noise_audio(100 + i, 2.037 + 0.15 * i))
        cut = int(rng.integers(1, 4)) * 6400 if i % 3 == 0 else None  # finalize after 0.2–0.6 s
        plans.append([audio[:cut], audio[cut:]] if cut else [audio])
    alone = [as_tuples(await session(server, parts)) for parts in plans]
    assert sum(t[0] == "final" and t[5] for a in alone for t in a) >= 8, "too few <EOU> to test resets"
    assert sum(t[0] == "final" and t[6] for a in alone for t in a) >= 4, "too few <EOB>"

    together = await asyncio.gather(*(session(server, parts, realtime=True) for parts in plans))
    for i, events in enumerate(together):
        assert isinstance(events[-1], Closed)
        assert as_tuples(events) == alone[i], f"client {i} differs from its single-stream result"
    assert server.app.state.engine.adapter.active_streams() == 0


# ---------------------------------------------------------------------- trained model


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


def eou_timeline(adapter, samples: np.ndarray, stream_id: int) -> list[tuple[Final, float]]:
    """Stream one file through the adapter alone; (final, stream time it was emitted)."""
    from services.engine.adapter import StepItem

    n, out = adapter.chunk_samples, []
    starts = list(range(0, len(samples), n))
    for i, start in enumerate(starts):
        last = i == len(starts) - 1
        step = adapter.step([StepItem(stream_id, samples[start : start + n], i == 0, last)])[0]
        out += [(f, min(start + n, len(samples)) / 16000) for f in step.finals]
    return out


@pytest.fixture(scope="module")
def trained_eou():
    path = ASSETS / "tiny_eou.nemo"
    if not path.exists():
        pytest.skip("tests/assets/tiny_eou.nemo is not there yet (tools/tiny_model trains it)")
    return path


@pytest.mark.parametrize("chunk_ms", [80, 160])
def test_trained_model_ends_each_utterance_once_with_low_latency(trained_eou, eou_set, chunk_ms):
    """Each true utterance is ended by exactly one `<EOU>`, soon after its speech ends, and
    by nothing else: no `<EOU>` in the middle of an utterance, none in the silence."""
    from reference.eou import EOUAdapter
    from test_nemotron_service import word_accuracy

    adapter = EOUAdapter(str(trained_eou), chunk_ms=chunk_ms, max_streams=4)
    latencies, reference, hypothesis = [], [], []
    for index, item in enumerate(eou_set if chunk_ms == 160 else eou_set[:4]):  # 80 ms: twice the steps
        timeline = eou_timeline(adapter, item["samples"], 1000 + index)
        assert all(f.end_of_turn for f, _ in timeline), "an utterance ended without <EOU>"
        turns = [(f, t) for f, t in timeline if f.end_of_turn]
        assert len(turns) == len(item["utterances"]), (item["audio"], [f.text for f, _ in timeline])
        for (final, emitted), truth in zip(turns, item["utterances"]):
            assert not any(m in final.text for m in MARKERS)
            assert emitted < truth["speech_end"] + 1.0, "<EOU> too late, or missed and merged"
            latencies.append(emitted - truth["speech_end"])
            reference += words(truth["text"])
            hypothesis += words(final.text)
    assert word_accuracy(reference, hypothesis) >= 0.85
    p50, p90 = np.percentile(latencies, [50, 90])
    print(f"\n{chunk_ms} ms: end of speech → <EOU> over {len(latencies)} utterances: "
          f"p50 {p50 * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    assert min(latencies) > -0.1 and p90 < 0.6  # never well before the speech ends


@pytest.mark.parametrize("chunk_ms", [80, 160])
def test_trained_model_waits_out_a_mid_sentence_pause(trained_eou, pause_set, chunk_ms):
    """A 150-300 ms pause inside a sentence does not end the turn: each clip comes back as one
    final, ended by `<EOU>` after its last word, holding the words from both sides of the pause."""
    from reference.eou import EOUAdapter
    from test_nemotron_service import word_accuracy

    adapter = EOUAdapter(str(trained_eou), chunk_ms=chunk_ms, max_streams=4)
    reference, hypothesis, latencies = [], [], []
    for index, item in enumerate(pause_set):
        timeline = eou_timeline(adapter, item["samples"], 3000 + index)
        texts = [f.text for f, _ in timeline]
        assert len(timeline) == 1, (item["audio"], item["pause"], [(f.text, t) for f, t in timeline])
        final, emitted = timeline[0]
        assert final.end_of_turn, (item["audio"], texts)
        assert emitted > item["speech_end"], (item["audio"], emitted, item["speech_end"])
        latencies.append(emitted - item["speech_end"])
        reference += words(item["text"])
        hypothesis += words(final.text)
    assert word_accuracy(reference, hypothesis) >= 0.85, (reference, hypothesis)
    print(f"\n{chunk_ms} ms, paused sentences: end of speech → <EOU> p50 "
          f"{1000 * np.median(latencies):.0f} ms, max {1000 * max(latencies):.0f} ms")


def test_a_marker_in_the_last_chunk_still_flags_the_final(chatty_eou):
    """NeMo drops a stream's state inside its last step; the marker must survive that."""
    from reference.eou import EOUAdapter
    from services.engine.adapter import StepItem

    adapter = EOUAdapter(str(chatty_eou), chunk_ms=160, max_streams=4, dtype="float64")
    n = adapter.chunk_samples

    def run(audio, stream_id) -> list:
        chunks = [audio[i : i + n] for i in range(0, len(audio), n)]
        return [
            adapter.step([StepItem(stream_id, chunk, i == 0, i == len(chunks) - 1)])[0]
            for i, chunk in enumerate(chunks)
        ]

    flagged = 0
    for seed in range(5):  # cut each stream right after the chunk where a marker first came
        audio = noise_audio(300 + seed, 2.0)
        outputs = run(audio, 60 + seed)
        k = next(i for i, out in enumerate(outputs) if any(f.end_of_turn or f.backchannel for f in out.finals))
        last = run(audio[: (k + 1) * n], 80 + seed)[-1]
        flagged += any(f.end_of_turn or f.backchannel for f in last.finals)
        assert adapter.active_streams() == 0 and not adapter.pipeline.eou_events
    assert flagged, "no last chunk carried a marker"


def test_80ms_chunks_keep_the_trained_context_and_batch_exactly(chatty_eou):
    """80 ms steps shift the model's [70,1] context by one frame; batched == alone."""
    from reference.eou import EOUAdapter
    from services.engine.adapter import StepItem

    adapter = EOUAdapter(str(chatty_eou), chunk_ms=80, max_streams=4, dtype="float64")
    assert adapter.chunk_samples == 1280 and adapter.pipeline.asr_model.get_att_context_size() == [70, 1]
    n = adapter.chunk_samples
    audios = [noise_audio(400 + s, 1.5 + 0.1 * s) for s in range(3)]
    streams = [[a[i : i + n] for i in range(0, len(a), n)] for a in audios]

    def flat(outputs) -> list[tuple]:
        return [(f.text, f.start, f.end, f.end_of_turn, f.backchannel) for out in outputs for f in out.finals]

    alone = [
        flat(adapter.step([StepItem(100 + j, c, i == 0, i == len(chunks) - 1)])[0] for i, c in enumerate(chunks))
        for j, chunks in enumerate(streams)
    ]
    together: list[list] = [[] for _ in streams]
    for i in range(max(map(len, streams))):
        live = [j for j, chunks in enumerate(streams) if i < len(chunks)]
        items = [StepItem(200 + j, streams[j][i], i == 0, i == len(streams[j]) - 1) for j in live]
        for j, out in zip(live, adapter.step(items)):
            together[j] += flat([out])
    assert together == alone and any(t[3] for a in alone for t in a)
