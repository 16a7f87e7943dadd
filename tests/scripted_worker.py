"""A listen backend that answers with scripted messages: the real server without a model.

For tests of what surrounds the model — auth, the page, how a client shows what it gets —
where a crafted message (say, a final with HTML in it) is the point.
"""

from __future__ import annotations

import asyncio
import uuid

from pipecat_nvasr.protocol import Closed, Final, Partial


class ScriptedSession:
    def __init__(self):
        self.id = uuid.uuid4().hex
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.closing = False
        self.boost = []
        self.audio_seconds = 0.0
        self.answered = False


class ScriptedBackend:
    """On a session's first audio, sends `partial_text` then a final of `final_text`."""

    sample_rate = 16000
    chunk_ms = 160

    def __init__(self, final_text: str, speaker: str | None = None, model_name: str = "scripted", full: bool = False):
        self.final_text = final_text
        self.full = full  # at its session limit: every open is refused as `overloaded`
        self.speaker = speaker
        self.model_name = model_name
        self.sessions: dict[str, ScriptedSession] = {}

    def open(self) -> ScriptedSession:
        if self.full:
            from services.errors import Overloaded

            raise Overloaded("this scripted worker is full")
        session = ScriptedSession()
        self.sessions[session.id] = session
        return session

    def append(self, session: ScriptedSession, samples) -> None:
        session.audio_seconds += len(samples) / self.sample_rate
        if not session.answered:
            session.answered = True
            session.outbox.put_nowait(Partial(self.final_text[:10], 0.0, 0.1, speaker=self.speaker))
            session.outbox.put_nowait(Final(self.final_text, 0.0, 0.2, speaker=self.speaker))

    def finalize(self, session: ScriptedSession) -> None:
        session.outbox.put_nowait(Final("", 0.0, 0.0, from_finalize=True))

    def close(self, session: ScriptedSession) -> None:
        session.closing = True
        session.outbox.put_nowait(Closed())

    def drop(self, session: ScriptedSession) -> None:
        self.sessions.pop(session.id, None)
