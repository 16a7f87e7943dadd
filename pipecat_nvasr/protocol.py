"""Wire protocol v1 between a Pipecat client and an nvasr worker.

The one source of truth for message shapes, shared by the client services
(`pipecat_nvasr`) and the workers (`services`). Plain dataclasses and json: no
third-party imports, so a bot pays nothing for it. docs/protocol.md explains it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional, Union

PROTOCOL_VERSION = 1
SAMPLE_RATE = 16000
# client rates a streaming worker accepts (it resamples them to the model's rate)
SUPPORTED_SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
LISTEN_PATH = "/v1/listen"
# Browsers cannot set an Authorization header on a WebSocket: they offer both of these as
# subprotocols (`new WebSocket(url, [LISTEN_SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX + token])`)
# and the worker answers with LISTEN_SUBPROTOCOL. docs/protocol.md, "Authentication".
LISTEN_SUBPROTOCOL = "nvasr.v1"
TOKEN_SUBPROTOCOL_PREFIX = "nvasr.token."
TRANSCRIBE_PATH = "/v1/audio/transcriptions"


class ErrorCode:
    BAD_AUDIO = "bad_audio"
    BAD_MESSAGE = "bad_message"
    UNAUTHORIZED = "unauthorized"
    OVERLOADED = "overloaded"
    INTERNAL = "internal"
    TIMEOUT = "timeout"  # the client sent nothing for the worker's idle timeout
    UNAVAILABLE = "unavailable"  # the worker failed as a whole and is being replaced: connect again
    RATE_LIMITED = "rate_limited"  # e.g. `configure` faster than the worker allows; not fatal

    ALL = (BAD_AUDIO, BAD_MESSAGE, UNAUTHORIZED, OVERLOADED, INTERNAL, TIMEOUT, UNAVAILABLE, RATE_LIMITED)


class CloseCode:
    """WebSocket close codes (RFC 6455) the server uses."""

    NORMAL = 1000
    UNSUPPORTED = 1003  # e.g. a sample rate the worker does not take
    POLICY = 1008  # unauthorized, or a protocol violation that ends the session
    TOO_BIG = 1009  # a frame over the size limit
    INTERNAL = 1011
    SERVICE_RESTART = 1012  # the worker is shutting down: finals were sent, reconnect
    OVERLOADED = 1013  # try again later
    IDLE = 4408  # no frame from the client for the idle timeout (like HTTP 408)


# The errors that end a session, and the close code that follows each (docs/protocol.md, "Errors").
FATAL_CLOSE = {
    ErrorCode.UNAUTHORIZED: CloseCode.POLICY,
    ErrorCode.OVERLOADED: CloseCode.OVERLOADED,
    ErrorCode.INTERNAL: CloseCode.INTERNAL,
    ErrorCode.UNAVAILABLE: CloseCode.INTERNAL,
    ErrorCode.TIMEOUT: CloseCode.IDLE,
}


class ProtocolError(Exception):
    """A message the peer sent breaks the protocol; `code` is an ErrorCode."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------- client → server


@dataclass
class BoostPhrase:
    phrase: str
    weight: float = 1.0


@dataclass
class Configure:
    """`boost` None: the key phrases stay as they are (a configure with only a `language`).
    `language`: a new language for the session from its next chunk (prompt-conditioned models)."""

    boost: Optional[list[BoostPhrase]] = field(default_factory=list)
    language: Optional[str] = None
    type: str = "configure"


@dataclass
class Finalize:
    type: str = "finalize"


@dataclass
class Close:
    type: str = "close"


@dataclass
class KeepAlive:
    """Nothing to transcribe, but the client is there: resets the worker's idle timeout.

    WebSocket pings never reach the worker's application, so a client that sends no audio
    for a while (a muted bot) says so with this. Only sent to a worker whose `ready` has
    `keepalive: true`; to an older one a client sends a little silence instead."""

    type: str = "keepalive"


ClientMessage = Union[Configure, Finalize, Close, KeepAlive]

MAX_BOOST_PHRASES = 100


def _parse_boost(raw: Any) -> list[BoostPhrase]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_BOOST_PHRASES:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"'boost' must be a list of at most {MAX_BOOST_PHRASES} items"
        )
    phrases = []
    for item in raw:
        if isinstance(item, str):
            item = {"phrase": item}
        if not isinstance(item, dict) or not isinstance(item.get("phrase"), str):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "each boost item needs a string 'phrase'")
        phrase = item["phrase"].strip()
        weight = item.get("weight", 1.0)
        if not phrase or not isinstance(weight, (int, float)) or not 0 < weight <= 10:
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE, "boost phrases must be non-empty with 0 < weight <= 10"
            )
        phrases.append(BoostPhrase(phrase, float(weight)))
    return phrases


