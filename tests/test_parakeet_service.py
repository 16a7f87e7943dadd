"""ParakeetSTTService in a real Pipecat pipeline (Silero VAD → service) against a real batch worker."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import ErrorFrame, InputAudioRawFrame, MetricsFrame, TranscriptionFrame
from pipecat.metrics.metrics import ProcessingMetricsData
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.transcriptions.language import Language
from pipecat.utils.errors import ErrorCategory

from batch_helpers import ASSETS, batch_model, model_is_accurate, word_accuracy
from conftest import TOKEN, LiveServer, to_pcm16
from pipecat_nvasr.parakeet import ParakeetSTTService
from services.batch_worker import BatchConfig, create_batch_app

FRAME_MS = 20
PACE = 0.25  # 4× real time


@pytest.fixture(scope="module")
def worker():
    model = batch_model()
    app = create_batch_app(BatchConfig(token=TOKEN, warmup=False), model=model)
    with LiveServer(app) as server:
        server.model = model
        yield server


@pytest.fixture(scope="module")
def clip() -> dict:
    import soundfile as sf

    item = json.loads((ASSETS / "eou" / "manifest.json").read_text())[1]
    item["samples"], _ = sf.read(ASSETS / "eou" / item["audio"], dtype="float32")
    return item


def audio_frames(samples: np.ndarray) -> list:
    pcm = to_pcm16(np.concatenate([samples, np.zeros(16000, dtype=np.float32)]))  # room for the VAD stop
    step = 16000 * FRAME_MS // 1000 * 2
    frames = []
    for start in range(0, len(pcm), step):
        frames.append(InputAudioRawFrame(audio=pcm[start : start + step], sample_rate=16000, num_channels=1))
        frames.append(SleepFrame(sleep=FRAME_MS / 1000 * PACE))
    return frames + [SleepFrame(sleep=0.5)]


def pipeline(stt: ParakeetSTTService) -> Pipeline:
    vad = SileroVADAnalyzer(params=VADParams(stop_secs=0.4))
    return Pipeline([VADProcessor(vad_analyzer=vad, audio_idle_timeout=0), stt])


async def test_vad_segments_become_finalized_transcripts(worker, clip):
    stt = ParakeetSTTService(base_url=worker.http, api_key=TOKEN, settings=ParakeetSTTService.Settings(language=Language.EN))
    down, up = await run_test(
        pipeline(stt), frames_to_send=audio_frames(clip["samples"]), start_timeout=10,
        pipeline_params=PipelineParams(enable_metrics=True, audio_in_sample_rate=16000),
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert len(finals) == len(clip["utterances"]), [f.text for f in finals]
    for frame, utt in zip(finals, clip["utterances"]):
        assert frame.finalized and frame.language == Language.EN
        assert frame.result["words"] and all(w["start"] <= w["end"] for w in frame.result["words"])
        if model_is_accurate():
            assert word_accuracy(utt["text"], frame.text) >= 0.75, (frame.text, utt["text"])
    metrics = [d for f in down if isinstance(f, MetricsFrame) for d in f.data]
    processing = [d for d in metrics if isinstance(d, ProcessingMetricsData) and d.value > 0]
    assert processing and all(d.model == worker.model.model_name for d in processing)  # the worker's model


async def test_the_requested_language_reaches_the_worker_and_labels_the_frames(worker, clip):
    stt = ParakeetSTTService(base_url=worker.http, api_key=TOKEN, settings=ParakeetSTTService.Settings(language=Language.DE))
    down, up = await run_test(
        pipeline(stt), frames_to_send=audio_frames(clip["samples"]), start_timeout=10,
        pipeline_params=PipelineParams(audio_in_sample_rate=16000),
    )
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert finals and all(f.result["language"] == "german" for f in finals)  # what the worker says it did
    assert all(f.language == Language.DE for f in finals)


async def test_an_unsupported_language_is_one_permanent_configuration_error(worker, clip):
    stt = ParakeetSTTService(base_url=worker.http, api_key=TOKEN, settings=ParakeetSTTService.Settings(language=Language.JA))
    down, up = await run_test(
        pipeline(stt), frames_to_send=audio_frames(clip["samples"]), start_timeout=10,
        pipeline_params=PipelineParams(audio_in_sample_rate=16000),
    )
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and errors[0].category is ErrorCategory.INVALID_REQUEST, [e.error for e in errors]
    assert not stt.is_usable
    assert not [f for f in down if isinstance(f, TranscriptionFrame)]


async def test_wrong_token_is_one_permanent_error(worker, clip):
    stt = ParakeetSTTService(base_url=worker.http, api_key="wrong")
    down, up = await run_test(
        pipeline(stt), frames_to_send=audio_frames(clip["samples"]), start_timeout=10,
        pipeline_params=PipelineParams(audio_in_sample_rate=16000),
    )
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and "token" in errors[0].error
    assert errors[0].category is ErrorCategory.AUTHENTICATION
    assert not stt.is_usable
    assert not [f for f in down if isinstance(f, TranscriptionFrame)]


async def test_unreachable_worker_is_an_error_frame(clip):
    stt = ParakeetSTTService(base_url="http://127.0.0.1:9", api_key=TOKEN)
    _, up = await run_test(
        pipeline(stt), frames_to_send=audio_frames(clip["samples"][: int(2.5 * 16000)]), start_timeout=10,
        pipeline_params=PipelineParams(audio_in_sample_rate=16000),
    )
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert errors and "unreachable" in errors[0].error


async def test_pipecat_openai_stt_service_works_against_the_worker(worker, clip):
    """Pipecat's own OpenAISTTService, pointed at the worker's OpenAI-compatible endpoint."""
    from pipecat.services.openai.stt import OpenAISTTService

    stt = OpenAISTTService(api_key=TOKEN, base_url=worker.http + "/v1", settings=OpenAISTTService.Settings(model="parakeet"))
    down, up = await run_test(
        pipeline(stt), frames_to_send=audio_frames(clip["samples"]), start_timeout=10,
        pipeline_params=PipelineParams(audio_in_sample_rate=16000),
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)], [f.error for f in up if isinstance(f, ErrorFrame)]
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert len(finals) == len(clip["utterances"]) and all(f.text for f in finals)
