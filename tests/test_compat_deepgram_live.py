"""Deepgram's live API on a streaming worker, driven by the UNMODIFIED clients: Pipecat's
DeepgramSTTService (base_url) in a real pipeline, and the deepgram-sdk live client, against
a real uvicorn worker running the trained tiny model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soxr

from pipecat.frames.frames import InterimTranscriptionFrame, MetricsFrame, TranscriptionFrame
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.services.deepgram.stt import DeepgramSTTService

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
    return asyncio.run(reference_words(worker, heldout[CLIPS]))


def deepgram(worker, api_key: str = TOKEN, **kwargs) -> DeepgramSTTService:
    return DeepgramSTTService(api_key=api_key, base_url=f"{worker.ws}/deepgram", **kwargs)


async def test_pipecat_deepgram_service_hears_what_our_service_hears(worker, heldout, reference):
    stt = deepgram(worker)
    down, up = await transcribe_like_reference(stt, heldout[CLIPS], reference)

    assert not errors(up)
    assert reference[0] and final_words(down) == reference[0]
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert any(f.finalized for f in finals), "a final answering Finalize is confirmed (from_finalize)"
    assert [f for f in down if isinstance(f, InterimTranscriptionFrame)], "interim_results=true gives interims"
    ttfb = [d for f in down if isinstance(f, MetricsFrame) for d in f.data
            if isinstance(d, TTFBMetricsData) and d.processor == stt.name]
    assert ttfb and all(d.value >= 0 for d in ttfb), "Pipecat's TTFB metric comes from the confirmed finalize"
    await sessions_end(worker.engine)


async def test_wrong_key_is_a_401_at_the_handshake_and_permanent(worker, heldout):
    stt = deepgram(worker, api_key="not-the-key")
    down, up = await run(stt, turns(heldout[:1]))

    failures = errors(up)
    assert len(failures) == 1 and "401" in failures[0], failures
    assert not stt.is_usable, "a 401 is permanent: no retry loop"
    assert not [f for f in down if isinstance(f, (TranscriptionFrame, InterimTranscriptionFrame))]
    assert not worker.engine.sessions


async def test_unknown_parameters_are_accepted_and_ignored(worker, heldout, reference):
    # Options Deepgram has and this worker has no use for (Pipecat passes only options the SDK
    # knows; the SDK test below sends a truly unknown one).
    settings = DeepgramSTTService.Settings(model="nova-3", version="latest", extra={"extra": "team:voice"})
    stt = deepgram(worker, settings=settings, mip_opt_out=True, tag=["compat-test"])
    down, up = await transcribe_like_reference(stt, heldout[CLIPS], reference)

    assert not errors(up)
    assert final_words(down) == reference[0]
    await sessions_end(worker.engine)


# --------------------------------------------------------------------- the deepgram-sdk live client


def sdk_client(worker, api_key: str = TOKEN):
    from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment

    environment = DeepgramClientEnvironment(base=worker.http, production=f"{worker.ws}/deepgram",
                                            agent=f"{worker.ws}/deepgram", agent_rest=worker.http)
    return AsyncDeepgramClient(api_key=api_key, environment=environment)


async def sdk_transcribe(worker, samples: np.ndarray, rate: int, finalize: bool = True, **options) -> list:
    """Stream `samples` at `rate` in 20 ms frames, Finalize (if asked), CloseStream; every
    message until the socket closes, as the SDK parses them."""
    from deepgram.core.events import EventType

    pcm = to_pcm16(samples)
    step = rate // 50 * 2
    received: list = []
    async with sdk_client(worker).listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate=str(rate), channels="1", **options,
        request_options={"additional_query_parameters": {"some_future_option": "on"}},
    ) as connection:
        connection.on(EventType.MESSAGE, received.append)
        listening = asyncio.create_task(connection.start_listening())
        for start in range(0, len(pcm), step):
            await connection.send_media(pcm[start:start + step])
        await connection.send_keep_alive()
        if finalize:
            await connection.send_finalize()
        await connection.send_close_stream()
        await listening  # returns when the worker closes the socket after Metadata
    return received


async def test_sdk_live_client_any_rate_with_every_event(worker, heldout):
    from deepgram.listen.v1.types import (ListenV1Metadata, ListenV1Results, ListenV1SpeechStarted,
                                          ListenV1UtteranceEnd)

    item = heldout[4]
    samples = soxr.resample(item["samples"], 16000, 44100).astype(np.float32)
    messages = await sdk_transcribe(worker, samples, 44100, interim_results="true", punctuate="true",
                                    vad_events="true", utterance_end_ms="1000", keyterm=["table"],
                                    endpointing="300", mip_opt_out="true")

    kinds = [type(m).__name__ for m in messages]
    results = [m for m in messages if isinstance(m, ListenV1Results)]
    finals = [r for r in results if r.is_final and r.channel.alternatives[0].transcript]
    assert finals and [w for r in finals for w in words(r.channel.alternatives[0].transcript)] == words(item["text"])
    assert any(not r.is_final for r in results), kinds
    assert isinstance(messages[-1], ListenV1Metadata) and messages[-1].duration == pytest.approx(
        len(samples) / 44100, abs=0.01)
    assert any(isinstance(m, ListenV1SpeechStarted) for m in messages), kinds
    assert any(isinstance(m, ListenV1UtteranceEnd) for m in messages), kinds
    assert [r for r in results if r.from_finalize and r.is_final], "Finalize is always answered"
    final = finals[0]
    alternative = final.channel.alternatives[0]
    assert alternative.words and all(w.start <= w.end and w.punctuated_word for w in alternative.words)
    assert final.start <= alternative.words[0].start and final.duration > 0
    assert final.metadata.request_id and final.channel_index == [0, 1]
    await sessions_end(worker.engine)


async def test_sdk_finalize_on_silence_is_answered_even_empty(worker):
    from deepgram.listen.v1.types import ListenV1Results

    messages = await sdk_transcribe(worker, np.zeros(16000, np.float32), 16000)
    answers = [m for m in messages if isinstance(m, ListenV1Results) and m.from_finalize]
    assert len(answers) == 1 and answers[0].is_final and answers[0].channel.alternatives[0].transcript == ""


async def test_keyterms_and_keywords_become_the_session_boost(worker):
    from pipecat_nvasr.protocol import BoostPhrase

    seen = []

    async def watch():
        while not seen:
            seen.extend(s.boost for s in list(worker.engine.sessions.values()) if s.boost)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    messages = await sdk_transcribe(worker, np.zeros(8000, np.float32), 16000, keyterm=["Pipecat", "Nemotron"],
                                    keywords=["coffee:3", "timer"])
    await asyncio.wait_for(watcher, 5)
    assert messages and seen[0] == [BoostPhrase("Pipecat", 1.0), BoostPhrase("Nemotron", 1.0),
                                    BoostPhrase("coffee", 3.0), BoostPhrase("timer", 1.0)]


@pytest.mark.parametrize("query, needle", [
    ("encoding=mulaw&sample_rate=8000", "encoding"),
    ("channels=2", "channels=1"),
    ("diarize=true", "multitalker"),
    ("redact=pci", "redact"),
    ("numerals=true", "numerals"),
    ("language=fr", "language"),
    ("sample_rate=1000", "sample_rate"),
    ("keywords=noise:-5", "intensifier"),
])
async def test_what_cannot_be_honoured_is_a_400_at_the_handshake(worker, query, needle):
    import json

    import websockets

    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(f"{worker.ws}/deepgram/v1/listen?{query}",
                                      additional_headers={"Authorization": f"Token {TOKEN}"}):
            pass
    response = refused.value.response
    assert response.status_code == 400
    assert needle in json.loads(response.body)["err_msg"]
    assert not worker.engine.sessions


async def test_browser_subprotocol_key_and_bearer_are_accepted(worker):
    import websockets

    for kwargs in ({"subprotocols": ["token", TOKEN]}, {"additional_headers": {"Authorization": f"Bearer {TOKEN}"}}):
        async with websockets.connect(f"{worker.ws}/deepgram/v1/listen", **kwargs) as ws:
            await ws.send('{"type": "CloseStream"}')
            metadata = [m async for m in ws][-1]
        assert '"Metadata"' in metadata
        assert ws.close_code == 1000
    await sessions_end(worker.engine)


async def test_a_full_worker_is_a_503_at_the_handshake_and_the_others_go_on(worker):
    import contextlib
    import json

    import websockets

    headers = {"Authorization": f"Token {TOKEN}"}
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(websockets.connect(f"{worker.ws}/deepgram/v1/listen",
                                                                      additional_headers=headers))
                   for _ in range(worker.engine.max_sessions)]
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"{worker.ws}/deepgram/v1/listen", additional_headers=headers):
                pass
        assert refused.value.response.status_code == 503
        assert json.loads(refused.value.response.body)["err_msg"]
        for ws in sockets:  # every admitted session still works to its end
            await ws.send('{"type": "CloseStream"}')
            assert '"Metadata"' in [m async for m in ws][-1]
    await sessions_end(worker.engine)
