"""The VAD segmenter worker (CPU): the `/v1/listen` protocol in front of the batch worker.

`Segmenter` is a listen backend like the streaming engine (open/append/finalize/close/drop,
sessions with an outbox), so the same server code serves it; `create_segmenter_app` builds it.
Many sessions per process, each with its own VAD state; scale it apart from the GPU.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Optional

from fastapi import FastAPI

from ..batch.model import DEFAULT_MODEL
from ..errors import Overloaded
from .. import redaction
from ..server.app import create_app
from ..server.metrics import Metrics
from .backend import SAMPLE_RATE, WINDOW, SegmenterSession, VADSettings
from .transcriber import HTTPBatchTranscriber, Transcriber

logger = logging.getLogger(__name__)


@dataclass
class SegmenterConfig:
    batch_url: Optional[str] = None  # the batch worker (local HTTP); None when a transcriber is passed
    batch_token: Optional[str] = None
    model_name: str = DEFAULT_MODEL  # what `ready` reports: the batch worker's model
    vad: VADSettings = field(default_factory=VADSettings)
    max_sessions: int = 512
    max_buffer_seconds: float = 60.0  # audio waiting for the VAD (cheap: 4 MB per session at most)
    token: Optional[str] = None


class Segmenter:
    """Listen backend: sessions of VAD-cut utterances, transcribed by `transcribe`."""

    sample_rate = SAMPLE_RATE
    chunk_ms = WINDOW * 1000 // SAMPLE_RATE

    def __init__(self, transcribe: Transcriber, model_name: str, settings: VADSettings, max_sessions: int = 512, max_buffer_seconds: float = 60.0):
        self.transcribe = transcribe
        self.model_name = model_name
        self.settings = settings
        self.max_sessions = max_sessions
        self.max_buffer_samples = int(max_buffer_seconds * SAMPLE_RATE)
        self.sessions: dict[str, SegmenterSession] = {}

    def open(self) -> SegmenterSession:
        if len(self.sessions) >= self.max_sessions:
            raise Overloaded(f"this segmenter is at its limit of {self.max_sessions} sessions")
        session = SegmenterSession(self.settings, self.max_buffer_samples)
        session.tasks_main = [
            asyncio.create_task(session.run_vad(self.transcribe), name=f"vad-{session.id[:8]}"),
            asyncio.create_task(session.emit(), name=f"emit-{session.id[:8]}"),
        ]
        self.sessions[session.id] = session
        return session

    def append(self, session: SegmenterSession, samples) -> None:
        session.append(samples)

    def finalize(self, session: SegmenterSession) -> None:
        session.finalize()

    def close(self, session: SegmenterSession) -> None:
        session.close()

    def drop(self, session: SegmenterSession) -> None:
        """Forget a session (closed, disconnected or failed): stop its tasks, free its VAD."""
        if self.sessions.pop(session.id, None) is None:
            return
        session.closed = True
        for task in session.tasks_main + list(session.tasks):
            task.cancel()
        asyncio.get_running_loop().create_task(session.cleanup())

    async def stop(self) -> None:
        for session in list(self.sessions.values()):
            self.drop(session)
        close = getattr(self.transcribe, "close", None)
        if close is not None:
            await close()


def create_segmenter_app(cfg: SegmenterConfig, transcribe: Optional[Transcriber] = None) -> FastAPI:
    if transcribe is None:
        if not cfg.batch_url:
            raise ValueError("the segmenter needs a batch worker: set batch_url or pass a transcriber")
        transcribe = HTTPBatchTranscriber(cfg.batch_url, cfg.batch_token, SAMPLE_RATE)
    redaction.register_secret(cfg.batch_token)
    segmenter = Segmenter(transcribe, cfg.model_name, cfg.vad, cfg.max_sessions, cfg.max_buffer_seconds)

    def health() -> dict:
        return {"sessions": len(segmenter.sessions), "max_sessions": segmenter.max_sessions}

    app = create_app(
        worker="segmenter",
        token=cfg.token,
        listen=segmenter,
        metrics=Metrics("segmenter"),
        on_shutdown=[segmenter.stop],
        health=health,
    )
    app.state.segmenter = segmenter
    return app
