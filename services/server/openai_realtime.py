"""OpenAI's Realtime transcription API (`/v1/realtime?intent=transcription`) as a dialect.

So `OpenAIRealtimeSTTService(base_url="ws://host:port/v1/realtime")` and the openai SDK's
realtime client work against a worker unmodified. Audio is base64 PCM at 24 kHz (resampled
to the model's rate); `input_audio_buffer.commit` is a finalize; partials become append-only
`...transcription.delta` events of the utterance's item and finals its `...completed`. An
utterance the model itself ends (its `<EOU>`, its endpoint) is committed by the worker, as
OpenAI's server VAD would. docs/protocol.md, "OpenAI Realtime", lists what is not honoured.
"""

from __future__ import annotations

import base64
import binascii
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Optional

from starlette.datastructures import QueryParams

from pipecat_nvasr.protocol import Final, Partial

from .bridge import Dialect, Reaction, Refused, check_language, parse_json_object
from .listen import ListenBackend

REALTIME_PATH = "/v1/realtime"
OPENAI_RATE = 24000  # the only rate OpenAI's `audio/pcm` format has
TURN_DETECTION_TYPES = ("server_vad", "semantic_vad")
_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):012x}"


@dataclass
class _Commit:
    item: str
    clear: bool = False  # `input_audio_buffer.clear`: the audio is transcribed and thrown away
    done: bool = False  # its `completed` went out already (the model ended it before the commit)


