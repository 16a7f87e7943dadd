"""Deepgram's pre-recorded API (`POST /deepgram/v1/listen` with an audio body) on the batch worker.

So the deepgram-sdk's `listen.v1.media.transcribe_file` (and anything else that speaks
Deepgram's REST API) works against a batch worker unmodified: the body is decoded like an
upload to `/v1/audio/transcriptions` and goes to the same dynamic batcher. Options that would
change the result in ways the offline model cannot are refused with HTTP 400 in Deepgram's
error shape; options with no use here (`model`, `tag`, ...) are ignored (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from datetime import datetime, timezone

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..audio import AudioDecodeError, read_audio
from ..server.bridge import Refused, check_language, parse_rate
from ..server.deepgram_live import (DEEPGRAM_PREFIX, REFUSED_WHEN_SET, REFUSED_WHEN_TRUE, check_common,
                                    deepgram_denial, parse_bool, plain_word)
from ..server.metrics import Metrics
from .batcher import DynamicBatcher, QueueFull
from .model import Transcript

logger = logging.getLogger(__name__)

PRERECORDED_PATH = DEEPGRAM_PREFIX + "/v1/listen"
# what the offline model cannot do per request, on top of the live API's refusals
REFUSED_HERE = ("diarize", "utterances", "keyterm", "keywords", "diarize_model")


class _Languages:  # check_language's view of the batch model
    def __init__(self, model_name: str):
        self.model_name, self.languages = model_name, None


def check_options(request: Request, model_name: str) -> tuple[bool, bool]:
    """(raw linear16 body?, punctuated?) or Refused."""
    params = request.query_params
    raw = "encoding" in params
    if raw:
        check_common(params, _Languages(model_name))
        parse_rate(params, "sample_rate", 16000)
    for key in REFUSED_WHEN_TRUE:
        if parse_bool(params, key):
            raise Refused(400, f"{key}=true is not supported by this worker")
    for key in REFUSED_WHEN_SET + REFUSED_HERE:
        value = params.get(key)
        if value and value.lower() != "false":
            raise Refused(400, f"{key} is not supported by the batch worker")
    return raw, parse_bool(params, "punctuate") or parse_bool(params, "smart_format")


def decode(body: bytes, raw: bool, rate: int, sample_rate: int) -> np.ndarray:
    if not raw:
        return read_audio(body, sample_rate)
    if len(body) < 2:
        raise AudioDecodeError("the body holds no linear16 samples")
    samples = np.frombuffer(body[: len(body) & ~1], dtype="<i2").astype(np.float32) / 32768
    if rate != sample_rate:
        import soxr

        samples = soxr.resample(samples, rate, sample_rate).astype(np.float32)
    return samples


def response_body(transcript: Transcript, body: bytes, model: str, punctuated: bool) -> dict:
    words = []
    for w in transcript.words:
        word = {"word": plain_word(w.word), "start": w.start, "end": w.end, "confidence": w.confidence}
        if punctuated:
            word["punctuated_word"] = w.word
        words.append(word)
    text = transcript.text if punctuated else " ".join(w["word"] for w in words if w["word"]) or transcript.text
    confidence = round(sum(w.confidence for w in transcript.words) / len(transcript.words), 4) if words else 0.0
    request_id = str(uuid.uuid4())
    return {
        "metadata": {
            "transaction_key": "deprecated",
            "request_id": request_id,
            "sha256": hashlib.sha256(body).hexdigest(),
            "created": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            "duration": transcript.duration,
            "channels": 1,
            "models": [model],
            "model_info": {model: {"name": model, "version": "nvasr", "arch": "nemo"}},
        },
        "results": {"channels": [{"alternatives": [{"transcript": text, "confidence": confidence, "words": words}]}]},
    }


def prerecorded_router(batcher: DynamicBatcher, *, sample_rate: int, model_name: str, metrics: Metrics,
                       max_upload_bytes: int) -> APIRouter:
    router = APIRouter()

    def failed(status: int, message: str) -> JSONResponse:
        metrics.requests.labels(status=str(status)).inc()
        return JSONResponse(deepgram_denial(status, message), status_code=status)

    @router.post(PRERECORDED_PATH)
    async def transcribe(request: Request):
        try:
            raw, punctuated = check_options(request, model_name)
            check_language(_Languages(model_name), request.query_params.get("language"))
        except Refused as refused:
            return failed(refused.status, refused.message)
        if request.headers.get("content-type", "").startswith("application/json"):
            return failed(400, "remote audio URLs are not fetched by this worker: send the audio as the body")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > max_upload_bytes:
                return failed(413, f"the audio is larger than {max_upload_bytes} bytes")
        if not body:
            return failed(400, "the body is empty: send the audio as the request body")
        rate = request.query_params.get("sample_rate")
        try:
            audio = await asyncio.to_thread(decode, bytes(body), raw, int(rate) if rate else 16000, sample_rate)
        except AudioDecodeError as exc:
            return failed(400, f"unsupported or corrupt audio: {exc}")
        if audio.size == 0:
            return failed(400, "the body holds no audio samples")
        try:
            transcript = await batcher.transcribe(audio)
        except QueueFull as exc:
            return failed(503, f"the worker is overloaded: {exc}")
        except Exception as exc:
            logger.exception("transcription failed")
            return failed(500, f"transcription failed: {type(exc).__name__}")
        metrics.requests.labels(status="200").inc()
        metrics.audio_seconds.inc(transcript.duration)
        return JSONResponse(response_body(transcript, bytes(body), model_name, punctuated))

    return router

