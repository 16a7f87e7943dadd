"""The streaming services survive what production does to them: a cold start that holds the
WebSocket upgrade, a worker killed and restarted under a connected bot, a newer worker
(extra fields, new message types), and configurations no worker will accept.

The worker is a real `python -m services.cli serve nemotron` process with the trained tiny
model (tests/assets/tiny_rnnt.nemo); Pipecat pipelines are real. The cold-start hold is a
parameter: 60 s in the issue, COLD_START_HOLD_S here (longer than websockets' 10 s default
open timeout, which is what broke the old client, and short enough for CI).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from itertools import chain

import pytest

from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    StartFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.utils.errors import ErrorCategory

from pipecat_nvasr import NemotronSTTService, ParakeetRealtimeSTTService
from pipecat_nvasr.protocol import Final

from conftest import ASSETS, TOKEN, LiveServer
from listen_helpers import ROOT, HoldingProxy, NewerWorkerRelay, WorkerProcess
from test_nemotron_service import CLEAN, audio_frames, words

COLD_START_HOLD_S = float(os.environ.get("NVASR_TEST_COLD_START_HOLD_S", "14"))
MODEL = ASSETS / "tiny_rnnt.nemo"


@pytest.fixture(scope="module")
def worker_process():
    worker = WorkerProcess(MODEL, TOKEN).start()
    asyncio.run(worker.wait_ready())
    yield worker
    worker.stop()


class FinalClock(FrameProcessor):
    """Notes when the StartFrame got through the pipeline, and when each final passes
    (seconds after that start)."""

    def __init__(self):
        super().__init__()
        self.began = time.monotonic()
        self.started: float | None = None
        self.finals: list[tuple[float, TranscriptionFrame]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self.started = time.monotonic()
        elif isinstance(frame, TranscriptionFrame):
            self.finals.append((time.monotonic() - (self.started or self.began), frame))
        await self.push_frame(frame, direction)


def until(done, timeout: float):
    """SleepFrames until `done()` holds or `timeout` passes (run_test reads frames lazily)."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        yield SleepFrame(sleep=0.25)
    yield SleepFrame(sleep=0.3)


def spoken(item: dict, pace: float = 1.0) -> list:
    """One turn as a live microphone gives it: VAD start, speech, VAD stop."""
    end = int((item["speech_end"] + 0.15) * 16000)
    return ([VADUserStartedSpeakingFrame(start_secs=0.2)] + audio_frames(item["samples"][:end], pace=pace)
            + [VADUserStoppedSpeakingFrame(stop_secs=0.2)])


async def test_first_words_survive_a_cold_start(worker_process, heldout):
    """The proxy holds the upgrade COLD_START_HOLD_S; the user talks at once; the words come back."""
    item = heldout[CLEAN]
    async with HoldingProxy(worker_process.port, COLD_START_HOLD_S) as proxy:
        stt = NemotronSTTService(url=proxy.ws, api_key=TOKEN)
        clock = FinalClock()
        from pipecat.pipeline.pipeline import Pipeline

        frames = chain(spoken(item), until(lambda: clock.finals, COLD_START_HOLD_S + 30))
        began = time.monotonic()
        down, up = await run_test(Pipeline([stt, clock]), frames_to_send=frames, start_timeout=5,
                                  pipeline_params=PipelineParams(enable_metrics=True))
        started = clock.started - began  # pipeline start did not wait for the worker
    finals = [f for _, f in clock.finals]
    recovered = [w for f in finals for w in words(f.text)]
    reference = words(item["text"])
    first_final = clock.finals[0][0] if clock.finals else None
    print(f"\ncold start: hold {COLD_START_HOLD_S:.0f}s, pipeline started after {started:.2f}s, "
          f"first final {first_final and round(first_final, 2)}s after start, "
          f"words {len(recovered)}/{len(reference)}: {recovered}")
    assert not [f for f in up if isinstance(f, ErrorFrame)], [f.error for f in up if isinstance(f, ErrorFrame)]
    assert started < 2.0
    assert proxy.released and proxy.released - proxy.first_connection >= COLD_START_HOLD_S - 0.1
    assert recovered == reference
    assert finals[0].finalized and finals[0].result.from_finalize
    assert first_final >= COLD_START_HOLD_S
    assert stt.sessions_opened == 1 and stt.backlog_seconds_sent >= item["speech_end"]


