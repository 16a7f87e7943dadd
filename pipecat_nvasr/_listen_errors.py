"""Why a `/v1/listen` session could not be opened or was ended, in Pipecat's terms."""

from __future__ import annotations

from typing import Optional

from pipecat.utils.errors import ErrorCategory

from .protocol import ErrorCode

# Protocol error codes → Pipecat error categories, for errors inside a session. A
# permanent category (authentication) marks the service unusable.
ERROR_CATEGORIES = {
    ErrorCode.UNAUTHORIZED: ErrorCategory.AUTHENTICATION,
    ErrorCode.OVERLOADED: ErrorCategory.RATE_LIMIT,  # retry later or elsewhere
    ErrorCode.INTERNAL: ErrorCategory.SERVER,
    ErrorCode.UNAVAILABLE: ErrorCategory.SERVER,  # that worker died; another takes the session
    ErrorCode.BAD_AUDIO: ErrorCategory.APPLICATION,
    ErrorCode.BAD_MESSAGE: ErrorCategory.APPLICATION,
    ErrorCode.RATE_LIMITED: ErrorCategory.RATE_LIMIT,  # e.g. `configure` too often; the session goes on
    ErrorCode.TIMEOUT: ErrorCategory.CONNECTIVITY,
}
# The same codes as the answer to opening a session (before `ready`): the worker refused
# the session's configuration (rate, language), which no retry will change.
REFUSAL_CATEGORIES = {
    **ERROR_CATEGORIES,
    ErrorCode.BAD_AUDIO: ErrorCategory.INVALID_REQUEST,
    ErrorCode.BAD_MESSAGE: ErrorCategory.INVALID_REQUEST,
}


class WorkerRejected(Exception):
    """The worker refused or ended the session with a protocol error code."""

    def __init__(self, code: str, message: str, category: Optional[ErrorCategory] = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.category = category or ERROR_CATEGORIES.get(code, ErrorCategory.UNKNOWN)


class UnsupportedConfiguration(ValueError):
    """The service's own settings name something the worker cannot serve (checked locally)."""
