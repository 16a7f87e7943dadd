"""The VAD segmenter: real speech (espeak-ng utterances with ~1.2 s pauses, tests/assets/eou)
through a real segmenter server (Pipecat's Silero VAD per session) to a real batch worker.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from batch_helpers import ASSETS, batch_model, model_is_accurate, word_accuracy
from conftest import TOKEN, LiveServer, to_pcm16
from pipecat_nvasr.client import ListenClient, stream_pcm
from pipecat_nvasr.protocol import Closed, Error, Final
from services.batch_worker import BatchConfig, create_batch_app
from services.segmenter import SegmenterConfig, create_segmenter_app


@pytest.fixture(scope="module")
def eou_clips() -> list[dict]:
    import soundfile as sf

    items = json.loads((ASSETS / "eou" / "manifest.json").read_text())
    for item in items:
        item["samples"], rate = sf.read(ASSETS / "eou" / item["audio"], dtype="float32")
        assert rate == 16000
    return items


@pytest.fixture(scope="module")
def servers():
    model = batch_model()
    batch_app = create_batch_app(BatchConfig(token=TOKEN, max_batch=32, warmup=False), model=model)
    with LiveServer(batch_app) as batch:
        cfg = SegmenterConfig(batch_url=batch.http, batch_token=TOKEN, token=TOKEN)
        with LiveServer(create_segmenter_app(cfg)) as segmenter:
            segmenter.batch = batch
            yield segmenter


async def run_session(url: str, samples: np.ndarray, finalize_at: float | None = None) -> list:
    """Stream `samples` (fast), optionally `finalize` part-way, then close; every event until `closed`."""
    pcm = to_pcm16(samples)
    async with ListenClient(url, token=TOKEN) as client:
        if finalize_at is not None:
            cut = int(finalize_at * 16000) * 2
            await stream_pcm_no_close(client, pcm[:cut])
            await client.finalize()
            pcm = pcm[cut:]
        sender = asyncio.create_task(stream_pcm(client, pcm, realtime=False))
        events = [event async for event in client.events()]
        await sender
    return events


async def stream_pcm_no_close(client: ListenClient, pcm: bytes, frame: int = 640) -> None:
    for start in range(0, len(pcm), frame):
        await client.send_audio(pcm[start : start + frame])


def finals(events: list) -> list[Final]:
    assert not [e for e in events if isinstance(e, Error)], events
    assert isinstance(events[-1], Closed), events[-1:]
    return [e for e in events if isinstance(e, Final)]


async def test_one_final_per_utterance_in_order_with_stream_times(servers, eou_clips):
    for clip in eou_clips[:3]:
        got = finals(await run_session(servers.ws, clip["samples"]))
        truth = clip["utterances"]
        assert len(got) == len(truth), [(f.start, f.end, f.text) for f in got]
        for final, utt in zip(got, truth):
            assert final.start <= utt["speech_start"] + 0.05 and final.end >= utt["speech_end"] - 0.05
            assert final.end - final.start < (utt["speech_end"] - utt["speech_start"]) + 1.5
            assert all(final.start <= w.start <= w.end <= final.end for w in final.words)
            if model_is_accurate():
                assert word_accuracy(utt["text"], final.text) >= 0.75, (final.text, utt["text"])
        assert all(a.end <= b.start for a, b in zip(got, got[1:]))


async def test_close_mid_utterance_still_transcribes_it(servers, eou_clips):
    clip = eou_clips[0]
    first = clip["utterances"][0]
    middle = (first["speech_start"] + first["speech_end"]) / 2 + 0.3
    got = finals(await run_session(servers.ws, clip["samples"][: int(middle * 16000)]))
    assert len(got) == 1 and got[0].text and not got[0].from_finalize
    assert got[0].start <= first["speech_start"] + 0.05
    assert got[0].end == pytest.approx(middle, abs=0.01)


async def test_finalize_flushes_the_utterance_then_the_stream_goes_on(servers, eou_clips):
    clip = eou_clips[1]
    first, second = clip["utterances"][:2]
    events = await run_session(servers.ws, clip["samples"], finalize_at=first["speech_end"] + 0.1)
    got = finals(events)
    flushed = [f for f in got if f.from_finalize]
    assert len(flushed) == 1 and flushed[0].text and flushed[0].end == pytest.approx(first["speech_end"] + 0.1, abs=0.01)
    assert got[0] is flushed[0]
    later = [f for f in got[1:] if f.text]
    assert len(later) == len(clip["utterances"]) - 1
    assert later[0].start <= second["speech_start"] + 0.05


async def test_finalize_in_silence_answers_one_empty_final(servers):
    silence = np.zeros(16000, dtype=np.float32)
    got = finals(await run_session(servers.ws, silence, finalize_at=0.5))
    assert [(f.text, f.from_finalize) for f in got] == [("", True)]


async def test_20_concurrent_sessions_do_not_mix(servers, eou_clips):
    def audio(i: int) -> np.ndarray:  # 20 distinct streams: a clip after i × 96 ms of silence
        return np.concatenate([np.zeros(1536 * i, dtype=np.float32), eou_clips[i % len(eou_clips)]["samples"]])

    alone = [finals(await run_session(servers.ws, audio(i))) for i in range(20)]
    together = await asyncio.gather(*(run_session(servers.ws, audio(i)) for i in range(20)))
    for i, events in enumerate(together):
        got = finals(events)
        assert [(f.text, f.start, f.end) for f in got] == [(f.text, f.start, f.end) for f in alone[i]], i
        assert got, i


async def test_call_path_used_on_modal_gives_the_same_finals(servers, eou_clips):
    """Segmenter → CallBatchTranscriber → BatchCallEndpoint (what Modal wires) == the HTTP path."""
    from services.batch.remote import BatchCallEndpoint
    from services.segmenter.transcriber import CallBatchTranscriber

    model = batch_model()
    endpoint = BatchCallEndpoint(model, max_batch=8)
    cfg = SegmenterConfig(token=TOKEN)
    app = create_segmenter_app(cfg, transcribe=CallBatchTranscriber(endpoint.transcribe_pcm))
    clip = eou_clips[2]["samples"]
    over_http = finals(await run_session(servers.ws, clip))
    with LiveServer(app) as direct:
        over_calls = finals(await run_session(direct.ws, clip))
    assert [(f.text, f.start, f.end) for f in over_calls] == [(f.text, f.start, f.end) for f in over_http]


async def test_max_utterance_length_forces_contiguous_cuts(servers, eou_clips):
    """Long speech is cut at max_utterance_secs and the next utterance starts right there."""
    from services.segmenter import VADSettings

    cfg = SegmenterConfig(batch_url=servers.batch.http, batch_token=TOKEN, token=TOKEN, vad=VADSettings(max_utterance_secs=0.8))
    clip = eou_clips[0]
    first = clip["utterances"][0]
    with LiveServer(create_segmenter_app(cfg)) as short:
        got = finals(await run_session(short.ws, clip["samples"][: int((first["speech_end"] + 0.8) * 16000)]))
    assert len(got) >= 2
    assert all(round(f.end - f.start, 3) <= 0.8 + 0.032 for f in got)
    assert all(a.end == b.start for a, b in zip(got, got[1:])), [(f.start, f.end) for f in got]
    assert got[0].start <= first["speech_start"] + 0.05 and got[-1].end >= first["speech_end"] - 0.3
