"""The segmenter as a `/v1/listen` backend: per-session Silero VAD → utterances → batch worker.

Each session has its own Pipecat `SileroVADAnalyzer` (its own model state and thread) and
one task that feeds it audio in order, one 32 ms window at a time, and cuts utterances.
Utterances are transcribed concurrently (the batch worker batches them with other
sessions'), but finals leave in order: an emitter awaits them one by one. `finalize` and
`close` flush the open utterance; after `close`, every final goes out, then `closed`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pipecat_nvasr.protocol import BoostPhrase, Closed, Error, ErrorCode, Final, Word

from ..errors import Overloaded
from .cutter import Utterance, UtteranceCutter
from .transcriber import Transcriber

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW = 512  # Silero's window at 16 kHz (32 ms)


@dataclass
class VADSettings:
    confidence: float = 0.7
    start_secs: float = 0.2
    stop_secs: float = 0.5  # the silence that ends an utterance
    min_volume: float = 0.6
    pre_roll_secs: float = 0.5
    max_utterance_secs: float = 20.0


class SegmenterSession:
    def __init__(self, settings: VADSettings, max_buffer_samples: int):
        from pipecat.audio.vad.vad_analyzer import VADParams

        self.id = uuid.uuid4().hex
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.boost: list[BoostPhrase] = []  # accepted; the batch model takes no boosting
        self.audio_seconds = 0.0
        self.closed = False
        self._closing = False
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._backlog = 0  # samples queued but not yet through the VAD
        self._max_backlog = max_buffer_samples
        self._cutter = UtteranceCutter(
            int(settings.pre_roll_secs * SAMPLE_RATE), int(settings.max_utterance_secs * SAMPLE_RATE)
        )
        params = VADParams(
            confidence=settings.confidence,
            start_secs=settings.start_secs,
            stop_secs=settings.stop_secs,
            min_volume=settings.min_volume,
        )
        self._vad_params = params
        self.vad = None  # loaded off the loop when the session's VAD task starts
        self._pending = np.zeros(0, dtype=np.float32)  # samples short of a full window
        self._results: asyncio.Queue = asyncio.Queue()  # ordered: transcription tasks, then None
        self.tasks: list[asyncio.Task] = []  # transcriptions in flight
        self.tasks_main: list[asyncio.Task] = []  # the VAD task and the emitter

    @property
    def closing(self) -> bool:
        return self._closing

    # ------------------------------------------------------------------ client side (loop)

    def append(self, samples: np.ndarray) -> None:
        if self._closing or not len(samples):
            return
        if self._backlog + len(samples) > self._max_backlog:
            raise Overloaded("audio arrives faster than the VAD keeps up")
        self._backlog += len(samples)
        self._inbox.put_nowait(("audio", samples))

    def finalize(self) -> None:
        if not self._closing:
            self._inbox.put_nowait(("finalize", None))

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._inbox.put_nowait(("close", None))

    # ------------------------------------------------------------------ tasks

    async def run_vad(self, transcribe: Transcriber) -> None:
        """Audio → VAD → utterances, strictly in arrival order."""
        from pipecat.audio.vad.vad_analyzer import VADState

        self.vad = await asyncio.to_thread(self._load_vad)
        while True:
            kind, samples = await self._inbox.get()
            if kind == "audio":
                self._backlog -= len(samples)
                self.audio_seconds += len(samples) / SAMPLE_RATE
                audio = np.concatenate([self._pending, samples]) if len(self._pending) else samples
                usable = len(audio) - len(audio) % WINDOW
                for at in range(0, usable, WINDOW):
                    window = audio[at : at + WINDOW]
                    pcm = (np.clip(window, -1, 1) * 32767).astype("<i2").tobytes()
                    state = await self.vad.analyze_audio(pcm)
                    # Only confirmed speech opens an utterance: after a `finalize`, the VAD's
                    # stop silence (STOPPING) must not open one of its own.
                    speech = state == VADState.SPEAKING
                    done = self._cutter.push(window, speech=speech, quiet=state == VADState.QUIET)
                    if done is not None:
                        self._submit(transcribe, done, from_finalize=False)
                self._pending = audio[usable:].copy()
                continue
            starting = self.vad._vad_state == VADState.STARTING  # speech heard, not confirmed yet
            done = self._cutter.flush(self._pending, starting=starting)
            self._pending = np.zeros(0, dtype=np.float32)
            if kind == "finalize":
                self._submit(transcribe, done, from_finalize=True)
            else:
                if done is not None:
                    self._submit(transcribe, done, from_finalize=False)
                self._results.put_nowait(None)
                return

    def _submit(self, transcribe: Transcriber, utterance: Optional[Utterance], from_finalize: bool) -> None:
        task = asyncio.create_task(self._final(transcribe, utterance, from_finalize))
        self.tasks.append(task)
        task.add_done_callback(lambda t: self.tasks.remove(t) if t in self.tasks else None)
        self._results.put_nowait(task)

    async def _final(self, transcribe: Transcriber, utterance: Optional[Utterance], from_finalize: bool):
        if utterance is None:  # finalize with nothing said: still exactly one final
            now = round(self._cutter.position / SAMPLE_RATE, 3)
            return Final(text="", start=now, end=now, from_finalize=True)
        offset = utterance.start / SAMPLE_RATE
        result = await transcribe(utterance.samples)
        words = [
            Word(w.word, round(w.start + offset, 3), round(w.end + offset, 3), w.confidence) for w in result.words
        ]
        return Final(
            text=result.text,
            start=round(offset, 3),
            end=round(utterance.end / SAMPLE_RATE, 3),
            words=words,
            from_finalize=from_finalize,
        )

    async def emit(self) -> None:
        """Finals to the outbox in utterance order; `closed` after the last one."""
        while True:
            task = await self._results.get()
            if task is None:
                self.closed = True
                self.outbox.put_nowait(Closed())
                return
            try:
                final = await task
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("utterance transcription failed: %s", exc)
                self.outbox.put_nowait(Error(ErrorCode.INTERNAL, f"transcription failed: {exc}"))
                return
            if final.text or final.from_finalize:
                self.outbox.put_nowait(final)

    def _load_vad(self):
        from pipecat.audio.vad.silero import SileroVADAnalyzer

        vad = SileroVADAnalyzer(sample_rate=SAMPLE_RATE, params=self._vad_params)
        vad.set_sample_rate(SAMPLE_RATE)
        return vad

    async def cleanup(self) -> None:
        if self.vad is not None:
            await self.vad.cleanup()
