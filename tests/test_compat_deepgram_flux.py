"""Deepgram Flux on a parakeet-realtime worker, driven by the UNMODIFIED Pipecat
DeepgramFluxSTTService: the worker's `<EOU>` ends Pipecat's user turns, exactly as our own
ParakeetRealtimeSTTService's do (trained tiny EOU model, real uvicorn worker)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.services.deepgram.flux.stt import DeepgramFluxSTTService
from pipecat.turns.user_stop import ExternalUserTurnStopStrategy

from compat_helpers import audio_frames, errors, run, sessions_end, streaming_worker, then_wait, words
from conftest import TOKEN, to_pcm16

CLIPS = slice(0, 3)


@pytest.fixture(scope="module")
def worker():
    with streaming_worker("parakeet-realtime") as server:
        yield server


async def user_turns(stt, samples: np.ndarray, expected: int) -> tuple[list, list, list]:
    """stt → user aggregator on one clip; waits until `expected` user turns have ended."""
    user, _ = LLMContextAggregatorPair(LLMContext())
    turns = []

    @user.event_handler("on_user_turn_stopped")
    async def on_stopped(aggregator, strategy, message):
        turns.append((strategy, message.content))

    frames = then_wait(audio_frames(samples, pace=0.5), lambda: len(turns) >= expected)
    down, up = await run(Pipeline([stt, user]), frames)
    return turns, down, up


async def test_flux_turns_are_our_services_turns(worker, eou_set):
    from pipecat_nvasr import ParakeetRealtimeSTTService

    for item in eou_set[CLIPS]:
        expected = len(item["utterances"])
        ours, _, up = await user_turns(ParakeetRealtimeSTTService(url=worker.ws, api_key=TOKEN), item["samples"],
                                       expected)
        assert not errors(up) and len(ours) == expected, ours
        flux = DeepgramFluxSTTService(api_key=TOKEN, url=f"{worker.ws}/deepgram/v2/listen")
        theirs, _, up = await user_turns(flux, item["samples"], expected)
        assert not errors(up)
        assert all(isinstance(strategy, ExternalUserTurnStopStrategy) for strategy, _ in theirs), theirs
        assert [words(text) for _, text in theirs] == [words(text) for _, text in ours]
    await sessions_end(worker.engine)


async def test_flux_messages_and_configure(worker, eou_set):
    import websockets

    item = eou_set[0]
    url = f"{worker.ws}/deepgram/v2/listen?model=flux-general-en&sample_rate=16000&encoding=linear16&keyterm=timer"
    async with websockets.connect(url, additional_headers={"Authorization": f"Token {TOKEN}"}) as ws:
        connected = json.loads(await ws.recv())
        assert connected["type"] == "Connected" and connected["request_id"]
        await ws.send(json.dumps({"type": "Configure", "keyterms": ["Pipecat"]}))
        assert json.loads(await ws.recv())["type"] == "ConfigureSuccess"
        await ws.send(json.dumps({"type": "Configure", "thresholds": {"eot_threshold": 0.8}}))
        failure = json.loads(await ws.recv())
        assert failure["type"] == "ConfigureFailure" and "eot_threshold" in failure["description"]
        pcm = to_pcm16(item["samples"])
        for start in range(0, len(pcm), 640):
            await ws.send(pcm[start:start + 640])
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = [json.loads(m) async for m in ws]
    events = [m["event"] for m in messages if m["type"] == "TurnInfo"]
    assert events.count("StartOfTurn") == events.count("EndOfTurn") == len(item["utterances"]), events
    assert "Update" in events and events[0] == "StartOfTurn"
    ends = [m for m in messages if m.get("event") == "EndOfTurn"]
    assert [m["turn_index"] for m in ends] == list(range(len(ends)))
    assert all(m["audio_window_start"] <= m["audio_window_end"] for m in ends)
    assert ws.close_code == 1000
    await sessions_end(worker.engine)


@pytest.mark.parametrize("query", ["eager_eot_threshold=0.5", "eot_threshold=0.8", "eot_timeout_ms=3000",
                                   "encoding=opus"])
async def test_turn_detector_knobs_are_refused_at_the_handshake(worker, query):
    import websockets

    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(f"{worker.ws}/deepgram/v2/listen?{query}",
                                      additional_headers={"Authorization": f"Token {TOKEN}"}):
            pass
    assert refused.value.response.status_code == 400
    assert query.split("=")[0] in json.loads(refused.value.response.body)["err_msg"]


async def test_wrong_key_is_a_401(worker):
    import websockets

    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(f"{worker.ws}/deepgram/v2/listen",
                                      additional_headers={"Authorization": "Token nope"}):
            pass
    assert refused.value.response.status_code == 401
    assert not worker.engine.sessions


async def test_deepgram_live_on_parakeet_realtime_eou_sets_speech_final(worker, eou_set):
    from deepgram.listen.v1.types import ListenV1Results

    from test_compat_deepgram_live import sdk_transcribe

    item = eou_set[1]
    messages = await sdk_transcribe(worker, item["samples"], 16000, finalize=False)
    finals = [m for m in messages if isinstance(m, ListenV1Results) and m.is_final and m.channel.alternatives[0].words]
    assert len(finals) == len(item["utterances"]) and all(r.speech_final for r in finals)
    await sessions_end(worker.engine)
