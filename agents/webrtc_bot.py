"""A listening bot over SmallWebRTC: speak in the browser, read your words back.

    NVASR_URL=ws://127.0.0.1:8000 NVASR_TOKEN=... python agents/webrtc_bot.py -t webrtc
    # open http://localhost:7860/ and press Connect

The page at `/` is our own (frontend/webrtc.html): a plain RTCPeerConnection with no STUN
server and no third-party script, so the demo works offline. (Pipecat's prebuilt client
at `/client` loads a script from a CDN; offline it never starts.) The bot sends every
interim and final transcript to the page over the `chat` data channel as
`{"type":"transcript","text":…,"final":bool}`, and prints them here.

No LLM and no TTS by default: no key besides the worker's token. With `NVASR_AGENT=voice`
and `OPENAI_API_KEY` set it becomes a full voice agent (OpenAI LLM and TTS) that answers.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipecat.frames.frames import (  # noqa: E402
    Frame,
    InterimTranscriptionFrame,
    OutputTransportMessageUrgentFrame,
    TranscriptionFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.runner.types import RunnerArguments  # noqa: E402
from pipecat.runner.utils import create_transport  # noqa: E402
from pipecat.transports.base_transport import TransportParams  # noqa: E402

from common import TranscriptPrinter, nemotron_stt_from_env  # noqa: E402

FRONTEND = Path(__file__).resolve().parent.parent / "frontend"
CLIENT_ASSETS = ("webrtc.js", "style.css")
CLIENT_HEADERS = {  # the page loads nothing but itself
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; media-src 'self' blob:",
    "Cache-Control": "no-store",
}
VOICE_AGENT = os.getenv("NVASR_AGENT", "transcribe") == "voice"

TRANSPORT_PARAMS = {
    "webrtc": lambda: TransportParams(audio_in_enabled=True, audio_out_enabled=VOICE_AGENT),
}


class TranscriptToClient(FrameProcessor):
    """Sends each interim and final transcript to the browser over the data channel."""

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, (TranscriptionFrame, InterimTranscriptionFrame)):
            final = isinstance(frame, TranscriptionFrame)
            message = {"type": "transcript", "text": frame.text, "final": final}
            await self.push_frame(OutputTransportMessageUrgentFrame(message=message))
        await self.push_frame(frame, direction)


def pipeline_tail(output) -> list:
    """What follows the transcript: the transport's output, with LLM and TTS before it for
    the voice agent (the default bot only transcribes)."""
    if not VOICE_AGENT:
        return [output]
    if not os.getenv("OPENAI_API_KEY"):
        sys.exit("NVASR_AGENT=voice needs OPENAI_API_KEY (LLM and TTS); unset NVASR_AGENT to only transcribe")
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
    from pipecat.services.openai.llm import OpenAILLMService
    from pipecat.services.openai.tts import OpenAITTSService

    context = LLMContext([{"role": "system", "content": "You are a helpful voice assistant. Answer briefly."}])
    aggregators = LLMContextAggregatorPair(context)
    return [aggregators.user(), OpenAILLMService(api_key=os.environ["OPENAI_API_KEY"]),
            OpenAITTSService(api_key=os.environ["OPENAI_API_KEY"]), output, aggregators.assistant()]


async def bot(runner_args: RunnerArguments):
    """Entry point the Pipecat runner calls for each browser session."""
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.audio.vad_processor import VADProcessor
    from pipecat.workers.runner import WorkerRunner

    transport = await create_transport(runner_args, TRANSPORT_PARAMS)
    pipeline = Pipeline(
        [
            transport.input(),
            VADProcessor(vad_analyzer=SileroVADAnalyzer()),
            nemotron_stt_from_env(),
            TranscriptToClient(),
            TranscriptPrinter(),
            *pipeline_tail(transport.output()),
        ]
    )
    worker = PipelineWorker(pipeline, params=PipelineParams(enable_metrics=True))

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(_transport, _client):
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.add_workers(worker)
    await runner.run()


def add_client_page(app) -> None:
    """Serve our page at `/` (registered before the runner's redirect to `/client`, so it wins)."""
    from fastapi import HTTPException
    from fastapi.responses import FileResponse

    @app.get("/", include_in_schema=False)
    async def client_page():
        return FileResponse(FRONTEND / "webrtc.html", headers=CLIENT_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def client_asset(name: str):
        if name not in CLIENT_ASSETS:
            raise HTTPException(status_code=404)
        return FileResponse(FRONTEND / name, headers=CLIENT_HEADERS)


if __name__ == "__main__":
    from pipecat.runner.run import app, main

    add_client_page(app)
    main()
