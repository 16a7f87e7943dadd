"""One VAD and one STT session per participant of a multi-party call (Daily).

A room transport delivers every participant's microphone as `UserAudioRawFrame`s tagged
with `user_id`. Fed into one VAD and one STT stream, two people talking at once become one
garbled stream. `PerParticipantSTT` gives each participant a branch of their own — a small
Pipeline (VAD → STT) created when their audio first arrives and ended (drained: the last
finals are delivered) when they leave — and merges the branches' output back into the
main pipeline. The STT stamps each transcript with the participant's `user_id`.

`RoomPresence` keeps the bot alive until the room is empty, not just until the first
participant leaves.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Optional

from loguru import logger

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    StartFrame,
    STTUpdateSettingsFrame,
    UserAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline, PipelineSink, PipelineSource
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

# Frames every branch must see (settings, the bot's speech); they also pass straight on.
BROADCAST = (STTUpdateSettingsFrame, BotStartedSpeakingFrame, BotStoppedSpeakingFrame)
END_TIMEOUT_S = 10.0


class PerParticipantSTT(FrameProcessor):
    """Routes each participant's audio to their own `make_branch(user_id)` processors."""

    def __init__(self, make_branch: Callable[[str], list[FrameProcessor]], **kwargs):
        super().__init__(**kwargs)
        self._make_branch = make_branch
        self._branches: dict[str, Pipeline] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self._start: Optional[StartFrame] = None
        self._passed_on: set[int] = set()  # broadcast frames already pushed: drop their copies

    @property
    def participants(self) -> list[str]:
        return list(self._branches)

    def branch(self, user_id: str) -> Optional[Pipeline]:
        return self._branches.get(user_id)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._start = frame
            await self.push_frame(frame, direction)
        elif isinstance(frame, UserAudioRawFrame) and direction is FrameDirection.DOWNSTREAM:
            branch = self._branches.get(frame.user_id) or await self._open(frame.user_id)
            await branch.queue_frame(frame, direction)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await asyncio.gather(*(self._end(user_id, type(frame)()) for user_id in list(self._branches)))
            await self.push_frame(frame, direction)
        else:
            if isinstance(frame, BROADCAST) and direction is FrameDirection.DOWNSTREAM:
                self._passed_on.add(frame.id)
                for branch in self._branches.values():
                    await branch.queue_frame(frame, direction)
            await self.push_frame(frame, direction)

    async def remove(self, user_id: str) -> None:
        """The participant left: end their branch (their last words still come out)."""
        if user_id in self._branches:
            await self._end(user_id, EndFrame())

    async def cleanup(self):
        await super().cleanup()
        for branch in self._branches.values():
            await branch.cleanup()
        self._branches.clear()

    async def _open(self, user_id: str) -> Pipeline:
        source = PipelineSource(self._from_branch_upstream, name=f"{self}::{user_id}::Source")
        sink = PipelineSink(lambda f, d: self._from_branch(user_id, f, d), name=f"{self}::{user_id}::Sink")
        branch = Pipeline(self._make_branch(user_id), source=source, sink=sink)
        self._branches[user_id] = branch
        self._ended[user_id] = asyncio.Event()
        await branch.setup(self._setup)
        await branch.queue_frame(self._start or StartFrame(), FrameDirection.DOWNSTREAM)
        logger.info(f"{self}: {user_id} joined the conversation: {len(self._branches)} branch(es)")
        return branch

    async def _end(self, user_id: str, frame: Frame) -> None:
        branch, ended = self._branches[user_id], self._ended[user_id]
        await branch.queue_frame(frame, FrameDirection.DOWNSTREAM)
        try:
            await asyncio.wait_for(ended.wait(), END_TIMEOUT_S)
        except asyncio.TimeoutError:
            logger.warning(f"{self}: {user_id}'s branch did not end within {END_TIMEOUT_S}s")
        self._branches.pop(user_id, None)
        self._ended.pop(user_id, None)
        await branch.cleanup()

    async def _from_branch(self, user_id: str, frame: Frame, direction: FrameDirection):
        if isinstance(frame, (EndFrame, CancelFrame)):
            self._ended[user_id].set()
        elif isinstance(frame, StartFrame) or frame.id in self._passed_on:
            return
        else:
            await self.push_frame(frame, direction)

    async def _from_branch_upstream(self, frame: Frame, direction: FrameDirection):
        await self.push_frame(frame, direction)


class RoomPresence:
    """Who is in the room; `on_empty` runs when the last participant leaves."""

    def __init__(self, on_left: Callable[[str], Awaitable[None]], on_empty: Callable[[], Awaitable[None]]):
        self._present: set[str] = set()
        self._on_left = on_left
        self._on_empty = on_empty

    def attach(self, transport) -> None:
        @transport.event_handler("on_participant_joined")
        async def on_participant_joined(_transport, participant):
            self._present.add(participant["id"])

        @transport.event_handler("on_participant_left")
        async def on_participant_left(_transport, participant, _reason):
            await self.left(participant["id"])

    async def left(self, participant_id: str) -> None:
        self._present.discard(participant_id)
        await self._on_left(participant_id)
        if not self._present:
            await self._on_empty()
