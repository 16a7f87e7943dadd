"""Pieces the example bots share: the STT from environment variables and a transcript printer."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from pipecat.frames.frames import Frame, InterimTranscriptionFrame, MetricsFrame, TranscriptionFrame
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from pipecat_nvasr import NemotronSTTService


def nemotron_stt_from_env() -> NemotronSTTService:
    """`NVASR_URL` (the worker, e.g. your Modal URL) and `NVASR_TOKEN`; boost phrases from
    `NVASR_BOOST` (comma-separated)."""
    boost = [p.strip() for p in os.getenv("NVASR_BOOST", "").split(",") if p.strip()]
    return NemotronSTTService(
        url=os.getenv("NVASR_URL", "ws://127.0.0.1:8000"),
        api_key=os.getenv("NVASR_TOKEN"),
        settings=NemotronSTTService.Settings(boost_phrases=boost),
    )


class TranscriptPrinter(FrameProcessor):
    """Prints interim (`…`) and final transcripts as they pass; keeps the finals."""

    def __init__(self, out: TextIO = sys.stdout, interims: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.out = out
        self.interims = interims
        self.finals: list[TranscriptionFrame] = []
        self._last_interim = ""
        self._ttfb_ms = None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InterimTranscriptionFrame) and self.interims:
            if frame.text != self._last_interim:
                print(f"  … {frame.text}", file=self.out, flush=True)
                self._last_interim = frame.text
        elif isinstance(frame, TranscriptionFrame):
            self.finals.append(frame)
            self._last_interim = ""
            span = ""
            result = frame.result
            if result is not None and hasattr(result, "start"):
                span = f"[{result.start:6.2f}–{result.end:6.2f}s] "
            mark = ""
            if frame.finalized:
                latency = self._ttfb_ms
                mark = "  (finalized on VAD stop" + (f", {latency:.0f} ms after speech end)" if latency else ")")
                self._ttfb_ms = None
            who = f"{frame.user_id}: " if frame.user_id else ""
            print(f"FINAL {span}{who}{frame.text}{mark}", file=self.out, flush=True)
        elif isinstance(frame, MetricsFrame):
            # The STT's TTFB: speech end → final (Pipecat's streaming-STT latency). A system
            # frame, so it overtakes the transcript.
            for data in frame.data:
                if isinstance(data, TTFBMetricsData) and data.value > 0 and "STT" in data.processor:
                    self._ttfb_ms = data.value * 1000
        await self.push_frame(frame, direction)


async def run_transcription_bot(transport, runner_args) -> None:
    """transport in → Silero VAD → Nemotron STT → printer → transport out, with RTVI on.

    No LLM and no TTS: the bot only listens. RTVI sends every interim and final
    transcript to the connected client (`user-transcription` events), and the printer
    writes them to stdout, so no API key other than the worker's token is needed.
    """
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.audio.vad_processor import VADProcessor
    from pipecat.workers.runner import WorkerRunner

    pipeline = Pipeline(
        [
            transport.input(),
            VADProcessor(vad_analyzer=SileroVADAnalyzer()),
            nemotron_stt_from_env(),
            TranscriptPrinter(),
            transport.output(),
        ]
    )
    worker = PipelineWorker(pipeline, params=PipelineParams(enable_metrics=True), enable_rtvi=True)

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(_transport, _client):
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.add_workers(worker)
    await runner.run()
