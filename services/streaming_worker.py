"""Assemble a streaming worker: model adapter → engine → app.

The CLI and the Modal classes call `create_streaming_app` with a config; they add no logic
of their own. Each worker kind names its default production model and its adapter.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional

from fastapi import FastAPI

from .engine.adapter import StreamingAdapter
from .engine.core import EngineCore
from .server.app import create_app
from .server.listen import ListenSettings
from .server.metrics import Metrics

logger = logging.getLogger(__name__)

DEFAULT_MODELS = {
    "nemotron": "nvidia/nemotron-speech-streaming-en-0.6b",
    "parakeet-realtime": "nvidia/parakeet_realtime_eou_120m-v1",
    "multitalker": "nvidia/multitalker-parakeet-streaming-0.6b-v1",
}
# the streaming diarizer that tells the multitalker ASR who speaks when
DEFAULT_DIAR_MODEL = "nvidia/diar_streaming_sortformer_4spk-v2.1"
DEFAULT_CHUNK_MS = {"nemotron": 160, "parakeet-realtime": 160, "multitalker": 160}
# "vectorised": services/adapters/vectorised.py (per-stream state in slot tensors, the default);
# "nemo": NeMo's CacheAwareRNNTPipeline (services/adapters/cache_aware.py), kept for comparison
DECODER_PATHS = ("vectorised", "nemo")


@dataclass
class StreamingConfig:
    worker: str = "nemotron"
    model: Optional[str] = None  # a Hugging Face id, a local .nemo path or random:<arch> (random_models.py)
    fallback_model: Optional[str] = None  # used, loudly, when `model` cannot be loaded
    diar_model: Optional[str] = None  # multitalker only: the diarizer (a Hugging Face id or a local .nemo)
    diar_fallback_model: Optional[str] = None  # multitalker only: as `fallback_model`, for the diarizer
    speaker_threshold: float = 0.5  # multitalker: diarizer probability that opens a speaker's utterance
    speaker_silence_ms: int = 640  # multitalker: a speaker quiet this long gets their final
    device: str = "cpu"
    dtype: Optional[str] = None  # default: bfloat16 on CUDA, float32 on CPU
    chunk_ms: Optional[int] = None
    max_sessions: int = 256
    max_batch: int = 64
    max_buffer_seconds: float = 10.0  # a session this far behind is ended with `overloaded`
    admit_lag_ms: Optional[float] = 500.0  # refuse new sessions while the engine lags more (None: off)
    shed_lag_s: Optional[float] = 2.0  # most sessions this far behind → the newest are ended (None: off)
    idle_timeout_s: Optional[float] = 60.0  # no frame from a client this long → `timeout`, 4408
    # how long a finalize waits for the chunk holding the VAD stop to fill (None: one chunk);
    # 0 pads the tail with zeros at once (lowest latency; a VAD stop inside a word cuts it)
    finalize_wait_ms: Optional[int] = None
    token: Optional[str] = None
    warmup: bool = True
    decoder_path: str = "vectorised"
    amp: bool = False  # vectorised path: float32 weights under bfloat16 autocast
    boosting: bool = True  # vectorised path: per-stream key phrases (off: NeMo's CUDA-graph decoder)

    def __post_init__(self) -> None:
        if self.decoder_path not in DECODER_PATHS:
            raise ValueError(f"decoder_path must be one of {DECODER_PATHS}, not {self.decoder_path!r}")

    @property
    def model_id(self) -> str:
        return self.model or DEFAULT_MODELS[self.worker]

    @property
    def diar_model_id(self) -> str:
        return self.diar_model or DEFAULT_DIAR_MODEL


def _dtype(cfg: StreamingConfig) -> str:
    return cfg.dtype or ("bfloat16" if cfg.device.startswith("cuda") and not cfg.amp else "float32")


def _cache_aware(cfg: StreamingConfig, model: str) -> StreamingAdapter:
    chunk_ms = cfg.chunk_ms or DEFAULT_CHUNK_MS.get(cfg.worker, 160)
    if cfg.decoder_path == "vectorised":
        from .adapters.multilingual import MultilingualRNNTAdapter, takes_prompt
        from .adapters.vectorised import VectorisedRNNTAdapter

        cls = MultilingualRNNTAdapter if takes_prompt(model) else VectorisedRNNTAdapter
        return cls(model, chunk_ms=chunk_ms, max_streams=cfg.max_sessions, device=cfg.device, dtype=_dtype(cfg),
                   amp=cfg.amp, boosting=cfg.boosting)
    from .adapters.cache_aware import CacheAwareRNNTAdapter
    from .adapters.multilingual import takes_prompt
    from .random_models import nemo_path

    if takes_prompt(model):
        raise ValueError(f"{model} takes a language prompt per session: serve it with --decoder-path vectorised")
    return CacheAwareRNNTAdapter(nemo_path(model), chunk_ms=chunk_ms, max_streams=cfg.max_sessions,
                                 device=cfg.device, dtype=_dtype(cfg))


def _eou(cfg: StreamingConfig, model: str) -> StreamingAdapter:
    chunk_ms = cfg.chunk_ms or DEFAULT_CHUNK_MS["parakeet-realtime"]
    if cfg.decoder_path == "vectorised":
        from .adapters.vectorised_eou import VectorisedEOUAdapter

        return VectorisedEOUAdapter(model, chunk_ms=chunk_ms, max_streams=cfg.max_sessions, device=cfg.device,
                                    dtype=_dtype(cfg), amp=cfg.amp, boosting=cfg.boosting)
    from .adapters.eou import EOUAdapter
    from .random_models import nemo_path

    return EOUAdapter(nemo_path(model, eou=True), chunk_ms=chunk_ms, max_streams=cfg.max_sessions,
                      device=cfg.device, dtype=_dtype(cfg))


@functools.lru_cache(maxsize=None)  # a retry of the build (the ASR's fallback) asks again: warn once
def _loadable(model_id: str, fallback: Optional[str], what: str) -> str:
    """`model_id` when its weights can be had (a local file, or fetched into the hub cache),
    else, loudly, `fallback`. For a second model of one worker (the diarizer), whose failure
    `load_adapter` cannot tell from the first's."""
    if not fallback or os.path.exists(model_id):
        return model_id
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(model_id)
        return model_id
    except Exception as exc:
        logger.warning("could not fetch the %s %s (%s: %s); falling back to %s.", what, model_id,
                       type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "", fallback)
        print(f"NOTE: {what} {model_id} could not be downloaded; using the bundled {fallback} instead.")
        return fallback


