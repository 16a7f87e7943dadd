"""Transcript → the response formats of OpenAI's transcription API (json, text, verbose_json, srt, vtt).

The CLI's `transcribe` writes files with the same functions, so a file and an HTTP answer
never disagree.
"""

from __future__ import annotations

from typing import Sequence

from .model import Segment, Transcript, WordTiming

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
GRANULARITIES = ("word", "segment")
MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}

LANGUAGE_NAMES = {
    "en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian", "pt": "portuguese",
    "nl": "dutch", "pl": "polish", "ru": "russian", "uk": "ukrainian", "sv": "swedish", "da": "danish",
    "fi": "finnish", "cs": "czech", "sk": "slovak", "hu": "hungarian", "ro": "romanian", "bg": "bulgarian",
    "hr": "croatian", "sl": "slovenian", "et": "estonian", "lv": "latvian", "lt": "lithuanian",
    "el": "greek", "mt": "maltese",
}


def to_json(t: Transcript) -> dict:
    return {"text": t.text, "usage": _usage(t)}


def _usage(t: Transcript) -> dict:
    return {"type": "duration", "seconds": t.duration}


def from_verbose_json(body: dict) -> Transcript:
    """verbose_json (with word and segment granularity) → Transcript: what a client of the
    batch worker (the CLI, the segmenter) reads back."""
    words = [
        WordTiming(w["word"], float(w["start"]), float(w["end"]), float(w.get("confidence", 1.0)))
        for w in body.get("words") or []
    ]
    segments = [Segment(s["text"], float(s["start"]), float(s["end"])) for s in body.get("segments") or []]
    return Transcript(text=body.get("text", "").strip(), duration=float(body.get("duration", 0.0)), words=words,
                      segments=segments)


def to_verbose_json(t: Transcript, language: str, granularities: Sequence[str] = ("segment",)) -> dict:
    """OpenAI's verbose_json; `words` only when asked for, plus each word's `confidence`."""
    body = {
        "task": "transcribe",
        "language": LANGUAGE_NAMES.get(language, language),
        "duration": t.duration,
        "text": t.text,
        "usage": _usage(t),
    }
    if "segment" in granularities or not granularities:
        body["segments"] = [
            {
                "id": i,
                "seek": 0,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
            }
            for i, s in enumerate(t.segments)
        ]
    if "word" in granularities:
        body["words"] = [
            {"word": w.word, "start": w.start, "end": w.end, "confidence": w.confidence} for w in t.words
        ]
    return body


def _clock(seconds: float, decimal: str) -> str:
    millis = int(round(max(seconds, 0.0) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def to_srt(t: Transcript) -> str:
    cues = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(t.segments, start=1)
    ]
    return "\n".join(cues)


def to_vtt(t: Transcript) -> str:
    cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n" for s in t.segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def render(t: Transcript, response_format: str, language: str, granularities: Sequence[str] = ()):
    """The response body for `response_format`: a dict (JSON formats) or a string."""
    if response_format == "json":
        return to_json(t)
    if response_format == "verbose_json":
        return to_verbose_json(t, language, granularities or ("segment",))
    if response_format == "text":
        return t.text + "\n"
    if response_format == "srt":
        return to_srt(t)
    if response_format == "vtt":
        return to_vtt(t)
    raise ValueError(f"response_format must be one of {FORMATS}")
