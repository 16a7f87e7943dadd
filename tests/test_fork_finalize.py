"""A finalize answered from a forked tail (issue 19): at the next step, not the next full chunk.

The partial chunk up to the VAD stop is stepped, zero-padded, on a copy of the stream's state
in the same batch as everyone else; the final comes from the copy and the stream itself does not
move. When the client's audio fills the chunk the stream steps it as if nothing had happened,
and the tokens it writes before the split (already in the fork's final) are dropped.
"""

from __future__ import annotations

import numpy as np
import pytest

from services.engine.adapter import StepItem


@pytest.fixture(scope="module")
def adapter(trained_rnnt):
    from services.adapters.vectorised import VectorisedRNNTAdapter

    return VectorisedRNNTAdapter(str(trained_rnnt), chunk_ms=160, max_streams=8, dtype="float64")


def feed(adapter, audio, fork_at=None, sid=1, neighbour=None):
    """Stream `audio` chunk by chunk; at sample `fork_at`, a forked finalize in the next step.
    A `neighbour` stream, stepped in the same batches, must not notice."""
    n, out, other = adapter.chunk_samples, [], []
    chunks = list(range(0, len(audio), n))
    for index, start in enumerate(chunks):
        items = [StepItem(sid, audio[start : start + n], index == 0, index == len(chunks) - 1)]
        if neighbour is not None:
            items.append(StepItem(sid + 100, neighbour[start : start + n], index == 0, index == len(chunks) - 1))
        results = adapter.step(items)
        out.append(results[0])
        other += results[1:]
        if fork_at is not None and start < fork_at <= start + 2 * n and fork_at > start + n:
            # the client's audio has reached the finalize point, which lies inside the next chunk
            tail = audio[start + n : fork_at]
            forked = adapter.step([StepItem(sid, tail, False, False, end_utterance=True, fork=True)])[0]
            assert forked.finals, "a forked finalize always answers"
            out.append(forked)
    assert adapter.active_streams() == 0
    return out, other


def words(outputs):
    return [w.word for o in outputs for f in o.finals for w in f.words]


def test_a_fork_in_the_pause_gives_the_first_sentence_now_and_changes_nothing_after(adapter, heldout):
    first, second = heldout[0]["samples"], heldout[1]["samples"]
    audio = np.concatenate([first, np.zeros(9600, np.float32), second])
    plain, _ = feed(adapter, audio)
    split = len(first) + 2500  # a VAD stop 160 ms into the pause, mid-chunk
    assert split % adapter.chunk_samples
    forked, _ = feed(adapter, audio, fork_at=split)
    fork_final = next(o for o in forked if o.finals)
    assert fork_final.finals[-1].text == heldout[0]["text"]
    assert words(forked) == words(plain)


@pytest.mark.parametrize("clip", range(6))
def test_a_fork_inside_speech_loses_and_repeats_no_word(adapter, heldout, clip):
    """A VAD stop inside the sentence (a pause the VAD took for the end): the words of the fork's
    final and of the rest of the stream are the stream's words, none twice, none missing, but for
    the one word the split cuts, which comes out once (from the fork)."""
    audio = heldout[clip]["samples"]
    plain = words(feed(adapter, audio)[0])
    split = int(len(audio) * 0.55) + 700
    out, _ = feed(adapter, audio, fork_at=split)
    got = words(out)
    assert len(got) in (len(plain), len(plain) - 1, len(plain) + 1)
    assert all(a != b for a, b in zip(got, got[1:])) or any(a == b for a, b in zip(plain, plain[1:]))
    common = sum(1 for w in got if w in plain)
    assert common >= len(plain) - 1


