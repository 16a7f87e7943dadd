"""ParakeetRealtimeSTTService in real Pipecat pipelines: the worker's `<EOU>` ends the turn.

Pipelines are `stt → user aggregator` (Pipecat's own LLMContextAggregatorPair) with NO turn
strategies and NO VAD stop timer configured: the service's metadata must switch the
aggregator to ExternalUserTurnStrategies, and its proposals must start and end the turns.
A chatty random EOU model (float64, deterministic) checks the mapping event by event
against the worker's own events; the project's trained EOU model checks real utterances.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import ASSETS, TOKEN, LiveServer, noise_audio, to_pcm16

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    ErrorFrame,
    InputAudioRawFrame,
    STTMetadataFrame,
    TranscriptionFrame,
    UserBackchannelFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.turns.user_stop import ExternalUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies

from pipecat_nvasr import ParakeetRealtimeSTTService
from pipecat_nvasr.client import ListenClient, stream_pcm
from pipecat_nvasr.protocol import Final

FRAME_MS = 20
PACE = 0.25  # 4× real time


def worker_for(model, dtype=None) -> LiveServer:
    from services.streaming_worker import StreamingConfig, create_streaming_app

    cfg = StreamingConfig(worker="parakeet-realtime", model=str(model), dtype=dtype, token=TOKEN, max_sessions=8)
    server = LiveServer(create_streaming_app(cfg))
    return server


@pytest.fixture(scope="module")
def chatty_worker(tmp_path_factory):
    from test_eou_worker import save_chatty_eou_model

    work = tmp_path_factory.mktemp("chatty_service")
    model = save_chatty_eou_model(work / "chatty.nemo", work / "tok")
    with worker_for(model, dtype="float64") as server:
        yield server


def audio_frames(samples: np.ndarray) -> list:
    pcm = to_pcm16(samples)
    step = 16000 * FRAME_MS // 1000 * 2
    frames = []
    for start in range(0, len(pcm), step):
        frames.append(InputAudioRawFrame(audio=pcm[start : start + step], sample_rate=16000, num_channels=1))
        frames.append(SleepFrame(sleep=FRAME_MS / 1000 * PACE))
    return frames


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


async def run_turns(server, frames, user_params=None, **service_kwargs):
    """stt → user aggregator; returns (user turns as (strategy, text), downstream, upstream)."""
    stt = ParakeetRealtimeSTTService(url=server.ws, api_key=TOKEN, **service_kwargs)
    user, _ = LLMContextAggregatorPair(LLMContext(), user_params=user_params)
    turns = []

    @user.event_handler("on_user_turn_stopped")
    async def on_stopped(aggregator, strategy, message):
        turns.append((strategy, message.content))

    down, up = await run_test(
        Pipeline([stt, user]),
        frames_to_send=frames + [SleepFrame(sleep=0.5)],
        pipeline_params=PipelineParams(enable_metrics=True),
        start_timeout=10,
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)], [f.error for f in up if isinstance(f, ErrorFrame)]
    return turns, down, up


async def worker_finals(server, samples) -> list[Final]:
    async with ListenClient(server.ws, token=TOKEN) as client:
        await stream_pcm(client, to_pcm16(samples), realtime=False)
        return [e async for e in client.events() if isinstance(e, Final)]


# ---------------------------------------------------------------------- random model


async def test_metadata_recommends_external_turns_and_no_ttfs(chatty_worker):
    stt = ParakeetRealtimeSTTService(url=chatty_worker.ws, api_key=TOKEN)
    assert stt.supports_ttfs is False
    down, _ = await run_test(stt, frames_to_send=[SleepFrame(sleep=0.2)], start_timeout=10)
    metadata = [f for f in down if isinstance(f, STTMetadataFrame)]
    assert metadata and isinstance(metadata[0].user_turn_strategies, ExternalUserTurnStrategies)
    assert metadata[0].ttfs_p99_latency == 0


async def test_each_eou_ends_one_turn_and_backchannels_do_not(chatty_worker):
    """Every `<EOU>` final closes one aggregator turn holding the text since the previous
    one; `<EOB>` finals (bot silent, a turn already open) stay inside the turn."""
    audio = noise_audio(21, 4.037)
    reference = await worker_finals(chatty_worker, audio)
    expected, pending = [], []
    for final in reference:
        pending += words(final.text)
        if final.end_of_turn:
            expected.append(pending)
            pending = []
    assert len(expected) >= 3 and any(f.backchannel for f in reference)

    turns, down, _ = await run_turns(chatty_worker, audio_frames(audio))
    # ...and the words after the last <EOU> (sent on `close`) make the session-end turn.
    assert [words(text) for _, text in turns] == expected + ([pending] if pending else [])
    assert all(isinstance(strategy, ExternalUserTurnStopStrategy) for strategy, _ in turns[: len(expected)])
    transcripts = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert not transcripts, "the aggregator consumes transcripts"


async def test_backchannel_while_the_bot_speaks_is_not_a_turn(chatty_worker):
    """With the bot talking, short utterances the model ends with `<EOB>` become
    UserBackchannelFrames: no turn, nothing in the context; `<EOU>` ones still end turns."""
    audio = noise_audio(22, 4.037)
    reference = await worker_finals(chatty_worker, audio)
    backchannels = [f.text for f in reference if f.backchannel]
    eou = [words(f.text) for f in reference if f.end_of_turn]
    assert backchannels and eou

    frames = [BotStartedSpeakingFrame()] + audio_frames(audio)
    turns, down, _ = await run_turns(chatty_worker, frames, backchannel_words=10_000)
    assert [f.text for f in down if isinstance(f, UserBackchannelFrame)] == backchannels
    assert [words(text) for _, text in turns][: len(eou)] == eou and len(turns) <= len(eou) + 1


# ---------------------------------------------------------------------- trained model


@pytest.fixture(scope="module")
def trained_worker():
    path = ASSETS / "tiny_eou.nemo"
    if not path.exists():
        pytest.skip("tests/assets/tiny_eou.nemo is not there yet (tools/tiny_model trains it)")
    with worker_for(path) as server:
        yield server


def eou_latency_metric(server) -> tuple[float, float]:
    import httpx

    text = httpx.get(server.http + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    count = float(re.search(r"^nvasr_eou_latency_seconds_count (\S+)$", text, re.M).group(1))
    total = float(re.search(r"^nvasr_eou_latency_seconds_sum (\S+)$", text, re.M).group(1))
    return count, total


async def test_speech_with_pauses_gives_one_turn_per_utterance(trained_worker, eou_set):
    """No VAD anywhere: the model's `<EOU>` alone ends each user turn."""
    from test_nemotron_service import word_accuracy

    before = eou_latency_metric(trained_worker)
    for item in eou_set[:3]:
        turns, _, _ = await run_turns(trained_worker, audio_frames(item["samples"]))
        assert len(turns) == len(item["utterances"]), (item["audio"], turns)
        assert all(isinstance(strategy, ExternalUserTurnStopStrategy) for strategy, _ in turns)
        for (_, text), truth in zip(turns, item["utterances"]):
            assert word_accuracy(words(truth["text"]), words(text)) >= 0.6, (text, truth["text"])
    count, total = (a - b for a, b in zip(eou_latency_metric(trained_worker), before))
    assert count == sum(len(item["utterances"]) for item in eou_set[:3])
    print(f"mean EOU latency (last word end → <EOU>, stream time): {1000 * total / count:.0f} ms")


async def test_a_mid_sentence_pause_does_not_end_the_user_turn(trained_worker, pause_set):
    """A sentence with a 150-300 ms pause in it is one user turn holding all of its words."""
    from test_nemotron_service import word_accuracy

    for item in pause_set[:3]:
        turns, _, _ = await run_turns(trained_worker, audio_frames(item["samples"]))
        assert len(turns) == 1, (item["audio"], item["text"], turns)
        assert word_accuracy(words(item["text"]), words(turns[0][1])) >= 0.6, (turns, item["text"])


async def test_with_silero_vad_too_each_utterance_is_still_one_turn(trained_worker, eou_set):
    """Silero VAD in the aggregator: its stops send `finalize`; the turns do not double."""
    from pipecat.audio.vad.silero import SileroVADAnalyzer

    item = eou_set[0]
    params = LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    turns, _, _ = await run_turns(trained_worker, audio_frames(item["samples"]), user_params=params)
    assert len(turns) == len(item["utterances"]), turns
    assert [w for _, text in turns for w in words(text)][-1:] == words(item["text"])[-1:]