class OpenAIRealtime(Dialect):
    """One `/v1/realtime?intent=transcription` session."""

    rate = OPENAI_RATE

    def __init__(self, params: QueryParams, backend: ListenBackend):
        if params.get("intent") != "transcription":
            raise Refused(400, "this worker serves transcription sessions only: connect with ?intent=transcription")
        self.backend = backend
        self.config = {
            "type": "transcription",
            "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": OPENAI_RATE},
                "transcription": {"model": backend.model_name, "language": None, "prompt": None},
                "turn_detection": None,
                "noise_reduction": None,
            }},
            "include": None,
        }
        self.session_id = _id("sess")
        self.server_vad = False
        self.current: Optional[str] = None  # the item of the utterance now spoken
        self.previous: Optional[str] = None
        self.sent = {}  # item → the text its deltas have carried
        self.commits: deque[_Commit] = deque()

    def _event(self, kind: str, **fields) -> dict:
        return {"type": kind, "event_id": _id("event"), **fields}

    def _session(self) -> dict:
        return {"id": self.session_id, "object": "realtime.transcription_session", **self.config}

    def opened(self, session) -> list[dict]:
        return [self._event("session.created", session=self._session())]

    # ------------------------------------------------------------------ client events

    def on_bytes(self, data: bytes) -> Reaction:
        return Reaction(error="binary frames are not part of this protocol: send input_audio_buffer.append")

    def on_text(self, text: str) -> Reaction:
        message = parse_json_object(text)
        kind = message.get("type") if message else None
        if kind == "input_audio_buffer.append":
            audio = message.get("audio")
            try:
                data = base64.b64decode(audio, validate=True) if isinstance(audio, str) else None
            except (binascii.Error, ValueError):
                data = None
            if data is None:
                return Reaction(error="input_audio_buffer.append needs 'audio': base64 PCM s16le at 24 kHz")
            return Reaction(audio=data)
        if kind == "input_audio_buffer.commit":
            item = self._take_current()
            self.commits.append(_Commit(item))
            return Reaction(finalize=True, replies=[self._committed(item)])
        if kind == "input_audio_buffer.clear":
            self.commits.append(_Commit(self._take_current(), clear=True))
            return Reaction(finalize=True, replies=[self._event("input_audio_buffer.cleared")])
        if kind in ("session.update", "transcription_session.update"):
            return self._update(message.get("session"))
        return Reaction(error=f"unsupported event type {kind!r}: a transcription session takes session.update "
                              "and input_audio_buffer.append/commit/clear")

    def _take_current(self) -> str:
        item, self.current = self.current or _id("item"), None
        return item

    def _committed(self, item: str) -> dict:
        event = self._event("input_audio_buffer.committed", previous_item_id=self.previous, item_id=item)
        self.previous = item
        return event

    def _update(self, session) -> Reaction:
        if not isinstance(session, dict):
            return Reaction(error="session.update needs a 'session' object")
        if session.get("type", "transcription") != "transcription":
            return Reaction(error="this worker serves transcription sessions only (session.type 'transcription')")
        audio_input = ((session.get("audio") or {}).get("input")) or {}
        if not isinstance(audio_input, dict):
            return Reaction(error="session.audio.input must be an object")
        config_input = self.config["audio"]["input"]
        fmt = audio_input.get("format")
        if fmt is not None:
            if not isinstance(fmt, dict) or fmt.get("type") != "audio/pcm" or fmt.get("rate", OPENAI_RATE) != OPENAI_RATE:
                return Reaction(error="only audio/pcm at 24000 Hz is supported")
            config_input["format"] = {"type": "audio/pcm", "rate": OPENAI_RATE}
        transcription = audio_input.get("transcription")
        if isinstance(transcription, dict):
            language = transcription.get("language")
            try:
                check_language(self.backend, language if isinstance(language, str) else None)
            except Refused as refused:
                return Reaction(error=refused.message)
            config_input["transcription"].update(
                {k: transcription.get(k) for k in ("language", "prompt") if k in transcription})
        if "turn_detection" in audio_input:
            turn = audio_input["turn_detection"]
            if turn is not None and (not isinstance(turn, dict) or turn.get("type") not in TURN_DETECTION_TYPES):
                return Reaction(error=f"turn_detection must be null or of type {list(TURN_DETECTION_TYPES)}")
            self.server_vad = turn is not None
            config_input["turn_detection"] = turn
        if "noise_reduction" in audio_input:
            config_input["noise_reduction"] = audio_input["noise_reduction"]
        if "include" in session:
            self.config["include"] = session["include"]
        return Reaction(replies=[self._event("session.updated", session=self._session())])

    # ------------------------------------------------------------------ server events

    def _delta(self, item: str, text: str) -> list[dict]:
        """Append-only: only text that extends what this item's deltas already said goes out."""
        sent = self.sent.get(item, "")
        if not text.startswith(sent) or len(text) == len(sent):
            return []
        self.sent[item] = text
        return [self._event("conversation.item.input_audio_transcription.delta", item_id=item, content_index=0,
                            delta=text[len(sent):])]

    def _completed(self, item: str, final: Final) -> dict:
        self.sent.pop(item, None)
        return self._event("conversation.item.input_audio_transcription.completed", item_id=item, content_index=0,
                           transcript=final.text, usage={"type": "duration", "seconds": round(final.end - final.start, 3)})

    def on_event(self, event: Partial | Final) -> list[dict]:
        out = []
        pending = self.commits[0] if self.commits and not self.commits[0].done else None
        if isinstance(event, Partial):
            if pending is None and self.current is None and event.text:
                self.current = _id("item")
                if self.server_vad:
                    out.append(self._event("input_audio_buffer.speech_started", item_id=self.current,
                                           audio_start_ms=int(event.start * 1000)))
            item = pending.item if pending is not None else self.current
            if item is not None and not (pending is not None and pending.clear):
                out += self._delta(item, event.text)
            return out
        if not event.from_finalize:  # the model ended the utterance
            if pending is not None:
                pending.done = True
                if not pending.clear:
                    out.append(self._completed(pending.item, event))
                return out
            if not event.text:
                return out
            item = self._take_current()
            if self.server_vad:
                out.append(self._event("input_audio_buffer.speech_stopped", item_id=item,
                                       audio_end_ms=int(event.end * 1000)))
            out.append(self._committed(item))
            out.append(self._completed(item, event))
            return out
        commit = self.commits.popleft() if self.commits else _Commit(self._take_current())
        if commit.clear or (commit.done and not event.text):
            self.sent.pop(commit.item, None)
            return out
        out.append(self._completed(commit.item, event))
        return out

    def on_error(self, code: str, message: str) -> dict:
        kind = "server_error" if code in ("internal", "overloaded") else "invalid_request_error"
        return self._event("error", error={"type": kind, "code": code, "message": message, "param": None,
                                           "event_id": None})


def openai_denial(status: int, message: str) -> dict:
    """OpenAI's HTTP error body."""
    kinds = {401: "invalid_request_error", 400: "invalid_request_error", 503: "server_error"}
    codes = {401: "invalid_api_key", 400: "invalid_request", 503: "overloaded"}
    return {"error": {"message": message, "type": kinds.get(status, "server_error"), "param": None,
                      "code": codes.get(status)}}
