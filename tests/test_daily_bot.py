"""agents/daily_bot.py offline: one VAD and one STT session per participant, transcripts
tagged with their `user_id`, and a bot that lives until the room is empty.

Real parts: the bot's own per-participant pipeline (Silero VAD → NemotronSTTService per
participant) against a real local worker with the trained tiny model, and a real
DailyTransport (constructed, never joined: no network) whose own event dispatch delivers
the participant events.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys

import numpy as np
import pytest

from pipecat.frames.frames import EndFrame, ErrorFrame, TranscriptionFrame, UserAudioRawFrame
from pipecat.tests.utils import SleepFrame, run_test

from conftest import ASSETS, TOKEN, LiveServer, to_pcm16
from test_nemotron_service import CLEAN, words

AGENTS = ASSETS.parent.parent / "agents"
FRAME = 320  # 20 ms at 16 kHz


def load_daily_bot():
    sys.path.insert(0, str(AGENTS))
    spec = importlib.util.spec_from_file_location("daily_bot_under_test", AGENTS / "daily_bot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def worker():
    from services.streaming_worker import StreamingConfig, create_streaming_app

    app = create_streaming_app(StreamingConfig(model=str(ASSETS / "tiny_rnnt.nemo"), token=TOKEN, max_sessions=8))
    with LiveServer(app) as server:
        server.app = app
        yield server


def talking_at_once(voices: dict[str, np.ndarray], pace: float = 0.5) -> list:
    """Every participant's microphone, 20 ms frames interleaved: all of them talk at once."""
    pcm = {user: to_pcm16(np.concatenate([np.zeros(4000, np.float32), samples, np.zeros(16000, np.float32)]))
           for user, samples in voices.items()}
    frames = []
    for start in range(0, max(len(p) for p in pcm.values()), FRAME * 2):
        for user, audio in pcm.items():
            chunk = audio[start : start + FRAME * 2]
            if chunk:
                frames.append(UserAudioRawFrame(user_id=user, audio=chunk, sample_rate=16000, num_channels=1))
        frames.append(SleepFrame(sleep=0.02 * pace))
    return frames


async def test_two_participants_talking_at_once_get_their_own_transcripts(worker, heldout, monkeypatch):
    monkeypatch.setenv("NVASR_URL", worker.ws)
    monkeypatch.setenv("NVASR_TOKEN", TOKEN)
    daily_bot = load_daily_bot()
    from participants import PerParticipantSTT

    sessions_seen: set[str] = set()
    done = asyncio.Event()

    async def watch():
        while not done.is_set():
            sessions_seen.update(worker.app.state.engine.sessions)
            await asyncio.sleep(0.01)

    alice, bob = heldout[CLEAN], heldout[0]
    cut = lambda item: item["samples"][: int((item["speech_end"] + 0.1) * 16000)]  # noqa: E731
    router = PerParticipantSTT(daily_bot.participant_branch)
    watcher = asyncio.create_task(watch())
    try:
        down, up = await run_test(router, frames_to_send=talking_at_once({"alice": cut(alice), "bob": cut(bob)}),
                                  start_timeout=10)
    finally:
        done.set()
        await watcher
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    by_user = {user: [w for f in finals if f.user_id == user for w in words(f.text)] for user in ("alice", "bob")}
    assert {f.user_id for f in finals} == {"alice", "bob"}
    assert by_user["alice"] == words(alice["text"])
    assert by_user["bob"] == words(bob["text"])
    assert len(sessions_seen) == 2  # one worker session per participant
    assert any(f.finalized for f in finals)  # each participant's own VAD stop finalized a turn
    assert not router.participants  # EndFrame drained and closed every branch


async def test_a_participant_leaving_drains_their_session_and_the_last_one_ends_the_bot(worker, heldout, monkeypatch):
    monkeypatch.setenv("NVASR_URL", worker.ws)
    monkeypatch.setenv("NVASR_TOKEN", TOKEN)
    daily_bot = load_daily_bot()
    from pipecat.transports.daily.transport import DailyTransport

    transport = DailyTransport("https://example.daily.co/offline", None, "bot", daily_bot.TRANSPORT_PARAMS["daily"]())
    _pipeline, router = daily_bot.build_pipeline(transport)

    class EndRecorder:
        def __init__(self):
            self.frames = []

        async def queue_frame(self, frame):
            self.frames.append(frame)

    ended = EndRecorder()
    daily_bot.keep_alive_until_room_empty(transport, router, ended)

    async def dispatch(event, *args):
        await transport._call_event_handler(event, *args)
        await asyncio.sleep(0.2)  # Daily's handlers run as tasks

    # the router runs in a pipeline of its own here (no Daily connection)
    item = heldout[CLEAN]
    speech = item["samples"][: int((item["speech_end"] + 0.1) * 16000)]
    during_call: dict = {}

    async def leave(user_id):
        await dispatch("on_participant_left", {"id": user_id}, "left")
        for _ in range(50):  # draining waits for the worker's last finals: slower on a loaded machine
            if user_id not in router.participants:
                break
            await asyncio.sleep(0.05)
        during_call[user_id] = (list(router.participants), len(ended.frames))

    def call():
        """Both talk; alice leaves while the pipeline runs; then bob leaves."""
        yield from talking_at_once({"alice": speech, "bob": speech}, pace=0.25)
        asyncio.get_running_loop().create_task(leave("alice"))
        yield SleepFrame(sleep=1.5)
        asyncio.get_running_loop().create_task(leave("bob"))
        yield SleepFrame(sleep=1.5)

    await dispatch("on_participant_joined", {"id": "alice"})
    await dispatch("on_participant_joined", {"id": "bob"})
    down, up = await run_test(router, frames_to_send=call(), start_timeout=10)

    assert during_call["alice"] == (["bob"], 0)  # alice's branch ended, bob's lives on, the bot stays
    assert during_call["bob"] == ([], 1) and isinstance(ended.frames[0], EndFrame)  # the room is empty
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    for user in ("alice", "bob"):  # leaving drained each session: their words came out
        assert [w for f in finals if f.user_id == user for w in words(f.text)] == words(item["text"])
