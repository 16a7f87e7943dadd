"""Deepgram's pre-recorded API on the batch worker, with the UNMODIFIED deepgram-sdk client:
the same batcher, hence the same words, as the OpenAI-compatible endpoint (real uvicorn,
the tiny batch model in float64)."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from services.batch_worker import BatchConfig, create_batch_app
from batch_helpers import batch_model, encode, heldout
from conftest import TOKEN, LiveServer, to_pcm16


@pytest.fixture(scope="module")
def server():
    cfg = BatchConfig(token=TOKEN, max_batch=8, max_wait_ms=30, max_upload_bytes=2_000_000, warmup=False)
    app = create_batch_app(cfg, model=batch_model())
    with LiveServer(app) as live:
        yield live


def deepgram(server, api_key: str = TOKEN):
    from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment

    environment = DeepgramClientEnvironment(base=f"{server.http}/deepgram", production=f"{server.ws}/deepgram",
                                            agent=f"{server.ws}/deepgram", agent_rest=server.http)
    return AsyncDeepgramClient(api_key=api_key, environment=environment)


def openai_text(server, wav: bytes) -> str:
    from openai import OpenAI

    client = OpenAI(api_key=TOKEN, base_url=f"{server.http}/v1")
    return client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", wav)).text


async def test_sdk_transcribe_file_equals_the_openai_endpoint(server):
    for item in heldout()[:4]:
        wav = encode(item["samples"], 16000, "wav")
        response = await deepgram(server).listen.v1.media.transcribe_file(
            request=wav, model="nova-3", punctuate=True, smart_format=True, tag=["compat"],
            request_options={"additional_query_parameters": {"some_future_option": "on"}})
        alternative = response.results.channels[0].alternatives[0]
        assert alternative.transcript == openai_text(server, wav)
        assert alternative.words and all(w.start <= w.end for w in alternative.words)
        assert response.metadata.duration == pytest.approx(len(item["samples"]) / 16000, abs=0.01)
        assert response.metadata.request_id and response.metadata.channels == 1


async def test_raw_linear16_at_any_rate(server):
    item = heldout()[2]
    pcm = to_pcm16(soxr.resample(item["samples"], 16000, 48000).astype(np.float32))
    # the SDK has no sample_rate argument for pre-recorded audio; Deepgram's API takes it as a query parameter
    response = await deepgram(server).listen.v1.media.transcribe_file(
        request=pcm, encoding="linear16", request_options={"additional_query_parameters": {"sample_rate": "48000"}})
    expected = openai_text(server, encode(item["samples"], 16000, "wav"))
    assert response.results.channels[0].alternatives[0].transcript.split() == expected.lower().split()


async def test_refusals_are_deepgram_api_errors(server):
    from deepgram.core import ApiError

    wav = encode(heldout()[0]["samples"], 16000, "wav")
    with pytest.raises(ApiError) as unauthorized:
        await deepgram(server, api_key="nope").listen.v1.media.transcribe_file(request=wav)
    assert unauthorized.value.status_code == 401
    for options in ({"diarize": True}, {"redact": "pci"}, {"keyterm": ["coffee"]}, {"encoding": "opus"}):
        with pytest.raises(ApiError) as refused:
            await deepgram(server).listen.v1.media.transcribe_file(request=wav, **options)
        assert refused.value.status_code == 400 and refused.value.body["err_msg"], options
    with pytest.raises(ApiError) as corrupt:
        await deepgram(server).listen.v1.media.transcribe_file(request=b"not audio at all")
    assert corrupt.value.status_code == 400
