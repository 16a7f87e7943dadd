"""Start-up checks that a loaded model is what the worker serves: one-line refusals, not tracebacks.

NeMo's `restore_from` builds whatever class a `.nemo` names, so a diarizer handed to the
nemotron worker loads fine and fails later inside NeMo's wrapper with an AttributeError, and
a chunk size the encoder was never trained for serves silently (every final empty). These
checks run right after loading, before anything else touches the model.
"""

from __future__ import annotations

import os

from ..refusal import StartupRefusal

# chunk (ms) → att_context_size [left, right] in encoder frames (80 ms each)
CHUNK_CONTEXTS = {80: [70, 0], 160: [70, 1], 320: [68, 3], 560: [70, 6], 1120: [70, 13]}


def _name(model_name: str) -> str:
    return os.path.basename(model_name) if os.path.exists(model_name) else model_name


def check_streaming_asr(model, model_name: str, worker: str = "this worker") -> None:
    """A cache-aware (chunked_limited) FastConformer-RNNT, or a StartupRefusal naming what was found."""
    from nemo.collections.asr.models import EncDecRNNTModel

    found = type(model).__name__
    if not isinstance(model, EncDecRNNTModel):
        raise StartupRefusal(f"{worker} needs a cache-aware RNNT ASR model (EncDecRNNTBPEModel or a subclass); "
                             f"{_name(model_name)} is a {found}")
    style = getattr(model.encoder, "att_context_style", None)
    if style != "chunked_limited" or not hasattr(model.encoder, "cache_aware_stream_step"):
        raise StartupRefusal(f"{worker} needs a cache-aware streaming encoder (att_context_style chunked_limited); "
                             f"{_name(model_name)} ({found}) has att_context_style {style!r}")


def trained_contexts(model) -> list[list[int]]:
    contexts = getattr(model.encoder, "att_context_size_all", None) or [model.encoder.att_context_size]
    return [[int(left), int(right)] for left, right in contexts]


def check_att_context(model, model_name: str, needed: list[int], chunk_ms: int) -> None:
    """The encoder was trained with the attention context this chunk size needs."""
    contexts = trained_contexts(model)
    if list(needed) in contexts:
        return
    chunks = [f"{ms} ms" for ms, ctx in CHUNK_CONTEXTS.items() if ctx in contexts]
    shown = "/".join(f"[{a},{b}]" for a, b in contexts)
    raise StartupRefusal(f"--chunk-ms {chunk_ms} needs att_context_size [{needed[0]},{needed[1]}]; "
                         f"{_name(model_name)} was trained for {shown} only "
                         f"(chunks: {', '.join(chunks) or 'none of 80/160/560/1120 ms'})")


def check_diarizer(model, model_name: str) -> None:
    """A streaming Sortformer diarizer."""
    from nemo.collections.asr.models import SortformerEncLabelModel

    if not isinstance(model, SortformerEncLabelModel) or not hasattr(model, "forward_streaming_step"):
        raise StartupRefusal(f"the multitalker diarizer must be a streaming Sortformer (SortformerEncLabelModel); "
                             f"{_name(model_name)} is a {type(model).__name__}")
