"""The Pipecat services send audio in chunk-sized messages (issue 19, item 2).

A real Pipecat pipeline feeds NemotronSTTService 20 ms frames; a real uvicorn worker with the
trained tiny model answers. The worker's ASGI app is wrapped by a recorder that logs every
WebSocket message the worker receives, so the tests see exactly what went over the wire: how
many audio messages per second of audio, where they end on the worker's chunk grid, and that
the held audio arrives before `finalize` and `close`, with no byte lost.
"""

from __future__ import annotations

import json

import pytest

from pipecat.frames.frames import ErrorFrame, TranscriptionFrame

from pipecat_nvasr._audio_gatherer import AudioGatherer

from conftest import ASSETS, TOKEN, LiveServer
from test_nemotron_service import audio_frames, run, service, utterance, word_accuracy, words


class WireRecorder:
    """ASGI wrapper: records each WebSocket message a session sends to the worker, in order."""

    def __init__(self, app):
        self.app = app
        self.sessions: list[list[tuple[str, object]]] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        log: list[tuple[str, object]] = []
        self.sessions.append(log)

        async def recording_receive():
            message = await receive()
            if message["type"] == "websocket.receive":
                if message.get("bytes") is not None:
                    log.append(("audio", len(message["bytes"])))
                else:
                    log.append((json.loads(message["text"]).get("type"), None))
            return message

        await self.app(scope, recording_receive, send)


@pytest.fixture(scope="module")
def worker():
    from services.streaming_worker import StreamingConfig, create_streaming_app

    recorder = WireRecorder(create_streaming_app(StreamingConfig(
        model=str(ASSETS / "tiny_rnnt.nemo"), token=TOKEN, max_sessions=4)))
    with LiveServer(recorder) as server:
        server.recorder = recorder
        yield server


def audio_runs(log):
    """The audio messages between protocol messages: [(sizes, the message that ends the run)]."""
    runs, sizes = [], []
    for kind, size in log:
        if kind == "audio":
            sizes.append(size)
        else:
            runs.append((sizes, kind))
            sizes = []
    return runs


async def test_audio_goes_out_in_chunks_and_all_of_it_before_finalize_and_close(worker, heldout):
    """20 ms frames leave the service as one message per 160 ms chunk, ending on the stream's
    chunk boundaries; the partial chunk is flushed right before `finalize` and before `close`.
    (Before: one message per frame, 50 per second of audio.)"""
    first, second = heldout[4], heldout[7]
    frames = utterance(first) + utterance(second, stop=False)  # the second turn ends with `close`
    stt = service(worker)
    before = len(worker.recorder.sessions)
    down, up = await run(stt, frames)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    [log] = worker.recorder.sessions[before:]

    chunk = AudioGatherer.chunk_bytes_for(stt.worker_session.chunk_ms, 16000)
    assert chunk == 2 * 16000 * 160 // 1000
    sent = sum(len(f.audio) for f in frames if hasattr(f, "audio"))
    received = sum(size for kind, size in log if kind == "audio")
    assert received == sent, "every byte of audio reaches the worker"

    runs = audio_runs(log)
    assert [kind for _, kind in runs][-2:] == ["finalize", "close"]
    backlog = round(stt.backlog_seconds_sent * 16000) * 2  # audio kept until `ready`, sent as it came
    position = 0
    for sizes, kind in runs:
        for k, size in enumerate(sizes):
            position += size
            last = k == len(sizes) - 1
            if position > backlog and not (last and kind in ("finalize", "close")):
                assert position % chunk == 0, f"an audio message ends off the chunk grid at byte {position}"
    ends, position = [], 0
    for kind, size in log:
        if kind == "audio":
            position += size
            ends.append(position)
    messages = len(ends)
    gathered = [end for end in ends if end > backlog]
    # one message per chunk of audio after the backlog, plus the flushes before `finalize` and `close`
    assert len(gathered) <= (sent - backlog) / chunk + 2, (len(gathered), (sent - backlog) / chunk)
    seconds = sent / 2 / 16000
    print(f"\naudio messages per second of audio: {messages / seconds:.1f} (20 ms frames in: 50)")

    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    heard = [w for f in finals for w in words(f.text)]
    assert word_accuracy(words(first["text"]) + words(second["text"]), heard) >= 0.8, heard
    assert finals[0].finalized and finals[0].result.from_finalize


async def test_gathering_off_sends_every_frame(worker, heldout):
    """`audio_gather_fraction=0`: the old behaviour, one message per pipeline frame."""
    frames = utterance(heldout[4])
    stt = service(worker, audio_gather_fraction=0)
    before = len(worker.recorder.sessions)
    _, up = await run(stt, frames)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    [log] = worker.recorder.sessions[before:]
    sizes = [size for kind, size in log if kind == "audio"]
    frame_sizes = [len(f.audio) for f in frames if hasattr(f, "audio")]
    assert sizes == frame_sizes


async def test_half_chunk_messages(worker, heldout):
    """A fraction of the chunk: messages of 80 ms on a 160 ms worker, still on the grid."""
    frames = utterance(heldout[4])
    stt = service(worker, audio_gather_fraction=0.5)
    before = len(worker.recorder.sessions)
    down, up = await run(stt, frames)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    [log] = worker.recorder.sessions[before:]
    backlog = round(stt.backlog_seconds_sent * 16000) * 2
    half = 2 * 16000 * 80 // 1000
    position = 0
    runs = audio_runs(log)
    for sizes, kind in runs:
        for k, size in enumerate(sizes):
            position += size
            if position > backlog and not (k == len(sizes) - 1 and kind in ("finalize", "close")):
                assert position % half == 0 and size <= half, (position, size)
    assert position == sum(len(f.audio) for f in frames if hasattr(f, "audio"))
    assert any(f.finalized for f in down if isinstance(f, TranscriptionFrame))


def test_gatherer_holds_to_the_next_boundary_and_flushes_everything():
    """The gatherer alone: boundaries count from the session's first byte, across flushes."""
    g = AudioGatherer(AudioGatherer.chunk_bytes_for(160, 16000))
    frame = b"\x01\x00" * 320  # 20 ms
    out = [g.add(frame) for _ in range(8)]
    assert out[:7] == [b""] * 7 and len(out[7]) == 5120
    assert g.add(frame * 3) == b"" and g.held_bytes == 1920
    assert len(g.flush()) == 1920 and g.held_bytes == 0 and g.flush() == b""
    # after a flush at byte 7040 the next message ends at the next boundary, 10240
    assert len(g.add(frame * 5)) == 10240 - 7040 and g.held_bytes == 7040 + 3200 - 10240
    passthrough = AudioGatherer(0)
    assert passthrough.add(frame) == frame and passthrough.held_bytes == 0
    g.add(frame)
    with pytest.raises(RuntimeError):
        g.reset(5120)  # held audio would be lost
