"""`POST /v1/audio/transcriptions`, compatible with OpenAI's API.

The OpenAI Python client, and Pipecat's OpenAI-style STT services, can point their
`base_url` at a worker. Errors use OpenAI's shape (`{"error": {"message", "type", "code"}}`)
so those clients raise their usual exceptions. Decoding runs on a worker thread, the model
on the batcher's thread: the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse

from pipecat_nvasr.protocol import TRANSCRIBE_PATH

from ..audio import AudioDecodeError, read_audio
from ..server.metrics import Metrics
from .batcher import DynamicBatcher, QueueFull
from .formats import FORMATS, GRANULARITIES, MEDIA_TYPES, render

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small form fields


class UploadLimit:
    """ASGI middleware: answer 413 from the Content-Length header, before the body is read.

    Uploads without the header (chunked) are still cut off in the handler, after spooling.
    """

    def __init__(self, app, max_bytes: int, metrics: Optional[Metrics] = None, path: str = TRANSCRIBE_PATH):
        self.app, self.max_bytes, self.metrics, self.path = app, max_bytes, metrics, path

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == self.path:
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_bytes + FORM_OVERHEAD:
                response = openai_error(413, f"the file is larger than {self.max_bytes} bytes")
                if self.metrics is not None:
                    self.metrics.requests.labels(status="413").inc()
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def openai_error(status: int, message: str, kind: str = "invalid_request_error", param: Optional[str] = None):
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def transcription_router(
    batcher: DynamicBatcher,
    *,
    sample_rate: int,
    metrics: Metrics,
    default_language: str = "en",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> APIRouter:
    router = APIRouter()

    def failed(status: int, message: str, **kw):
        metrics.requests.labels(status=str(status)).inc()
        return openai_error(status, message, **kw)

    @router.post(TRANSCRIBE_PATH)
    async def transcriptions(
        file: UploadFile = File(...),
        model: Optional[str] = Form(None),  # accepted and ignored: a worker serves one model
        language: Optional[str] = Form(None),
        prompt: Optional[str] = Form(None),  # accepted for compatibility; the model takes no prompt
        response_format: str = Form("json"),
        temperature: Optional[float] = Form(None),
        granularities: Optional[list[str]] = Form(None, alias="timestamp_granularities[]"),
    ):
        if response_format not in FORMATS:
            return failed(400, f"response_format must be one of {list(FORMATS)}", param="response_format")
        granularities = granularities or []
        unknown = [g for g in granularities if g not in GRANULARITIES]
        if unknown:
            return failed(400, f"timestamp_granularities[] must be among {list(GRANULARITIES)}", param="timestamp_granularities[]")
        if (file.size or 0) > max_upload_bytes:
            return failed(413, f"the file is larger than {max_upload_bytes} bytes")
        data = await file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            return failed(413, f"the file is larger than {max_upload_bytes} bytes")
        if not data:
            return failed(400, "the file is empty", param="file")
        try:
            audio = await asyncio.to_thread(read_audio, data, sample_rate)
        except AudioDecodeError as exc:
            return failed(415, f"unsupported or corrupt audio: {exc}", param="file")
        try:
            transcript = await batcher.transcribe(audio)
        except QueueFull as exc:
            return failed(503, f"the worker is overloaded: {exc}", kind="server_error")
        except Exception as exc:
            logger.exception("transcription failed")
            return failed(500, f"transcription failed: {type(exc).__name__}", kind="server_error")
        metrics.requests.labels(status="200").inc()
        metrics.audio_seconds.inc(transcript.duration)
        body = render(transcript, response_format, language or default_language, granularities)
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body, media_type=MEDIA_TYPES[response_format])

    return router