def _multitalker(cfg: StreamingConfig, model: str) -> StreamingAdapter:
    """Streaming Sortformer → multitalker ASR. The diarizer falls back on its own, so a
    local ASR with a hub diarizer (or the reverse) still gets the bundled half it lacks."""
    from .adapters.multitalker import MultitalkerAdapter

    diar_model = _loadable(cfg.diar_model_id, cfg.diar_fallback_model, "diarizer")
    return MultitalkerAdapter(model, diar_model, chunk_ms=cfg.chunk_ms or DEFAULT_CHUNK_MS["multitalker"],
                              max_streams=cfg.max_sessions, device=cfg.device, dtype=_dtype(cfg), amp=cfg.amp,
                              speaker_threshold=cfg.speaker_threshold, speaker_silence_ms=cfg.speaker_silence_ms)


ADAPTERS: dict[str, Callable[[StreamingConfig, str], StreamingAdapter]] = {
    "nemotron": _cache_aware,
    "parakeet-realtime": _eou,
    "multitalker": _multitalker,
}


def load_adapter(cfg: StreamingConfig) -> StreamingAdapter:
    """Load the worker's model; if it cannot be had and a fallback is set, say so and use that."""
    if cfg.worker not in ADAPTERS:
        raise ValueError(f"unknown streaming worker {cfg.worker!r}; known: {sorted(ADAPTERS)}")
    if cfg.model == "null":  # no model: measures the host side alone (benchmarks/load.py)
        from .adapters.null import NullAdapter

        return NullAdapter(chunk_ms=cfg.chunk_ms or DEFAULT_CHUNK_MS[cfg.worker], max_streams=cfg.max_sessions)
    build = ADAPTERS[cfg.worker]
    try:
        return build(cfg, cfg.model_id)
    except Exception as exc:
        if not cfg.fallback_model or os.path.exists(cfg.model_id) or cfg.model_id.startswith("random:"):
            raise
        logger.warning(
            "could not load %s (%s: %s) — the model hub is probably unreachable from here. "
            "Falling back to %s.",
            cfg.model_id, type(exc).__name__, str(exc).splitlines()[0][:200], cfg.fallback_model,
        )
        print(
            f"NOTE: model {cfg.model_id} could not be downloaded; using the bundled model "
            f"{cfg.fallback_model} instead (it knows a small demo vocabulary only)."
        )
        return build(cfg, cfg.fallback_model)


def create_streaming_app(cfg: StreamingConfig, adapter: Optional[StreamingAdapter] = None) -> FastAPI:
    adapter = adapter or load_adapter(cfg)
    metrics = Metrics(cfg.worker)
    engine = EngineCore(
        adapter,
        max_sessions=cfg.max_sessions,
        max_batch=cfg.max_batch,
        max_buffer_seconds=cfg.max_buffer_seconds,
        finalize_wait=None if cfg.finalize_wait_ms is None else cfg.finalize_wait_ms / 1000,
        on_step=metrics.observe_step,
        admit_lag=cfg.admit_lag_ms / 1000 if cfg.admit_lag_ms is not None else None,
        shed_lag=cfg.shed_lag_s,
    )
    metrics.watch_engine(engine)
    adapter.on_eou = metrics.eou_latency.observe  # adapters whose model ends utterances

    async def start() -> None:
        await engine.start()
        if cfg.warmup:
            await engine.run_on_model_thread(adapter.warmup)

    def health() -> dict:
        return {
            "sessions": len(engine.sessions),
            "max_sessions": engine.max_sessions,
            "chunk_ms": adapter.chunk_ms,
            "model_streams": adapter.active_streams(),
            **({"model_rows": adapter.active_rows()} if hasattr(adapter, "active_rows") else {}),
        }

    app = create_app(
        worker=cfg.worker,
        token=cfg.token,
        listen=engine,
        metrics=metrics,
        on_startup=[start],
        on_shutdown=[engine.stop],
        health=health,
        listen_settings=ListenSettings(idle_timeout=cfg.idle_timeout_s),
    )
    metrics.watch_listen(app.state.listen_state)
    app.state.engine = engine
    return app
