"""A listening bot over SmallWebRTC: speak in the browser, read your words back.

    NVASR_URL=wss://<workspace>--pipecat-nvasr-nemotron-web.modal.run NVASR_TOKEN=... python agents/webrtc_bot.py
    # open http://localhost:7860/client and talk

Pipecat's development runner serves the prebuilt WebRTC page; transcripts print here and
reach the page as RTVI `user-transcription` events. No LLM or TTS keys needed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipecat.runner.types import RunnerArguments  # noqa: E402
from pipecat.runner.utils import create_transport  # noqa: E402
from pipecat.transports.base_transport import TransportParams  # noqa: E402

from common import run_transcription_bot  # noqa: E402

TRANSPORT_PARAMS = {
    "webrtc": lambda: TransportParams(audio_in_enabled=True, audio_out_enabled=False),
}


async def bot(runner_args: RunnerArguments):
    """Entry point the Pipecat runner calls for each browser session."""
    transport = await create_transport(runner_args, TRANSPORT_PARAMS)
    await run_transcription_bot(transport, runner_args)


if __name__ == "__main__":
    from pipecat.runner.run import main

    main()
