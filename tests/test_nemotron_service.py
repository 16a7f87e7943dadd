"""NemotronSTTService in a real Pipecat pipeline against a real local worker.

One uvicorn worker (module scope) runs the project's trained tiny model when it exists,
else the random-weight one (plumbing only). Audio is paced with SleepFrame like a
microphone, a little faster than real time.
"""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

from pipecat.frames.frames import (
    ErrorFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    MetricsFrame,
    STTUpdateSettingsFrame,
    TranscriptionFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import ProcessingMetricsData, TTFBMetricsData
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.utils.errors import ErrorCategory

from pipecat_nvasr import NemotronSTTService
from pipecat_nvasr.protocol import BoostPhrase

from conftest import ASSETS, TOKEN, LiveServer, to_pcm16

FRAME_MS = 20
PACE = 0.25  # sleep per frame as a fraction of its duration: 4× real time
CLEAN = 4  # "schedule a table at two": the trained model gets every word, in one final


@pytest.fixture(scope="module")
def worker(request):
    from services.streaming_worker import StreamingConfig, create_streaming_app

    trained = ASSETS / "tiny_rnnt.nemo"
    model = trained if trained.exists() else request.getfixturevalue("tiny_rnnt")
    app = create_streaming_app(StreamingConfig(model=str(model), token=TOKEN, max_sessions=8))
    with LiveServer(app) as server:
        server.app = app
        server.trained = trained.exists()
        yield server


def audio_frames(samples: np.ndarray, rate: int = 16000, pace: float = PACE) -> list:
    """20 ms InputAudioRawFrames, each followed by a SleepFrame (paced input)."""
    pcm = to_pcm16(samples)
    step = rate * FRAME_MS // 1000 * 2
    frames = []
    for start in range(0, len(pcm), step):
        frames.append(InputAudioRawFrame(audio=pcm[start : start + step], sample_rate=rate, num_channels=1))
        frames.append(SleepFrame(sleep=FRAME_MS / 1000 * pace))
    return frames


def utterance(item: dict, stop: bool = True, pace: float = PACE) -> list:
    """Speech up to just after its end, then (optionally) the VAD's stop, like a live turn."""
    end = int((item["speech_end"] + 0.15) * 16000)
    frames = [VADUserStartedSpeakingFrame(start_secs=0.2)] + audio_frames(item["samples"][:end], pace=pace)
    if stop:
        frames += [VADUserStoppedSpeakingFrame(stop_secs=0.2), SleepFrame(sleep=0.3)]
    return frames


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


def word_accuracy(reference: list[str], hypothesis: list[str]) -> float:
    """1 − WER (word-level edit distance)."""
    d = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        prev, d[0] = d[0], i
        for j, hyp in enumerate(hypothesis, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (ref != hyp))
    return 1 - d[-1] / max(len(reference), 1)


def service(worker, **kwargs) -> NemotronSTTService:
    kwargs.setdefault("api_key", TOKEN)
    return NemotronSTTService(url=worker.ws, **kwargs)


async def run(stt, frames, **kwargs):
    kwargs.setdefault("pipeline_params", PipelineParams(enable_metrics=True))
    return await run_test(stt, frames_to_send=frames, start_timeout=10, **kwargs)


async def test_interims_then_a_finalized_transcript(worker, heldout):
    stt = service(worker)
    down, up = await run(stt, utterance(heldout[CLEAN]))

    interims = [f for f in down if isinstance(f, InterimTranscriptionFrame)]
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    if not worker.trained and not finals:
        pytest.skip("the random-weight model said nothing; the trained model is not there yet")
    assert interims and finals
    final = finals[-1]
    assert final.finalized, "the final answering `finalize` must be marked finalized"
    assert final.result.from_finalize and final.result.words
    assert final.language == "en"
    assert all(w.start <= w.end for w in final.result.words)
    assert down.index(interims[0]) < down.index(final)

    # A streaming STT reports latency as TTFB only (Pipecat 1.14): no processing metrics.
    metrics = [d for f in down if isinstance(f, MetricsFrame) for d in f.data if d.processor == stt.name]
    assert any(isinstance(d, TTFBMetricsData) and d.value >= 0 for d in metrics)
    assert not [d for d in metrics if isinstance(d, ProcessingMetricsData) and d.value > 0], metrics


async def test_trained_model_transcribes_heldout_speech(worker, heldout, trained_rnnt):
    """Every held-out utterance through one pipeline: ≥ 80 % of the words right overall."""
    if not worker.trained:
        pytest.skip("tests/assets/tiny_rnnt.nemo appeared after the worker started")
    # The last utterance has no VAD stop: EndFrame's `close` drain must still deliver it.
    frames = [f for item in heldout[:-1] for f in utterance(item, pace=0.1)]
    frames += utterance(heldout[-1], stop=False, pace=0.1)
    down, up = await run(service(worker), frames)

    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    reference = [w for item in heldout for w in words(item["text"])]
    hypothesis = [w for f in finals for w in words(f.text)]
    accuracy = word_accuracy(reference, hypothesis)
    assert accuracy >= 0.8, f"{accuracy:.0%}: {hypothesis} vs {reference}"
    # No VAD stop followed the last utterance: its final came from the `close` drain.
    assert not finals[-1].result.from_finalize and not finals[-1].finalized


async def test_wrong_token_is_one_permanent_error_without_reconnects(worker, heldout):
    stt = service(worker, api_key="not-the-token")
    down, up = await run(stt, utterance(heldout[0]))

    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1, [e.error for e in errors]
    assert errors[0].category is ErrorCategory.AUTHENTICATION
    assert "unauthorized" in errors[0].error
    assert not stt.is_usable
    assert not [f for f in down if isinstance(f, (TranscriptionFrame, InterimTranscriptionFrame))]


async def test_boost_phrases_reach_the_worker_at_start_and_on_update(worker, heldout):
    engine = worker.app.state.engine
    seen: list[list] = []
    done = asyncio.Event()

    async def watch_sessions():
        while not done.is_set():
            for session in list(engine.sessions.values()):
                if session.boost and (not seen or seen[-1] != session.boost):
                    seen.append(list(session.boost))
            await asyncio.sleep(0.01)

    stt = service(worker, settings=NemotronSTTService.Settings(boost_phrases=["lights"]))
    update = NemotronSTTService.Settings(boost_phrases=[("coffee", 3.0), "timer"])
    frames = [SleepFrame(sleep=0.3), STTUpdateSettingsFrame(delta=update), SleepFrame(sleep=0.3)]
    frames += utterance(heldout[0])

    watcher = asyncio.create_task(watch_sessions())
    try:
        _, up = await run(stt, frames)
    finally:
        done.set()
        await watcher
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert seen == [[BoostPhrase("lights", 1.0)], [BoostPhrase("coffee", 3.0), BoostPhrase("timer", 1.0)]]
    assert stt.settings.boost_phrases == [("coffee", 3.0), "timer"]


async def test_url_change_reconnects_without_losing_the_session_audio(worker, heldout):
    """A new url (here the same worker spelled http://) drains the old session, opens a new one."""
    engine = worker.app.state.engine
    session_ids: list[str] = []
    done = asyncio.Event()

    async def watch_sessions():
        while not done.is_set():
            for session_id in list(engine.sessions):
                if session_id not in session_ids:
                    session_ids.append(session_id)
            await asyncio.sleep(0.01)

    stt = service(worker)
    update = NemotronSTTService.Settings(url=worker.http)
    # Pipecat defers a reconnect while the user speaks, until the turn ends (UserStoppedSpeaking).
    frames = utterance(heldout[CLEAN]) + [STTUpdateSettingsFrame(delta=update), UserStoppedSpeakingFrame()]
    frames += [SleepFrame(sleep=0.5)]
    frames += utterance(heldout[CLEAN])

    watcher = asyncio.create_task(watch_sessions())
    try:
        down, up = await run(stt, frames)
    finally:
        done.set()
        await watcher
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert len(session_ids) == 2
    assert stt.settings.url == worker.http
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    if worker.trained:
        # Each session's stream time starts at 0: the second utterance starts over.
        assert [w for f in finals for w in words(f.text)] == words(heldout[CLEAN]["text"]) * 2
        assert sum(f.result.start == finals[0].result.start for f in finals) == 2


async def test_overloaded_worker_is_retried_until_a_slot_frees(worker, heldout):
    """`overloaded` is retryable: the service stays usable and reconnects with backoff."""
    from pipecat_nvasr.client import ListenClient

    engine = worker.app.state.engine
    holders = []
    while len(engine.sessions) < engine.max_sessions:
        holder = ListenClient(worker.ws, token=TOKEN)
        await holder.__aenter__()
        holders.append(holder)

    stt = service(worker, reconnect_backoff_min_wait=0.3, reconnect_backoff_max_wait=0.5)
    errors = []

    @stt.event_handler("on_error")
    async def on_error(_stt, error):
        errors.append(error)
        if len(errors) == 1:  # free one slot for the next attempt
            await holders.pop().__aexit__(None, None, None)

    try:
        down, _ = await run(stt, [SleepFrame(sleep=1.5)] + utterance(heldout[0]))
    finally:
        for holder in holders:
            await holder.__aexit__(None, None, None)
    assert errors and errors[0].category is ErrorCategory.RATE_LIMIT
    assert "overloaded" in errors[0].error
    assert stt.is_usable
    assert [f for f in down if isinstance(f, (InterimTranscriptionFrame, TranscriptionFrame))]


async def test_url_change_applies_after_the_finalize_without_a_user_aggregator(worker, heldout):
    """The example bots have no user aggregator (no UserStoppedSpeakingFrame): a url change
    made while the user talks applies once the VAD stop's finalize is answered."""
    engine = worker.app.state.engine
    session_ids: list[str] = []
    done = asyncio.Event()

    async def watch_sessions():
        while not done.is_set():
            session_ids.extend(s for s in list(engine.sessions) if s not in session_ids)
            await asyncio.sleep(0.01)

    stt = service(worker)
    turn = utterance(heldout[CLEAN])
    update = STTUpdateSettingsFrame(delta=NemotronSTTService.Settings(url=worker.http))
    frames = turn[:5] + [update] + turn[5:] + [SleepFrame(sleep=1.0)] + utterance(heldout[CLEAN])
    watcher = asyncio.create_task(watch_sessions())
    try:
        down, up = await run(stt, frames)
    finally:
        done.set()
        await watcher
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert len(session_ids) == 2 and stt.settings.url == worker.http
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert [w for f in finals for w in words(f.text)] == words(heldout[CLEAN]["text"]) * 2


@pytest.mark.parametrize("rate", [48000, 96000])
async def test_other_pipeline_rates(worker, heldout, rate):
    """48 kHz is declared to the worker (it resamples); 96 kHz, which the worker does not
    take, is resampled to 16 kHz by the service."""
    import soxr

    item = dict(heldout[CLEAN])
    item["samples"] = soxr.resample(item["samples"], 16000, rate).astype(np.float32)
    end = int((item["speech_end"] + 0.15) * rate)
    frames = [VADUserStartedSpeakingFrame(start_secs=0.2)] + audio_frames(item["samples"][:end], rate)
    frames += [VADUserStoppedSpeakingFrame(stop_secs=0.2), SleepFrame(sleep=0.5)]
    stt = service(worker)
    down, up = await run(stt, frames, pipeline_params=PipelineParams(audio_in_sample_rate=rate))

    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert stt._wire_rate == (rate if rate == 48000 else 16000)
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert finals or not worker.trained
    if worker.trained:
        assert finals[-1].finalized
        assert word_accuracy(words(item["text"]), [w for f in finals for w in words(f.text)]) >= 0.8