def test_a_fork_beside_other_streams_leaves_them_exact(adapter, heldout):
    audio, neighbour = heldout[2]["samples"], heldout[3]["samples"]
    length = min(len(audio), len(neighbour))
    audio, neighbour = audio[:length], neighbour[:length]
    _, alone = feed(adapter, audio, neighbour=neighbour)
    _, beside = feed(adapter, audio, fork_at=length // 2 + 321, neighbour=neighbour)
    assert words(alone) == words(beside) and words(alone)


def session_finals(adapter, utterances, fork: bool) -> list[str]:
    """A client that stops sending at each finalize (push-to-talk, an OpenAI-style commit) and
    resumes with the next utterance once the finalize's wait is over: the engine's own cutting."""
    from pipecat_nvasr.protocol import Final
    from services.engine.session import Session

    n, finals = adapter.chunk_samples, []
    session = Session(adapter.sample_rate, adapter.sample_rate * 100, fork_finalize=fork)
    for audio in utterances + [None]:
        if audio is None:
            assert adapter.active_streams() == 1  # one stream all along, across the finalizes
            session.close()
        else:
            session.append(audio)
            session.finalize(0.0)  # its wait is over before the client sends again
        while session.has_work(n):
            item = session.next_item(n)
            session.deliver(item, adapter.step([item])[0] if item is not None else None)
            while not session.outbox.empty():
                event = session.outbox.get_nowait()
                if isinstance(event, Final) and event.from_finalize:
                    finals.append(event.text)
    return finals


def test_a_client_that_stops_sending_gets_the_wait_modes_words(adapter, heldout):
    """The fork answers at once, and the stream itself still steps through the finalize point as
    the wait path does: padded with the gap's silence when the client's audio does not come."""
    utterances = [c["samples"][: int((c["speech_end"] + 0.15) * 16000)] for c in heldout[:6]]
    forked, waited = session_finals(adapter, utterances, fork=True), session_finals(adapter, utterances, fork=False)
    assert len(forked) == len(utterances) and forked == waited
    assert adapter.active_streams() == 0


async def _send_frames(client, pcm: bytes, frame_bytes: int = 640) -> None:
    for start in range(0, len(pcm), frame_bytes):
        await client.send_audio(pcm[start : start + frame_bytes])


def _finalize_pads(srv) -> float:
    import httpx
    from conftest import TOKEN

    text = httpx.get(srv.http + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    [line] = [line for line in text.splitlines() if line.startswith("nvasr_finalize_pads_total ")]
    return float(line.split()[1])


async def test_the_audio_completing_a_finalized_chunk_reaches_the_stream_at_once(trained_rnnt, heldout):
    """After a finalize flushed part of a chunk, the client's next 20 ms frames complete it: the
    worker must hand them on when the stream reaches its chunk boundary, not once it has gathered
    a whole chunk more. Else the chunk is zero-padded at the finalize's deadline and the encoder
    hears zeros the client never sent (a Pipecat bot's pause test lost a word to it: "my table
    table tomorrow"). A client that really stops sending still gets its chunk padded."""
    import asyncio

    from conftest import TOKEN, LiveServer, to_pcm16

    from pipecat_nvasr.client import ListenClient
    from services.streaming_worker import StreamingConfig, create_streaming_app

    cfg = StreamingConfig(worker="nemotron", model=str(trained_rnnt), chunk_ms=160, max_sessions=4, token=TOKEN)
    pcm = to_pcm16(heldout[0]["samples"])
    chunk = 2 * 2560
    split = 3 * chunk + 2 * 1600  # the VAD stop: 100 ms into the fourth chunk
    with LiveServer(create_streaming_app(cfg)) as srv:
        for client_stops in (False, True):
            before = _finalize_pads(srv)
            async with ListenClient(srv.ws, token=TOKEN) as client:
                await _send_frames(client, pcm[:split])
                await client.finalize()
                if not client_stops:
                    await _send_frames(client, pcm[split : 4 * chunk])  # the microphone goes on
                await asyncio.sleep(0.6)  # well past the finalize's one-chunk deadline
                await _send_frames(client, pcm[4 * chunk if not client_stops else split :])
                await client.close()
                events = [event async for event in client.events()]
            assert any(getattr(e, "from_finalize", False) for e in events)
            assert _finalize_pads(srv) - before == (1 if client_stops else 0)
