"""OpenAI's Realtime transcription API on a streaming worker, driven by the UNMODIFIED
clients: Pipecat's OpenAIRealtimeSTTService (base_url) in a real pipeline, and the openai
SDK's realtime client, against a real uvicorn worker running the trained tiny model."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
import soxr

from pipecat.frames.frames import InterimTranscriptionFrame, MetricsFrame, TranscriptionFrame
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.services.openai.stt import OpenAIRealtimeSTTService

from compat_helpers import (errors, final_words, reference_words, run, sessions_end, streaming_worker,
                            transcribe_like_reference, turns, words)
from conftest import TOKEN, to_pcm16

CLIPS = slice(0, 4)


@pytest.fixture(scope="module")
def worker():
    with streaming_worker("nemotron") as server:
        yield server


@pytest.fixture(scope="module")
def reference(worker, heldout):
    """Our service fed the same 24 kHz audio the OpenAI client sends (the pipeline runs at 24 kHz,
    so neither client resamples and the worker resamples both alike)."""
    return asyncio.run(reference_words(worker, heldout[CLIPS], rate=24000))


def openai_stt(worker, api_key: str = TOKEN, **kwargs) -> OpenAIRealtimeSTTService:
    return OpenAIRealtimeSTTService(api_key=api_key, base_url=f"{worker.ws}/v1/realtime", **kwargs)


async def test_pipecat_openai_realtime_service_hears_what_our_service_hears(worker, heldout, reference):
    stt = openai_stt(worker)
    down, up = await transcribe_like_reference(stt, heldout[CLIPS], reference, rate=24000)

    assert not errors(up)
    assert reference[0] and final_words(down) == reference[0]
    assert [f for f in down if isinstance(f, InterimTranscriptionFrame)], "deltas arrive as interims"
    ttfb = [d for f in down if isinstance(f, MetricsFrame) for d in f.data
            if isinstance(d, TTFBMetricsData) and d.processor == stt.name]
    assert ttfb and all(d.value >= 0 for d in ttfb)
    await sessions_end(worker.engine)


async def test_server_vad_turns_come_from_the_model(worker, heldout):
    """turn_detection=server_vad: the worker proposes the turns (speech_started/stopped) and
    commits each utterance the model ends; no local VAD frames are sent."""
    from pipecat.frames.frames import ProposedUserStartedSpeakingFrame, ProposedUserStoppedSpeakingFrame

    from compat_helpers import Finals, audio_frames, then_wait

    stt = openai_stt(worker, turn_detection={"type": "server_vad"})
    item = heldout[4]
    finals = Finals()
    frames = then_wait(audio_frames(np.concatenate([item["samples"], np.zeros(16000, np.float32)]), pace=0.5),
                       lambda: len(finals.ids) >= 1)
    down, up = await run(stt, frames, observers=[finals])

    assert not errors(up)
    assert final_words(down) == words(item["text"])
    broadcast = [type(f) for f in down + up]
    assert ProposedUserStartedSpeakingFrame in broadcast and ProposedUserStoppedSpeakingFrame in broadcast
    await sessions_end(worker.engine)


async def test_wrong_key_is_refused_at_the_handshake(worker, heldout):
    stt = openai_stt(worker, api_key="not-the-key")
    down, up = await run(stt, turns(heldout[:1]))

    failures = errors(up)
    assert failures and all("401" in f for f in failures), failures
    assert not [f for f in down if isinstance(f, (TranscriptionFrame, InterimTranscriptionFrame))]
    assert not worker.engine.sessions


# --------------------------------------------------------------------- the openai SDK realtime client


def sdk_client(worker, api_key: str = TOKEN):
    from openai import AsyncOpenAI

    return AsyncOpenAI(api_key=api_key, base_url=f"{worker.http}/v1", websocket_base_url=f"{worker.ws}/v1")


async def test_openai_sdk_realtime_client_transcribes(worker, heldout):
    item = heldout[4]
    pcm = to_pcm16(soxr.resample(item["samples"], 16000, 24000).astype(np.float32))
    events = []
    async with sdk_client(worker).realtime.connect(extra_query={"intent": "transcription"}) as connection:
        events.append(await connection.recv())
        await connection.session.update(session={
            "type": "transcription",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                "transcription": {"model": "gpt-realtime-whisper", "language": "en"},
                                "turn_detection": None, "noise_reduction": {"type": "near_field"}}},
        })
        step = 24000 // 50 * 2
        for start in range(0, len(pcm), step):
            await connection.input_audio_buffer.append(audio=base64.b64encode(pcm[start:start + step]).decode())
        await connection.input_audio_buffer.commit()
        async for event in connection:
            events.append(event)
            if event.type == "conversation.item.input_audio_transcription.completed":
                break

    kinds = [e.type for e in events]
    assert kinds[0] == "session.created" and "session.updated" in kinds
    committed = next(e for e in events if e.type == "input_audio_buffer.committed")
    completed = events[-1]
    assert completed.item_id == committed.item_id
    assert words(completed.transcript) == words(item["text"])
    deltas = "".join(e.delta for e in events if e.type == "conversation.item.input_audio_transcription.delta")
    assert deltas and completed.transcript.startswith(deltas.strip()[:3]), "deltas are append-only text"
    await sessions_end(worker.engine)


async def test_bad_events_get_openai_shaped_errors_and_the_session_goes_on(worker, heldout):
    import websockets

    item = heldout[0]
    pcm = to_pcm16(soxr.resample(item["samples"], 16000, 24000).astype(np.float32))
    url = f"{worker.ws}/v1/realtime?intent=transcription"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        bad = [
            {"type": "input_audio_buffer.append", "audio": "not base64!"},
            {"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}},
            {"type": "session.update", "session": {"audio": {"input": {"transcription": {"language": "xx"}}}}},
            {"type": "response.create"},
        ]
        for event in bad:
            await ws.send(json.dumps(event))
            error = json.loads(await ws.recv())
            assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
            assert error["error"]["message"]
        await ws.send("not json")
        assert json.loads(await ws.recv())["type"] == "error"
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        while (event := json.loads(await ws.recv()))["type"] != "conversation.item.input_audio_transcription.completed":
            pass
        assert words(event["transcript"]) == words(item["text"])
    await sessions_end(worker.engine)


async def test_a_conversation_session_is_refused_with_a_400(worker):
    import websockets

    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(f"{worker.ws}/v1/realtime?model=gpt-realtime",
                                      additional_headers={"Authorization": f"Bearer {TOKEN}"}):
            pass
    assert refused.value.response.status_code == 400
    assert "intent=transcription" in json.loads(refused.value.response.body)["error"]["message"]
