"""Deepgram Flux (`/deepgram/v2/listen`) as a dialect of the listen backend.

Flux is a turn-taking protocol: `Connected`, then `TurnInfo` events (`StartOfTurn` at the
turn's first words, `Update` as they grow, `EndOfTurn` when the turn ends). Here the model
ends the turn: parakeet-realtime's `<EOU>` token (the worker Flux is meant for), nemotron's
blank-run endpoint, the segmenter's VAD. So `DeepgramFluxSTTService(url=...)` drives
Pipecat's turns from the EOU model as it does from Deepgram's Flux. The threshold knobs of
Deepgram's detector have no counterpart and are refused (docs/protocol.md, "Deepgram Flux").
"""

from __future__ import annotations

from starlette.datastructures import QueryParams

from pipecat_nvasr.protocol import BoostPhrase, Final, Partial

from .bridge import Dialect, Reaction, Refused, parse_json_object, parse_rate
from .deepgram_live import DEEPGRAM_PREFIX, check_common, parse_bool, plain_word
from .listen import ListenBackend

FLUX_PATH = DEEPGRAM_PREFIX + "/v2/listen"
TURN_KNOBS = ("eot_threshold", "eager_eot_threshold", "eot_timeout_ms")
DETECTOR = ("the turn ends when the model says so (parakeet-realtime's <EOU>); this worker has no "
            "end-of-turn confidence to threshold and no eager end of turn")


class DeepgramFlux(Dialect):
    """One `/deepgram/v2/listen` session."""

    def __init__(self, params: QueryParams, backend: ListenBackend):
        check_common(params, backend)
        for key in TURN_KNOBS:
            if params.get(key) is not None:
                raise Refused(400, f"{key} is not supported: {DETECTOR}")
        for key in ("numerals", "profanity_filter"):
            if parse_bool(params, key):
                raise Refused(400, f"{key}=true is not supported by this worker")
        if params.get("redact"):
            raise Refused(400, "redact is not supported by this worker")
        self.rate = parse_rate(params, "sample_rate", 16000)
        self.boost = [BoostPhrase(t.strip(), 1.0) for t in params.getlist("keyterm") if t.strip()][:100]
        self.request_id = ""
        self.sequence = 0
        self.turn_index = 0
        self.in_turn = False
        self.turn_start = 0.0

    def _message(self, kind: str, **fields) -> dict:
        message = {"type": kind, "request_id": self.request_id, "sequence_id": self.sequence, **fields}
        self.sequence += 1
        return message

    def opened(self, session) -> list[dict]:
        self.request_id = session.id
        return [self._message("Connected")]

    def on_text(self, text: str) -> Reaction:
        message = parse_json_object(text)
        kind = message.get("type") if message else None
        if kind == "CloseStream":
            return Reaction(close=True)
        if kind == "KeepAlive":
            return Reaction()
        if kind == "Finalize":  # not in Flux's protocol; a client may still force the turn's end
            return Reaction(finalize=True)
        if kind == "Configure":
            return self._configure(message)
        return Reaction(error=f"unknown or malformed control message (type {kind!r}); "
                              "send Configure or CloseStream")

    def _configure(self, message: dict) -> Reaction:
        unsupported = [k for k in (message.get("thresholds") or {}) if k in TURN_KNOBS]
        unsupported += [k for k in ("numerals", "profanity_filter") if message.get(k)]
        if unsupported:
            failure = self._message("ConfigureFailure", error_code="UNSUPPORTED_SETTING",
                                    description=f"not supported: {', '.join(unsupported)}; {DETECTOR}")
            return Reaction(replies=[failure])
        terms = message.get("keyterms")
        boost = None
        if terms is not None:
            if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms) or len(terms) > 100:
                failure = self._message("ConfigureFailure", error_code="INVALID_KEYTERMS",
                                        description="keyterms must be a list of at most 100 strings")
                return Reaction(replies=[failure])
            boost = [BoostPhrase(t.strip(), 1.0) for t in terms if t.strip()]
        success = self._message("ConfigureSuccess", **({"keyterms": terms} if terms is not None else {}))
        return Reaction(replies=[success], boost=boost)

    def _turn_info(self, event: str, source, transcript: str, words: list[dict], confidence: float) -> dict:
        return self._message(
            "TurnInfo", event=event, turn_index=self.turn_index, audio_window_start=self.turn_start,
            audio_window_end=source.end, transcript=transcript, words=words, end_of_turn_confidence=confidence,
        )

    def on_event(self, event: Partial | Final) -> list[dict]:
        out = []
        if event.text and not self.in_turn:
            self.in_turn, self.turn_start = True, event.start
            out.append(self._turn_info("StartOfTurn", event, event.text, [], 0.0))
        if isinstance(event, Partial):
            if event.text:
                out.append(self._turn_info("Update", event, event.text, [], 0.0))
            return out
        if not self.in_turn:
            return out  # an empty final outside a turn: nothing was said
        words = [{"word": plain_word(w.word), "confidence": w.confidence} for w in event.words]
        out.append(self._turn_info("EndOfTurn", event, event.text, words, 1.0 if event.end_of_turn else 0.5))
        self.in_turn = False
        self.turn_index += 1
        return out

    def on_error(self, code: str, message: str) -> dict:
        return self._message("Error", code=code.upper(), description=message)
