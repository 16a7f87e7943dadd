"""A listening bot in a Daily room: each participant's words printed and sent as RTVI events.

    DAILY_API_KEY=... NVASR_URL=wss://... NVASR_TOKEN=... python agents/daily_bot.py
    # the runner creates a room and prints its URL; join it (with friends) and talk

Daily delivers every participant's microphone as its own track (`UserAudioRawFrame`s with
`user_id`). Each participant gets their own Silero VAD and their own STT session
(`PerParticipantSTT`), so two people talking at once stay two clean transcripts, each
`TranscriptionFrame` carrying the speaker's `user_id`. A participant's session ends (its
last words delivered) when they leave; the bot leaves when the room is empty.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipecat.runner.types import RunnerArguments  # noqa: E402
from pipecat.runner.utils import create_transport  # noqa: E402
from pipecat.transports.daily.transport import DailyParams  # noqa: E402

from common import TranscriptPrinter, nemotron_stt_from_env  # noqa: E402
from participants import PerParticipantSTT, RoomPresence  # noqa: E402

TRANSPORT_PARAMS = {
    # audio_in_user_tracks (the default) keeps each participant's audio apart
    "daily": lambda: DailyParams(audio_in_enabled=True, audio_out_enabled=False, audio_in_user_tracks=True),
}


def participant_branch(user_id: str, make_stt=nemotron_stt_from_env) -> list:
    """One participant's processors: their own VAD and their own STT session."""
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.processors.audio.vad_processor import VADProcessor

    return [VADProcessor(vad_analyzer=SileroVADAnalyzer()), make_stt()]


def build_pipeline(transport, make_stt=nemotron_stt_from_env):
    """transport in → per-participant (VAD → STT) → printer → transport out."""
    from pipecat.pipeline.pipeline import Pipeline

    router = PerParticipantSTT(lambda user_id: participant_branch(user_id, make_stt))
    pipeline = Pipeline([transport.input(), router, TranscriptPrinter(), transport.output()])
    return pipeline, router


def keep_alive_until_room_empty(transport, router: PerParticipantSTT, worker) -> RoomPresence:
    """A leaving participant's session is drained and closed; the last one out ends the bot."""
    from pipecat.frames.frames import EndFrame

    async def room_empty():
        await worker.queue_frame(EndFrame())

    presence = RoomPresence(on_left=router.remove, on_empty=room_empty)
    presence.attach(transport)
    return presence


async def bot(runner_args: RunnerArguments):
    """Entry point the Pipecat runner calls when the bot joins a room."""
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.workers.runner import WorkerRunner

    transport = await create_transport(runner_args, TRANSPORT_PARAMS)
    pipeline, router = build_pipeline(transport)
    worker = PipelineWorker(pipeline, params=PipelineParams(enable_metrics=True), enable_rtvi=True)
    keep_alive_until_room_empty(transport, router, worker)
    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.add_workers(worker)
    await runner.run()


if __name__ == "__main__":
    from pipecat.runner.run import main

    if not {"-t", "--transport", "-d", "--direct"} & set(sys.argv):
        sys.argv += ["-t", "daily"]
    main()
