"""Deepgram's live API (`/deepgram/v1/listen`) as a dialect of the listen backend.

So `DeepgramSTTService(base_url="ws://host:port/deepgram")` and the deepgram-sdk live
client work against a worker unmodified. docs/protocol.md, "Deepgram live", lists what is
honoured, what is refused at the handshake (HTTP 400) and what is accepted and ignored.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from typing import Optional

from starlette.datastructures import QueryParams

from pipecat_nvasr.protocol import BoostPhrase, Final, Partial

from .bridge import Dialect, Reaction, Refused, check_language, parse_json_object, parse_rate
from .listen import ListenBackend

DEEPGRAM_PREFIX = "/deepgram"
LIVE_PATH = DEEPGRAM_PREFIX + "/v1/listen"

# Parameters that would change the result in ways this worker cannot: refused when asked for.
REFUSED_WHEN_TRUE = ("detect_entities", "dictation", "numerals", "profanity_filter", "filler_words",
                     "detect_language", "multichannel", "paragraphs", "summarize", "topics", "intents",
                     "sentiment", "measurements")
REFUSED_WHEN_SET = ("redact", "replace", "search", "callback")

_PUNCTUATION = re.compile(r"[^\w'\-]+")


def parse_bool(params: QueryParams, key: str, default: bool = False) -> bool:
    raw = params.get(key)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise Refused(400, f"{key} must be true or false, not {raw!r}")


def parse_int(params: QueryParams, key: str, low: int, high: int) -> Optional[int]:
    raw = params.get(key)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise Refused(400, f"{key} must be an integer from {low} to {high}, not {raw!r}")
    return value


def parse_key_phrases(params: QueryParams) -> list[BoostPhrase]:
    """`keyterm=a&keyterm=b` (weight 1) and `keywords=word:intensifier` → per-stream boosting."""
    phrases = []
    for term in params.getlist("keyterm"):
        if term.strip():
            phrases.append(BoostPhrase(term.strip(), 1.0))
    for keyword in params.getlist("keywords"):
        word, sep, weight = keyword.rpartition(":")
        if not sep:
            word, weight = keyword, "1"
        try:
            value = float(weight)
        except ValueError:
            raise Refused(400, f"keywords must be word or word:intensifier, not {keyword!r}") from None
        if not word.strip() or not 0 < value <= 10:
            raise Refused(400, f"keyword {keyword!r}: this worker boosts with an intensifier in (0, 10]; "
                               "negative or zero intensifiers (suppression) are not supported")
        phrases.append(BoostPhrase(word.strip(), value))
    if len(phrases) > 100:
        raise Refused(400, "at most 100 keyterm/keywords per stream")
    return phrases


def plain_word(text: str) -> str:
    """Deepgram's `word`: lower case, no punctuation (the model's own form is `punctuated_word`)."""
    return _PUNCTUATION.sub("", text).lower()


def check_common(params: QueryParams, backend: ListenBackend) -> None:
    """What every Deepgram dialect refuses: other encodings, channels, unknown languages."""
    encoding = params.get("encoding", "linear16").lower()
    if encoding != "linear16":
        raise Refused(400, f"encoding={encoding!r} is not supported: send linear16 (PCM s16le)")
    if params.get("channels", "1") != "1":
        raise Refused(400, "only channels=1 (mono) is supported")
    check_language(backend, params.get("language"))


class DeepgramLive(Dialect):
    """One `/deepgram/v1/listen` session."""

    def __init__(self, params: QueryParams, backend: ListenBackend):
        check_common(params, backend)
        for key in REFUSED_WHEN_TRUE:
            if parse_bool(params, key):
                raise Refused(400, f"{key}=true is not supported by this worker")
        for key in REFUSED_WHEN_SET:
            if params.get(key):
                raise Refused(400, f"{key} is not supported by this worker")
        self.diarize = parse_bool(params, "diarize") or bool(params.get("diarize_model"))
        adapter = getattr(backend, "adapter", None)
        if self.diarize and not getattr(adapter, "labels_speakers", False):
            raise Refused(400, "diarize=true needs a multitalker worker; this one does not label speakers")
        self.rate = parse_rate(params, "sample_rate", 16000)
        self.interim = parse_bool(params, "interim_results")
        self.punctuated = parse_bool(params, "punctuate") or parse_bool(params, "smart_format")
        self.vad_events = parse_bool(params, "vad_events")
        self.utterance_end = parse_int(params, "utterance_end_ms", 1, 60000) is not None
        endpointing = params.get("endpointing")
        if endpointing is not None and endpointing.lower() != "false":
            parse_int(params, "endpointing", 0, 60000)
        self.boost = parse_key_phrases(params)
        self.model = backend.model_name
        self.language = params.get("language") or "en"
        self.request_id = ""
        self.created = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        self.audio = hashlib.sha256()
        self.bytes = 0
        self.speaking: set[Optional[str]] = set()  # speakers with an utterance under way

    def opened(self, session) -> list[dict]:
        self.request_id = session.id
        return []

    def on_bytes(self, data: bytes) -> Reaction:
        self.audio.update(data)
        self.bytes += len(data)
        return Reaction(audio=data)

    def on_text(self, text: str) -> Reaction:
        message = parse_json_object(text)
        kind = message.get("type") if message else None
        if kind == "KeepAlive":
            return Reaction()
        if kind == "Finalize":
            return Reaction(finalize=True)
        if kind == "CloseStream":
            return Reaction(close=True)
        return Reaction(error=f"unknown or malformed control message (type {kind!r}); "
                              "send KeepAlive, Finalize or CloseStream")

    def _metadata(self) -> dict:
        return {
            "request_id": self.request_id,
            "model_info": {"name": self.model, "version": "nvasr", "arch": "nemo"},
            "model_uuid": self.request_id,
        }

    def _words(self, final: Final) -> list[dict]:
        words = []
        for w in final.words:
            word = {"word": plain_word(w.word), "start": w.start, "end": w.end, "confidence": w.confidence}
            if self.punctuated:
                word["punctuated_word"] = w.word
            if self.diarize and final.speaker is not None:
                word["speaker"] = _speaker_index(final.speaker)
            words.append(word)
        return words

    def _results(self, event, *, is_final: bool, words: list[dict], transcript: str, confidence: float,
                 speech_final: bool = False, from_finalize: bool = False) -> dict:
        results = {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(max(0.0, event.end - event.start), 3),
            "start": event.start,
            "is_final": is_final,
            "speech_final": speech_final,
            "channel": {"alternatives": [{"transcript": transcript, "confidence": confidence, "words": words,
                                          "languages": [self.language]}]},
            "metadata": self._metadata(),
        }
        if from_finalize:
            results["from_finalize"] = True
        return results

    def _transcript(self, text: str) -> str:
        if self.punctuated:
            return text
        return " ".join(w for w in (plain_word(t) for t in text.split()) if w)

    def on_event(self, event: Partial | Final) -> list[dict]:
        out = []
        if event.text and event.speaker not in self.speaking:
            self.speaking.add(event.speaker)
            if self.vad_events:
                out.append({"type": "SpeechStarted", "channel": [0, 1], "timestamp": event.start})
        if isinstance(event, Partial):
            if self.interim and event.text:
                out.append(self._results(event, is_final=False, words=[], transcript=self._transcript(event.text),
                                         confidence=0.0))
            return out
        self.speaking.discard(event.speaker)
        words = self._words(event)
        confidence = round(sum(w.confidence for w in event.words) / len(event.words), 4) if event.words else 0.0
        out.append(self._results(
            event, is_final=True, words=words, transcript=self._transcript(event.text), confidence=confidence,
            # the model ended the utterance (its <EOU>, its endpoint), not the client's Finalize
            speech_final=event.end_of_turn or not event.from_finalize, from_finalize=event.from_finalize,
        ))
        if self.utterance_end and event.text:
            out.append({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": event.end})
        return out

    def on_closed(self) -> list[dict]:
        return [{
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": self.audio.hexdigest(),
            "created": self.created,
            "duration": round(self.bytes / 2 / self.rate, 3),
            "channels": 1,
            "models": [self.model],
            "model_info": {self.model: {"name": self.model, "version": "nvasr", "arch": "nemo"}},
        }]

    def on_error(self, code: str, message: str) -> dict:
        return {"type": "Error", "variant": code, "description": message, "message": message}


def _speaker_index(speaker: str) -> int:
    digits = "".join(c for c in speaker if c.isdigit())
    return int(digits) if digits else 0


def deepgram_denial(status: int, message: str) -> dict:
    """Deepgram's HTTP error body."""
    codes = {401: "INVALID_AUTH", 400: "Bad Request", 503: "SERVICE_UNAVAILABLE"}
    return {"err_code": codes.get(status, "ERROR"), "err_msg": message, "request_id": ""}