async def test_a_worker_restart_under_a_connected_bot(worker_process, heldout):
    """Killed mid-call and restarted on the same port: the service reports the loss,
    reconnects, and the turn spoken during the outage is transcribed after it."""
    first, second = heldout[CLEAN], heldout[CLEAN]
    stt = NemotronSTTService(url=worker_process.ws, api_key=TOKEN,
                             reconnect_backoff_min_wait=0.5, reconnect_backoff_max_wait=1.0)
    reported: list[str] = []
    connected: list[float] = []

    @stt.event_handler("on_connection_error")
    async def on_connection_error(_stt, message):
        reported.append(message)

    @stt.event_handler("on_connected")
    async def on_connected(_stt):
        connected.append(time.monotonic())

    class Restart(FrameProcessor):
        """Kills the worker when the first turn's final has passed, then starts it again."""

        def __init__(self):
            super().__init__()
            self.restarted = asyncio.Event()
            self.outage_s = 0.0

        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, TranscriptionFrame) and not self.restarted.is_set():
                self.restarted.set()
                worker_process.kill()
                killed = time.monotonic()
                worker_process.start()
                asyncio.get_running_loop().create_task(self._measure(killed))
            await self.push_frame(frame, direction)

        async def _measure(self, killed):
            await worker_process.wait_ready()
            self.outage_s = time.monotonic() - killed

    from pipecat.pipeline.pipeline import Pipeline

    restart = Restart()
    clock = FinalClock()
    frames = chain(spoken(first, pace=0.5), [SleepFrame(sleep=1.5)], spoken(second, pace=0.5),
                   until(lambda: len(clock.finals) >= 2, 90))

    down, up = await run_test(Pipeline([stt, restart, clock]), frames_to_send=frames, start_timeout=5,
                              pipeline_params=PipelineParams(enable_metrics=True))
    finals = [f for _, f in clock.finals]
    texts = [w for f in finals for w in words(f.text)]
    print(f"\nworker restart: outage {restart.outage_s:.1f}s, sessions {stt.sessions_opened}, "
          f"reported {len(reported)}x, resent {stt.backlog_seconds_sent:.2f}s, finals {[f.text for f in finals]}")
    assert restart.restarted.is_set()
    assert stt.is_usable and stt.sessions_opened == 2 and len(connected) == 2
    assert reported and "lost the session" in reported[0]
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and errors[0].category is ErrorCategory.CONNECTIVITY  # one per outage
    assert texts == words(first["text"]) + words(second["text"])
    assert stt.backlog_seconds_sent > 1.0  # the second turn waited for the new session
    assert finals[-1].finalized and finals[-1].result.from_finalize  # its VAD stop's finalize waited too


async def test_permanent_configuration_errors_are_one_error_and_no_retry(worker_process, heldout):
    """An unsupported language is refused before connecting; a worker's refusal of the
    session's configuration (before `ready`) is just as final."""
    from pipecat.transcriptions.language import Language

    local = NemotronSTTService(url=worker_process.ws, api_key=TOKEN,
                               settings=NemotronSTTService.Settings(language=Language.DE))
    remote = NemotronSTTService(url=worker_process.ws, api_key=TOKEN, languages=None,
                                settings=NemotronSTTService.Settings(language=Language.DE),
                                reconnect_backoff_min_wait=0.2, reconnect_backoff_max_wait=0.2)
    for stt in (local, remote):
        _, up = await run_test(stt, frames_to_send=spoken(heldout[0], pace=0.1) + [SleepFrame(sleep=1.5)],
                               start_timeout=5)
        errors = [f for f in up if isinstance(f, ErrorFrame)]
        assert len(errors) == 1, [e.error for e in errors]
        assert errors[0].category is ErrorCategory.INVALID_REQUEST
        assert "language" in errors[0].error
        assert not stt.is_usable and stt.sessions_opened == 0


# ---------------------------------------------------------------------- a newer worker


@pytest.fixture(scope="module")
def in_process_worker():
    from services.streaming_worker import StreamingConfig, create_streaming_app

    app = create_streaming_app(StreamingConfig(model=str(MODEL), token=TOKEN, max_sessions=4))
    with LiveServer(app) as server:
        yield server


@pytest.mark.parametrize("service_class", [NemotronSTTService, ParakeetRealtimeSTTService])
async def test_services_work_with_a_newer_worker(in_process_worker, heldout, service_class):
    item = heldout[CLEAN]
    async with NewerWorkerRelay(in_process_worker.ws) as relay:
        stt = service_class(url=relay.ws, api_key=TOKEN)
        down, up = await run_test(stt, frames_to_send=spoken(item, pace=0.25) + [SleepFrame(sleep=1.0)],
                                  start_timeout=5)
    assert relay.added_messages >= 2
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert stt.sessions_opened == 1
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert [w for f in finals for w in words(f.text)] == words(item["text"])
    assert isinstance(finals[-1].result, Final) and finals[-1].result.words
    assert [f for f in down if isinstance(f, InterimTranscriptionFrame)]


async def test_nvasr_stream_works_with_a_newer_worker(in_process_worker, heldout):
    item = heldout[CLEAN]
    async with NewerWorkerRelay(in_process_worker.ws) as relay:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "stream", str(ASSETS / "heldout" / item["audio"]),
            "--url", relay.ws, "--token", TOKEN, "--fast", cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    finals = [line.split("] ", 1)[1] for line in out.decode().splitlines() if line.startswith("[")]
    assert [w for text in finals for w in words(text)] == words(item["text"])
    assert relay.added_messages >= 2
    assert err.decode().count("unknown type") <= 3  # each unknown type is logged once