def parse_client_message(text: str) -> ClientMessage:
    """Parse a client text frame, raising ProtocolError(bad_message) on anything unknown."""
    try:
        data = json.loads(text)
    except (ValueError, TypeError):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "text frames must be JSON objects") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "text frames must be JSON objects")
    kind = data.get("type")
    if kind == "configure":
        language = data.get("language")
        if language is not None and (not isinstance(language, str) or not 0 < len(language.strip()) <= 35):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "'language' must be a BCP-47 tag such as 'es' or 'es-ES'")
        if language is not None and "boost" not in data:
            return Configure(boost=None, language=language.strip())  # the key phrases stay
        return Configure(boost=_parse_boost(data.get("boost")), language=language and language.strip())
    if kind == "finalize":
        return Finalize()
    if kind == "close":
        return Close()
    if kind == "keepalive":
        return KeepAlive()
    raise ProtocolError(ErrorCode.BAD_MESSAGE, f"unknown message type: {kind!r}")


# --------------------------------------------------------------------- server → client


@dataclass
class Ready:
    session_id: str
    model: str
    sample_rate: int
    chunk_ms: int
    protocol: int = PROTOCOL_VERSION
    # Added within v1 (older workers leave them out; these defaults are what that means):
    keepalive: bool = False  # the worker takes `{"type": "keepalive"}`
    idle_timeout: Optional[float] = None  # seconds without a client frame before `timeout`
    max_buffer_s: Optional[float] = None  # audio ahead of transcription before `overloaded`
    # the session's locale, on workers whose model takes a language per session (Nemotron 3.5);
    # such a worker also takes `configure` with a `language` mid-stream
    language: Optional[str] = None
    languages: Optional[list[str]] = None  # the locales it serves (with "auto" where it can detect)
    type: str = "ready"


@dataclass
class Word:
    word: str
    start: float
    end: float
    confidence: float


@dataclass
class Partial:
    """The current utterance so far (cumulative, not a delta)."""

    text: str
    start: float
    end: float
    speaker: Optional[str] = None
    language: Optional[str] = None  # the locale (requested, or detected in auto mode); multilingual models
    type: str = "partial"


@dataclass
class Final:
    text: str
    start: float
    end: float
    words: list[Word] = field(default_factory=list)
    from_finalize: bool = False
    end_of_turn: bool = False
    backchannel: bool = False
    speaker: Optional[str] = None
    language: Optional[str] = None  # the locale (requested, or detected in auto mode); multilingual models
    type: str = "final"


@dataclass
class Closed:
    type: str = "closed"


@dataclass
class Error:
    code: str
    message: str
    type: str = "error"


ServerMessage = Union[Ready, Partial, Final, Closed, Error]


@dataclass
class UnknownMessage:
    """A server message of a type this client does not know (from a newer worker).

    Clients skip it (logging the type once): a worker may add message types within
    protocol v1 without breaking older clients. See docs/protocol.md, "Versioning".
    """

    kind: str
    data: dict = field(default_factory=dict)
    type: str = "unknown"


def dump(message: Union[ServerMessage, ClientMessage]) -> str:
    """Serialise a message; optional fields that are None are left out."""
    return json.dumps({k: v for k, v in asdict(message).items() if v is not None})


def _known_fields(cls, data: dict) -> dict:
    """The fields `cls` declares; a newer peer's extra fields are ignored, not errors."""
    names = {f.name for f in fields(cls)} - {"type"}
    return {k: v for k, v in data.items() if k in names}


_SERVER_TYPES = {"ready": Ready, "partial": Partial, "final": Final, "closed": Closed, "error": Error}


def parse_server_message(text: str) -> Union[ServerMessage, UnknownMessage]:
    """Parse a server text frame (used by clients).

    Unknown fields are ignored and an unknown `type` comes back as `UnknownMessage`, so a
    newer worker never breaks an older client. A frame that is not a JSON object, or a
    known type missing a required field, raises ProtocolError(bad_message).
    """
    try:
        data = json.loads(text)
    except (ValueError, TypeError):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "server text frames must be JSON objects") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "server text frames must be JSON objects")
    kind = data.get("type")
    cls = _SERVER_TYPES.get(kind)
    if cls is None:
        return UnknownMessage(kind=str(kind), data=data)
    values = _known_fields(cls, data)
    try:
        if cls is Final:
            values["words"] = [Word(**_known_fields(Word, w)) for w in values.get("words") or []]
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"malformed {kind!r} message: {exc}") from None
