"""Multitalker streaming STT for Pipecat: who said what, as they say it.

A multitalker worker (`nvasr serve multitalker`) runs a streaming Sortformer diarizer in front
of `nvidia/multitalker-parakeet-streaming-0.6b-v1`: every partial and final names its speaker
(`spk0`…`spk3`, stable for the session, in order of first speech). This service puts that label
in the frames' `user_id` — or a name, through `speaker_names` — so one microphone shared by
several people (a meeting room, a kiosk) gives each person's words their own frames:

- partials → `InterimTranscriptionFrame(user_id=<speaker>)`; several speakers' utterances may
  be open at once, each with its own interim frames
- finals → `TranscriptionFrame(user_id=<speaker>)`, the protocol's `Final` as `result`
- VAD stop → `finalize`, as for Nemotron: the worker ends every open speaker's utterance, one
  final each; the last one answers the finalize and is marked `finalized=True`

    stt = MultitalkerSTTService(
        url="wss://<workspace>--pipecat-nvasr-multitalker-web.modal.run",
        api_key=os.environ["NVASR_TOKEN"],
        settings=MultitalkerSTTService.Settings(speaker_names={"spk0": "alice", "spk1": "bob"}),
    )
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from pipecat.utils.types import NOT_GIVEN, NotGiven

from ._listen_service import NvasrListenSettings, NvasrListenSTTService
from .protocol import Final, Partial

# P99 from speech end to final transcript, seconds: measured as NEMOTRON_TTFS_P99 is
# (benchmarks/results/ttfs-160.json, the multitalker row, default finalize mode).
MULTITALKER_TTFS_P99 = 0.53


@dataclass
class MultitalkerSTTSettings(NvasrListenSettings):
    """Runtime-updatable settings (store mode defaults: `url` ws://127.0.0.1:8000,
    `language` en, no boost phrases, no speaker names). See `NvasrListenSettings`.

    Parameters:
        speaker_names: Worker speaker label → the `user_id` its frames carry, e.g.
            `{"spk0": "alice"}`. Labels not in the map are used as they are. An update
            applies to the next frame; the session goes on.
    """

    speaker_names: dict[str, str] | NotGiven = field(default_factory=lambda: NOT_GIVEN)


class MultitalkerSTTService(NvasrListenSTTService):
    """Streaming STT on a multitalker worker: each frame's `user_id` is its speaker.

    A message without a speaker (another worker kind behind the same URL) keeps the
    transport's `user_id`, as every other service does.
    """

    Settings = MultitalkerSTTSettings
    _settings: MultitalkerSTTSettings

    def __init__(
        self,
        *,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        settings: Optional[MultitalkerSTTSettings] = None,
        ttfs_p99_latency: Optional[float] = MULTITALKER_TTFS_P99,
        **kwargs,
    ):
        super().__init__(url=url, api_key=api_key, settings=settings, ttfs_p99_latency=ttfs_p99_latency, **kwargs)

    def _store_defaults(self) -> dict[str, Any]:
        return {"speaker_names": {}}

    def speaker_user_id(self, speaker: Optional[str]) -> str:
        """The `user_id` for a worker speaker label (`None`: the transport's user)."""
        if not speaker:
            return self._user_id
        names = self._settings.speaker_names or {}
        return names.get(speaker, speaker)

    def _speaker_user_id(self, message: Partial | Final) -> str:
        return self.speaker_user_id(message.speaker)

    def _warn_unhandled_updated_settings(self, unhandled):
        # speaker_names is read per frame: it needs no reconnect and takes effect at once
        super()._warn_unhandled_updated_settings(set(unhandled) - {"speaker_names"})
