"""Deepgram's live API on the other listen backends: the multitalker worker (`diarize=true`
puts the speaker on every word) and the VAD segmenter, each compared with our own protocol
on the same audio through the same worker (deepgram-sdk live client, real uvicorn workers)."""

from __future__ import annotations

import asyncio

import pytest

from pipecat_nvasr.client import ListenClient, stream_pcm
from pipecat_nvasr.protocol import Final

from compat_helpers import sessions_end, words
from conftest import TOKEN, LiveServer, conversation, to_pcm16
from test_compat_deepgram_live import sdk_transcribe


async def our_finals(server, samples) -> list[Final]:
    async with ListenClient(server.ws, token=TOKEN) as client:
        sender = asyncio.create_task(stream_pcm(client, to_pcm16(samples), realtime=False))
        finals = [e async for e in client.events() if isinstance(e, Final) and e.text]
        await sender
    return finals


def deepgram_finals(messages) -> list:
    from deepgram.listen.v1.types import ListenV1Results

    return [m for m in messages if isinstance(m, ListenV1Results) and m.is_final and m.channel.alternatives[0].words]


@pytest.fixture(scope="module")
def multitalker():
    import torch

    from services.adapters.multitalker import MultitalkerAdapter
    from services.streaming_worker import StreamingConfig, create_streaming_app
    from conftest import multitalker_models

    asr, diar = multitalker_models()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # batched == alone
    try:
        adapter = MultitalkerAdapter(asr, diar, max_streams=4, dtype="float64")
        cfg = StreamingConfig(worker="multitalker", model=asr, max_sessions=4, token=TOKEN, max_buffer_seconds=60)
        app = create_streaming_app(cfg, adapter=adapter)
        with LiveServer(app) as server:
            server.engine = app.state.engine
            yield server
    finally:
        torch.set_default_dtype(old)


async def test_multitalker_diarize_puts_our_speakers_on_deepgram_words(multitalker):
    _, samples = conversation(0)
    ours = await our_finals(multitalker, samples)
    messages = await sdk_transcribe(multitalker, samples, 16000, finalize=False, diarize="true", punctuate="true")
    theirs = deepgram_finals(messages)

    assert ours and len(theirs) == len(ours)
    for final, result in zip(ours, theirs):
        alternative = result.channel.alternatives[0]
        assert words(alternative.transcript) == words(final.text)
        assert {w.speaker for w in alternative.words} == {int(final.speaker.removeprefix("spk"))}
    assert len({f.speaker for f in ours}) == 2, "the conversation has two voices"
    await sessions_end(multitalker.engine)


async def test_diarize_without_speakers_in_the_output_is_plain(multitalker):
    _, samples = conversation(0)
    theirs = deepgram_finals(await sdk_transcribe(multitalker, samples[: 16000 * 4], 16000, finalize=False))
    assert all(w.speaker is None for r in theirs for w in r.channel.alternatives[0].words)


@pytest.fixture(scope="module")
def segmenter():
    from services.batch_worker import BatchConfig, create_batch_app
    from services.segmenter import SegmenterConfig, create_segmenter_app
    from batch_helpers import batch_model

    batch_app = create_batch_app(BatchConfig(token=TOKEN, max_batch=8, warmup=False), model=batch_model())
    with LiveServer(batch_app) as batch:
        app = create_segmenter_app(SegmenterConfig(batch_url=batch.http, batch_token=TOKEN, token=TOKEN))
        with LiveServer(app) as server:
            server.app = app
            yield server


async def test_segmenter_speaks_deepgram_live_too(segmenter, eou_set):
    item = eou_set[0]
    ours = await our_finals(segmenter, item["samples"])
    theirs = deepgram_finals(await sdk_transcribe(segmenter, item["samples"], 16000, finalize=False))

    assert len(ours) == len(item["utterances"])
    assert [words(r.channel.alternatives[0].transcript) for r in theirs] == [words(f.text) for f in ours]
    assert all(r.speech_final for r in theirs), "the VAD ended each utterance"
    assert not segmenter.app.state.listen_state.connections
