"""A listening bot in a Daily room: everyone's words printed and sent back as RTVI events.

    DAILY_API_KEY=... NVASR_URL=wss://... NVASR_TOKEN=... python agents/daily_bot.py
    # the runner creates a room and prints its URL; join it and talk

Same pipeline as webrtc_bot.py on Pipecat's Daily transport (`-t daily` is the default).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipecat.runner.types import RunnerArguments  # noqa: E402
from pipecat.runner.utils import create_transport  # noqa: E402
from pipecat.transports.daily.transport import DailyParams  # noqa: E402

from common import run_transcription_bot  # noqa: E402

TRANSPORT_PARAMS = {
    "daily": lambda: DailyParams(audio_in_enabled=True, audio_out_enabled=False),
}


async def bot(runner_args: RunnerArguments):
    """Entry point the Pipecat runner calls when the bot joins a room."""
    transport = await create_transport(runner_args, TRANSPORT_PARAMS)
    await run_transcription_bot(transport, runner_args)


if __name__ == "__main__":
    from pipecat.runner.run import main

    if not {"-t", "--transport", "-d", "--direct"} & set(sys.argv):
        sys.argv += ["-t", "daily"]
    main()
