"""MultitalkerSTTService in a real Pipecat pipeline against a real multitalker worker.

One uvicorn worker (module scope) runs the tiny streaming Sortformer in front of the tiny
multitalker ASR (tests/assets). Held-out two-voice espeak conversations
(tests/assets/conversations) go through the pipeline like a microphone.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pipecat.frames.frames import (
    ErrorFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    STTUpdateSettingsFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from pipecat_nvasr import MultitalkerSTTService
from pipecat_nvasr.protocol import Final

from tools.multitalker.cpwer import edit_distance

from conftest import TOKEN, LiveServer, conversation, multitalker_models, to_pcm16

FRAME_MS = 20
PACE = 0.25  # sleep per frame as a fraction of its duration: 4x real time
LABELS = {f"spk{k}" for k in range(4)}
# word errors per reference word, each label against its own voice (no permutation); the tiny
# models' cpWER target is 20 % (tests/assets/tiny_multitalker.md)
WER_LIMIT = 0.25


@pytest.fixture(scope="module")
def worker():
    from services.streaming_worker import StreamingConfig, create_streaming_app

    asr, diar = multitalker_models()
    # these tests send paced audio faster than real time; the backlog cap is not what they test
    app = create_streaming_app(StreamingConfig(worker="multitalker", model=asr, diar_model=diar, token=TOKEN,
                                               max_sessions=4, max_buffer_seconds=60))
    with LiveServer(app) as server:
        server.app = app
        yield server


def audio_frames(samples: np.ndarray, pace: float = PACE) -> list:
    pcm = to_pcm16(samples)
    step = 16000 * FRAME_MS // 1000 * 2
    frames = []
    for start in range(0, len(pcm), step):
        frames.append(InputAudioRawFrame(audio=pcm[start : start + step], sample_rate=16000, num_channels=1))
        frames.append(SleepFrame(sleep=FRAME_MS / 1000 * pace))
    return frames


def turn(samples: np.ndarray) -> list:
    """The whole conversation as one VAD turn (one microphone, several people), then the stop."""
    frames = [VADUserStartedSpeakingFrame(start_secs=0.2)] + audio_frames(samples)
    return frames + [VADUserStoppedSpeakingFrame(stop_secs=0.2), SleepFrame(sleep=0.5)]


def service(worker, **kwargs) -> MultitalkerSTTService:
    return MultitalkerSTTService(url=worker.ws, api_key=TOKEN, **kwargs)


async def run(stt, frames):
    return await run_test(stt, frames_to_send=frames, start_timeout=10)


def finals(frames) -> list[TranscriptionFrame]:
    return [f for f in frames if isinstance(f, TranscriptionFrame)]


async def test_a_conversation_comes_back_as_two_speakers(worker):
    row, samples = conversation(0)
    stt = service(worker)
    down, up = await run(stt, turn(samples))

    assert not [f for f in up if isinstance(f, ErrorFrame)]
    transcripts = finals(down)
    interims = [f for f in down if isinstance(f, InterimTranscriptionFrame)]
    assert transcripts and interims
    # user_id is the worker's speaker label, on interims and finals alike
    assert all(isinstance(f.result, Final) and f.user_id == f.result.speaker for f in transcripts)
    assert all(f.user_id == f.result.speaker for f in interims)
    speakers = {f.user_id for f in transcripts}
    assert len(speakers) >= 2 and speakers <= LABELS, speakers
    assert len({f.user_id for f in interims}) >= 2, "interim frames come per speaker"
    # spk0 is whoever spoke first: the first final in stream time is spk0's
    assert min(transcripts, key=lambda f: f.result.start).user_id == "spk0"
    # each label's words are that voice's: spk0 = the voice heard first (the reference's speaker 0)
    errors = words = 0
    for k in (0, 1):
        reference = " ".join(text for _, _, speaker, text in sorted(row["segments"]) if speaker == k).split()
        said = " ".join(f.text for f in transcripts if f.user_id == f"spk{k}").split()
        errors, words = errors + edit_distance(reference, said), words + len(reference)
    assert errors / words <= WER_LIMIT, f"{errors}/{words} words wrong: {[(f.user_id, f.text) for f in transcripts]}"


async def test_vad_stop_flushes_every_open_speaker(worker):
    """Stopped at 2.6 s of conversation 0, while both voices' utterances are open (spk0's ended
    0.3 s before, under the worker's silence close; spk1 is mid-sentence): the VAD stop's finalize
    ends both — one final each, the last one answering it (finalized)."""
    row, samples = conversation(0)
    stop = 2.6
    assert [s[2] for s in row["segments"] if s[0] < stop] == [0, 1] and row["segments"][1][1] > stop
    down, up = await run(service(worker), turn(samples[: int(stop * 16000)]))

    assert not [f for f in up if isinstance(f, ErrorFrame)]
    transcripts = finals(down)
    assert {f.user_id for f in transcripts} == {"spk0", "spk1"}, [(f.user_id, f.text) for f in transcripts]
    answered = [f for f in transcripts if f.result.from_finalize]
    assert answered == [transcripts[-1]] and transcripts[-1].finalized
    assert not any(f.finalized for f in transcripts[:-1])


async def test_speaker_names_map_labels_and_change_live(worker):
    """`speaker_names` names the labels; an update applies from the next frame, same session."""
    _, samples = conversation(2)
    names = {"spk0": "alice", "spk1": "bob"}
    stt = service(worker, settings=MultitalkerSTTService.Settings(speaker_names=names))
    renamed = {"spk0": "carol", "spk1": "dave"}
    frames = turn(samples) + [STTUpdateSettingsFrame(delta=MultitalkerSTTService.Settings(speaker_names=renamed))]
    frames += [SleepFrame(sleep=0.2)] + turn(samples)
    down, up = await run(stt, frames)

    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert stt.sessions_opened == 1, "a new speaker map must not reconnect"
    labelled = [f for f in down if isinstance(f, (TranscriptionFrame, InterimTranscriptionFrame))
                and f.result.speaker in names]  # (a third label, if any, is named by neither map)
    # In arrival order: every frame named by the first map, then (from the update on) by the second.
    # (Stream time cannot split them: a loaded worker may answer the first turn after the update.)
    switched = [f.user_id == renamed.get(f.result.speaker, f.result.speaker) for f in labelled]
    assert switched == sorted(switched), "a frame named by the old map after one named by the new"
    old = [f for f, new in zip(labelled, switched) if not new]
    assert old and all(f.user_id == names.get(f.result.speaker, f.result.speaker) for f in old)
    assert {"alice", "bob"} <= {f.user_id for f in old}
    assert {"carol", "dave"} & {f.user_id for f in labelled[len(old):]}

def test_speaker_label_to_user_id():
    stt = MultitalkerSTTService(settings=MultitalkerSTTService.Settings(speaker_names={"spk1": "bob"}))
    assert stt.speaker_user_id("spk1") == "bob"
    assert stt.speaker_user_id("spk2") == "spk2"  # unmapped: the label itself
    assert stt.speaker_user_id(None) == stt._user_id  # a worker without speakers: the transport's user


def test_both_models_fall_back_to_the_bundled_ones_when_the_hub_is_out_of_reach(capsys, monkeypatch):
    """Offline, the production ids cannot be had: each model falls back, loudly, on its own."""
    from services.streaming_worker import StreamingConfig, load_adapter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asr, diar = multitalker_models()
    adapter = load_adapter(StreamingConfig(worker="multitalker", fallback_model=asr, diar_fallback_model=diar,
                                           max_sessions=1))
    assert (adapter.model_name, adapter.diar_model) == (asr, diar)
    out = capsys.readouterr().out
    assert "nvidia/diar_streaming_sortformer_4spk-v2.1 could not be downloaded" in out
    assert "nvidia/multitalker-parakeet-streaming-0.6b-v1 could not be downloaded" in out
    assert out.count("NOTE: ") == 2
    with pytest.raises(Exception):  # without a fallback the diarizer's failure is the error
        load_adapter(StreamingConfig(worker="multitalker", model=asr, max_sessions=1))


def test_serve_flags_reach_the_adapter():
    """`nvasr serve multitalker` flags → StreamingConfig → MultitalkerAdapter."""
    from services.cli import build_parser, streaming_config
    from services.streaming_worker import load_adapter

    asr, diar = multitalker_models()
    args = build_parser().parse_args(["serve", "multitalker", "--model", asr, "--diar-model", diar, "--device", "cpu",
                                      "--chunk-ms", "160", "--max-sessions", "2", "--token", "t",
                                      "--speaker-threshold", "0.6", "--speaker-silence-ms", "320"])
    adapter = load_adapter(streaming_config(args))
    assert (adapter.model_name, adapter.diar_model, adapter.max_streams, adapter.chunk_ms) == (asr, diar, 2, 160)
    assert adapter.speaker_threshold == 0.6
    assert adapter.silence_frames == round(320 / adapter.frame_ms) != round(640 / adapter.frame_ms)


async def test_a_bot_with_default_vad_loses_no_words_to_its_finalizes(worker):
    """The user's path: `VADProcessor(SileroVADAnalyzer())` at Pipecat's defaults in front of the
    service. One microphone, two people: the VAD stops in every gap between turns (and the service
    finalizes there, ending every open speaker's utterance), yet each speaker's words are what the
    same pipeline gets when it never finalizes."""
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams
    from pipecat.processors.audio.vad_processor import VADProcessor

    row, samples = conversation(1)

    async def transcribe(finalize: bool):
        stt = service(worker)
        stt.finalize_on_vad_stop = finalize
        pipeline = Pipeline([VADProcessor(vad_analyzer=SileroVADAnalyzer()), stt])  # Pipecat's defaults
        down, up = await run_test(pipeline, frames_to_send=audio_frames(samples) + [SleepFrame(sleep=1.0)],
                                  start_timeout=10, pipeline_params=PipelineParams(audio_in_sample_rate=16000))
        assert not [f for f in up if isinstance(f, ErrorFrame)]
        stops = sum(isinstance(f, VADUserStoppedSpeakingFrame) for f in down)
        by_speaker: dict[str, list[str]] = {}
        for f in finals(down):
            by_speaker.setdefault(f.user_id, []).extend(f.text.split())
        return by_speaker, stops

    (with_finalize, stops), (without, _) = await asyncio.gather(transcribe(True), transcribe(False))
    assert stops >= 2, "the VAD never stopped between turns: this test would show nothing"
    assert set(with_finalize) == set(without) and len(with_finalize) == 2
    for speaker, said in without.items():
        reference = " ".join(t for _, _, k, t in sorted(row["segments"]) if f"spk{k}" == speaker).split()
        # finalizing may split a word's pieces across two finals; it must not lose or add words
        assert edit_distance(reference, with_finalize[speaker]) <= edit_distance(reference, said) + 1, (
            speaker, with_finalize[speaker], said)
