"""Protocol fuzz of each compatible dialect (hypothesis): random handshake parameters, random
and half-valid client messages, random audio, abrupt or clean ends. The worker must answer
every handshake with a session or an HTTP 4xx with a message, answer every accepted socket
with JSON messages of the dialect, stay healthy, leave no session behind, and never disturb
a bystander: a session of our own protocol transcribing the same clip over and over beside
the fuzz, whose words must stay exactly what it hears alone."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipecat_nvasr.client import ListenClient, stream_pcm
from pipecat_nvasr.protocol import Final

from compat_helpers import sessions_end, streaming_worker, words
from conftest import TOKEN, clip_set, to_pcm16

CLIP = clip_set("heldout")[4]
SPEECH = to_pcm16(CLIP["samples"])
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20")), deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def worker():
    with streaming_worker("nemotron") as server:
        yield server


async def our_words(server) -> list[str]:
    async with ListenClient(server.ws, token=TOKEN) as client:
        sender = asyncio.create_task(stream_pcm(client, SPEECH, realtime=True))
        finals = [e async for e in client.events() if isinstance(e, Final)]
        await sender
    return [w for f in finals for w in words(f.text)]


class Bystander:
    """Our own protocol's client, in its own thread and loop, transcribing CLIP until stopped."""

    def __init__(self, server):
        self.server, self.heard, self.stop = server, [], threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self):
        while not self.stop.is_set():
            self.heard.append(await our_words(self.server))


@pytest.fixture(scope="module")
def bystander(worker):
    alone = asyncio.run(our_words(worker))
    assert alone, "the trained model hears the clip"
    watcher = Bystander(worker)
    watcher.alone = alone
    watcher.thread.start()
    yield watcher
    watcher.stop.set()
    watcher.thread.join(60)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)


