"""Secrets never reach a log: tokens are redacted from every log record the process writes.

Uvicorn's access log prints each request line with its query string (`GET /health?token=…`,
`"WebSocket /v1/listen?…&token=st1.…" [accepted]`), and on Modal that log is kept by the
platform. Rather than configure each logger (uvicorn replaces its handlers when it starts, a
Modal container has its own), `install()` wraps the process's log-record factory once: every
record, from any logger, configured before or after, is redacted when it is created — its
message, its arguments, and its traceback text.

What is redacted: the value of a secret-bearing query parameter (`token`, `access_token`,
`api_key`, `key`, `secret`, `password`), a `Bearer …` credential, a short-lived listen token
(`st1.…`, wherever it appears), a token offered as a WebSocket subprotocol (`nvasr.token.…`),
and every value passed to `register_secret` (the worker's own token), wherever it appears.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from typing import Any

REDACTED = "[redacted]"

_QUERY_SECRET = re.compile(r"(?i)([?&;](?:token|access_token|api_key|apikey|key|secret|password)=)[^&\s\"';#]*")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
_SHORT_LIVED = re.compile(r"\bst1\.\d+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_SUBPROTOCOL = re.compile(r"(nvasr\.token\.)[^\s,\"']+")

_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False


def register_secret(value: str | None) -> None:
    """Redact this exact value wherever it appears in a log record (the worker's token)."""
    if value and len(value) >= 4:  # a shorter one would redact ordinary words
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """`text` with every known kind of secret replaced by `[redacted]`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _QUERY_SECRET.sub(r"\1" + REDACTED, text)
    text = _BEARER.sub(r"\1" + REDACTED, text)
    text = _SHORT_LIVED.sub(REDACTED, text)
    return _SUBPROTOCOL.sub(r"\1" + REDACTED, text)


def _redact_arg(arg: Any) -> Any:
    """Strings are redacted; numbers pass (formatters may `%d` them); other objects (an
    exception, a URL object) become their redacted text only if that text held a secret."""
    if isinstance(arg, str):
        return redact(arg)
    if arg is None or isinstance(arg, (int, float, bool, bytes)):
        return arg
    try:
        text = str(arg)
    except Exception:
        return arg
    clean = redact(text)
    return arg if clean == text else clean


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    else:
        record.msg = _redact_arg(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_redact_arg(a) for a in record.args)
    elif isinstance(record.args, dict):
        record.args = {k: _redact_arg(v) for k, v in record.args.items()}
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        # Formatters print `exc_text` when it is set: the traceback goes out redacted.
        record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


def install(secret: str | None = None) -> None:
    """Redact every log record of this process from now on (idempotent); `secret` is
    registered as well."""
    global _installed
    register_secret(secret)
    with _lock:
        if _installed:
            return
        _installed = True
        make_record = logging.getLogRecordFactory()

    def redacting_factory(*args, **kwargs) -> logging.LogRecord:
        return redact_record(make_record(*args, **kwargs))

    logging.setLogRecordFactory(redacting_factory)
