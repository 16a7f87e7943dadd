"""Protocol-level errors, one module for the engine, the backends and the server.

A backend or the engine raises one of these; the server turns it into the protocol's
`error` event with the exception's `code`, and closes with that code's close code when the
code is fatal (`pipecat_nvasr.protocol.FATAL_CLOSE`). Nothing here imports the engine or
the server, so both can use it.
"""

from __future__ import annotations

from typing import Optional

from pipecat_nvasr.protocol import FATAL_CLOSE, ErrorCode


class WorkerError(Exception):
    """A refusal or failure the client is told about as `{"type": "error", "code": code}`."""

    code: str = ErrorCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    @property
    def close_code(self) -> Optional[int]:
        """The WebSocket close code that follows the error, or None when the session goes on."""
        return FATAL_CLOSE.get(self.code)


class Overloaded(WorkerError):
    """The worker cannot take this (more sessions, or audio faster than it keeps up)."""

    code = ErrorCode.OVERLOADED


class RateLimited(WorkerError):
    """The client asks for something more often than the worker allows (not fatal)."""

    code = ErrorCode.RATE_LIMITED


class Unavailable(WorkerError):
    """The worker can no longer serve at all (a dead engine): connect again, elsewhere."""

    code = ErrorCode.UNAVAILABLE
