"""Nemotron streaming STT for Pipecat: `nvidia/nemotron-speech-streaming-en-0.6b` on a worker.

The worker batches many sessions per GPU step; this service is one session. The pipeline's
VAD ends utterances: on `VADUserStoppedSpeakingFrame` the service sends `finalize` and the
worker answers within one model step with the utterance's final, which Pipecat marks
`finalized=True` (so the turn ends without waiting for a timeout).

    stt = NemotronSTTService(
        url="wss://<workspace>--pipecat-nvasr-nemotron-web.modal.run",
        api_key=os.environ["NVASR_TOKEN"],
        settings=NemotronSTTService.Settings(boost_phrases=["Pipecat", ("Daily", 2.0)]),
    )

On a Nemotron 3.5 (multilingual) worker, pass `languages=NEMOTRON_35_LANGUAGES` and any
`settings.language`; `STTUpdateSettingsFrame(language=...)` then switches in the same session, and
`TranscriptionFrame.language` is the language the worker transcribed (detected, with `auto`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ._listen_service import NvasrListenSettings, NvasrListenSTTService

# P99 from speech end to final transcript, seconds, as Pipecat's stt-benchmark measures it
# (benchmarks/ttfs.py → benchmarks/results/ttfs-160.json: 160 ms chunks, the worker's default
# finalize mode, tiny model on a 2-core CPU; tests/test_ttfs_metadata.py keeps them equal).
# Pipecat waits this long for a final only when none arrived; pass your deployment's figure.
NEMOTRON_TTFS_P99 = 0.23

# Base codes Nemotron 3.5 ASR (`nvidia/nemotron-3.5-asr-streaming-0.6b`) transcribes, and `auto`:
# pass as `languages=` to a service on that worker (the default, ("en",), refuses the others).
NEMOTRON_35_LANGUAGES = (
    "en", "es", "de", "fr", "it", "pt", "nl", "ar", "ja", "ko", "ru", "hi", "zh", "vi", "he", "cs", "da", "pl",
    "nb", "nn", "no", "sv", "th", "tr", "bg", "el", "et", "fi", "hr", "hu", "lt", "lv", "ro", "sk", "uk", "mt",
    "sl", "auto",
)


@dataclass
class NemotronSTTSettings(NvasrListenSettings):
    """Runtime-updatable settings (store mode defaults: `url` ws://127.0.0.1:8000,
    `language` en, no boost phrases). See `NvasrListenSettings`."""


class NemotronSTTService(NvasrListenSTTService):
    """Streaming STT on a Nemotron worker (`nvasr serve nemotron` or the Modal deployment)."""

    Settings = NemotronSTTSettings
    _settings: NemotronSTTSettings

    def __init__(
        self,
        *,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        settings: Optional[NemotronSTTSettings] = None,
        ttfs_p99_latency: Optional[float] = NEMOTRON_TTFS_P99,
        **kwargs,
    ):
        super().__init__(url=url, api_key=api_key, settings=settings, ttfs_p99_latency=ttfs_p99_latency, **kwargs)
