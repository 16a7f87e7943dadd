"""Parakeet realtime EOU for Pipecat: the ASR model itself ends the user's turn.

`nvidia/parakeet_realtime_eou_120m-v1` writes `<EOU>` when the user has finished an
utterance; the worker (`nvasr serve parakeet-realtime`) turns that into a final with
`end_of_turn: true`. This service drives the user turn from those events, so a bot
needs no VAD stop timer:

- first words of an utterance → broadcast `ProposedUserStartedSpeakingFrame`
- `<EOU>` final → push the finalized `TranscriptionFrame`, then broadcast
  `ProposedUserStoppedSpeakingFrame`
- `<EOB>` final (a backchannel such as "mhm" while the bot talks) → a
  `UserBackchannelFrame`: no turn, no interruption, nothing in the LLM context. A
  backchannel never ends the user's turn.

Its metadata recommends `ExternalUserTurnStrategies`, which the user aggregator applies
unless the bot passes its own strategies. A bot that also runs Silero VAD keeps working:
a VAD stop sends `finalize`, and the final answering it ends the turn too.

    stt = ParakeetRealtimeSTTService(url="wss://<workspace>--pipecat-nvasr-parakeetrealtime-web.modal.run",
                                     api_key=os.environ["NVASR_TOKEN"])
    user, assistant = LLMContextAggregatorPair(LLMContext())  # no VAD needed
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    STTMetadataFrame,
    TranscriptionFrame,
    UserBackchannelFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies
from pipecat.utils.time import time_now_iso8601

from ._listen_service import NvasrListenSettings, NvasrListenSTTService
from .protocol import Final, Partial


@dataclass
class ParakeetRealtimeSTTSettings(NvasrListenSettings):
    """Runtime-updatable settings (store mode defaults: `url` ws://127.0.0.1:8000,
    `language` en, no boost phrases). See `NvasrListenSettings`."""


class ParakeetRealtimeSTTService(NvasrListenSTTService):
    """Streaming STT on a parakeet-realtime worker; the model's end of utterance ends the turn.

    While the bot is speaking, the turn-start proposal waits until the utterance has more
    than `backchannel_words` words (or ends with `<EOU>`), so a short acknowledgement the
    model marks `<EOB>` never interrupts the bot: it becomes a `UserBackchannelFrame`.
    `backchannel_words=0` proposes at the first word always. An `<EOB>` while the bot is
    silent, or inside a turn already open, is the user's words: kept, but it does not end
    the turn (the next `<EOU>`, or a VAD `finalize`, does).

    Event handlers (in addition to `on_connected` / `on_disconnected`):
    - on_end_of_turn(service, final): the model ended the user's turn (`<EOU>`)
    - on_backchannel(service, final): the user backchannelled while no turn was open
    """

    Settings = ParakeetRealtimeSTTSettings
    _settings: ParakeetRealtimeSTTSettings

    def __init__(
        self,
        *,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        settings: Optional[ParakeetRealtimeSTTSettings] = None,
        backchannel_words: int = 2,
        **kwargs,
    ):
        super().__init__(url=url, api_key=api_key, settings=settings, **kwargs)
        self._backchannel_words = backchannel_words
        self._turn_open = False  # we proposed a turn start and not yet its stop
        self._bot_speaking = False
        self._register_event_handler("on_end_of_turn")
        self._register_event_handler("on_backchannel")

    # ------------------------------------------------------------------ turn metadata

    @property
    def supports_ttfs(self) -> bool:
        """The model defines the turn boundary: no speech-end → final wait to budget for."""
        return False

    def service_metadata_frame(self) -> STTMetadataFrame:
        frame = super().service_metadata_frame()
        frame.user_turn_strategies = ExternalUserTurnStrategies()
        return frame

    # ------------------------------------------------------------------ frames

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
        await super().process_frame(frame, direction)

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        if isinstance(frame, TranscriptionFrame) and isinstance(frame.result, Final) and frame.result.end_of_turn:
            frame.finalized = True  # the model ended this utterance: nothing more is coming
        await super().push_frame(frame, direction)

    # ------------------------------------------------------------------ worker events

    async def _on_partial(self, partial: Partial):
        if partial.text and not self._turn_open and self._may_open_turn(partial.text):
            await self._open_turn()
        await super()._on_partial(partial)

    async def _on_final(self, final: Final):
        if final.backchannel and final.text and self._bot_speaking and not self._turn_open:
            await self._on_backchannel(final)
            return
        if final.text and not self._turn_open:
            await self._open_turn()  # an utterance too short for a partial
        await super()._on_final(final)  # the TranscriptionFrame (and finalize bookkeeping)
        if self._turn_open and (final.end_of_turn or final.from_finalize):
            self._turn_open = False
            await self.broadcast_frame(ProposedUserStoppedSpeakingFrame)
            if final.end_of_turn:
                await self._call_event_handler("on_end_of_turn", final)

    async def _on_backchannel(self, final: Final):
        if final.from_finalize:
            self.confirm_finalize()
        frame = UserBackchannelFrame(text=final.text, user_id=self._user_id, timestamp=time_now_iso8601())
        await self.push_frame(frame)
        await self._call_event_handler("on_backchannel", final)

    def _may_open_turn(self, text: str) -> bool:
        """While the bot talks, a few words may still be a backchannel: wait for more."""
        return not self._bot_speaking or len(text.split()) > self._backchannel_words

    async def _open_turn(self):
        self._turn_open = True
        await self.broadcast_frame(ProposedUserStartedSpeakingFrame)