def messages(valid: list[dict], audio_as=None):
    """A client's frames: valid control messages, JSON with the dialect's types and random
    fields, any JSON, any text, any bytes, and slices of real speech."""
    kinds = sorted({m["type"] for m in valid})
    half_valid = st.builds(lambda kind, extra: json.dumps({**extra, "type": kind}), st.sampled_from(kinds),
                           st.dictionaries(st.text(max_size=10), json_values, max_size=3))
    speech = st.integers(0, len(SPEECH) // 2 - 1).map(lambda at: SPEECH[2 * at: 2 * at + 6400])
    if audio_as is not None:
        speech = speech.map(audio_as)
    return st.lists(st.one_of(
        st.sampled_from([json.dumps(m) for m in valid]),
        half_valid,
        json_values.map(json.dumps),
        st.text(max_size=50),
        st.binary(max_size=3000),
        speech,
    ), max_size=12)


def queries(known: list[str]):
    values = st.sampled_from(["true", "false", "1", "0", "16000", "48000", "-3", "linear16", "en", "fr", "x:2",
                              "", "nova-3"]) | st.text(max_size=8)
    return st.dictionaries(st.sampled_from(known) | st.text(min_size=1, max_size=8), values, max_size=4)


async def fuzz_session(server, path: str, query: dict, frames: list, end: str | None, headers: dict) -> None:
    url = f"{server.ws}{path}?" + httpx.QueryParams(query).__str__()
    try:
        ws = await websockets.connect(url, additional_headers=headers, max_size=2**22)
    except websockets.InvalidStatus as refused:
        assert refused.response.status_code in (400, 401), refused.response.status_code
        assert json.loads(refused.response.body), refused.response.body
        return
    try:
        for frame in frames:
            await ws.send(frame)
        if end is not None:
            await ws.send(end)
            async with asyncio.timeout(60):  # the worker ends the stream after its last results
                async for message in ws:
                    assert isinstance(message, str) and "type" in json.loads(message)
    except websockets.ConnectionClosed as closed:
        # the worker may end a session that broke its protocol (too big a frame), never crash
        assert closed.rcvd is None or closed.rcvd.code in (1000, 1008, 1009, 1011, 1013), closed.rcvd
    finally:
        await ws.close()


def healthy(server) -> None:
    response = httpx.get(f"{server.http}/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and response.json()["status"] == "ok"


DEEPGRAM_PARAMS = ["encoding", "sample_rate", "channels", "interim_results", "punctuate", "smart_format",
                   "language", "endpointing", "utterance_end_ms", "vad_events", "keyterm", "keywords", "diarize",
                   "model", "numerals", "redact", "mip_opt_out"]
DEEPGRAM_AUTH = {"Authorization": f"Token {TOKEN}"}


@FUZZ
@given(query=queries(DEEPGRAM_PARAMS), frames=messages(
    [{"type": "KeepAlive"}, {"type": "Finalize"}, {"type": "CloseStream"}]), clean=st.booleans())
def test_fuzz_deepgram_live(worker, bystander, query, frames, clean):
    asyncio.run(fuzz_session(worker, "/deepgram/v1/listen", query, frames,
                             '{"type": "CloseStream"}' if clean else None, DEEPGRAM_AUTH))
    healthy(worker)


@FUZZ
@given(query=queries(["encoding", "sample_rate", "model", "keyterm", "eot_threshold", "eot_timeout_ms"]),
       frames=messages([{"type": "Configure", "keyterms": ["timer"]}, {"type": "CloseStream"},
                        {"type": "Configure", "thresholds": {"eot_threshold": 0.7}}]), clean=st.booleans())
def test_fuzz_deepgram_flux(worker, bystander, query, frames, clean):
    asyncio.run(fuzz_session(worker, "/deepgram/v2/listen", query, frames,
                             '{"type": "CloseStream"}' if clean else None, DEEPGRAM_AUTH))
    healthy(worker)


def append(pcm: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})


@FUZZ
@given(frames=messages([
    {"type": "input_audio_buffer.commit"}, {"type": "input_audio_buffer.clear"},
    {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": {"type": "server_vad"}}}}},
    {"type": "input_audio_buffer.append", "audio": "AAAA"},
], audio_as=append), intent=st.sampled_from(["transcription", "transcription", "conversation"]))
def test_fuzz_openai_realtime(worker, bystander, frames, intent):
    asyncio.run(openai_session(worker, frames, intent))
    healthy(worker)


async def openai_session(server, frames: list, intent: str) -> None:
    """OpenAI's protocol has no end-of-stream message: a last commit, then an unknown event as a
    marker; the commit's `committed` is the last one before the marker's error, and the session
    is over once that item's transcription has completed (every commit gets one)."""
    url = f"{server.ws}/v1/realtime?intent={intent}"
    try:
        ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
    except websockets.InvalidStatus as refused:
        assert refused.response.status_code == 400 and intent != "transcription"
        return
    async with ws:
        for frame in frames:
            await ws.send(frame)
        await ws.send('{"type": "input_audio_buffer.commit"}')
        await ws.send('{"type": "marker.ping"}')
        last_commit, marked, completed, seen = None, False, set(), []
        try:
            async with asyncio.timeout(60):
                async for message in ws:
                    event = json.loads(message)
                    seen.append((event["type"], event.get("item_id")))
                    if event["type"] == "error":
                        assert event["error"]["message"] and event["error"]["type"]
                        marked = marked or "marker.ping" in event["error"]["message"]
                    elif event["type"] == "input_audio_buffer.committed" and not marked:
                        last_commit = event["item_id"]
                    elif event["type"] == "conversation.item.input_audio_transcription.completed":
                        completed.add(event["item_id"])  # (the model may end an item before its commit)
                    if marked and last_commit in completed:
                        return
        except TimeoutError:  # say what came, so a rare hang can be told from a slow machine
            raise AssertionError(f"no completed for {last_commit} after 60 s (engine steps "
                                 f"{server.engine.steps}); events: {seen}") from None


async def test_the_bystander_heard_the_same_words_and_no_session_is_left(worker, bystander):
    bystander.stop.set()
    await asyncio.to_thread(bystander.thread.join, 60)
    assert len(bystander.heard) >= 2, "the bystander ran beside the fuzz"
    assert all(heard == bystander.alone for heard in bystander.heard), (bystander.alone, bystander.heard)
    await sessions_end(worker.engine)
    assert worker.app.state.listen_state.connections == set()
