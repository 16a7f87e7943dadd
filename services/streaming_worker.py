"""Assemble a streaming worker: model adapter → engine → app.

The CLI and the Modal classes call `create_streaming_app` with a config; they add no logic
of their own. Each worker kind names its default production model and its adapter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

from fastapi import FastAPI

from .devices import default_dtype, intra_op_threads, parse_device, use_device, use_threads
from .engine.adapter import StreamingAdapter
from .engine.core import EngineCore
from .server.app import create_app
from .server.listen import ListenSettings
from .server.metrics import Metrics
from .weights import fetch_or_fallback

logger = logging.getLogger(__name__)

DEFAULT_MODELS = {
    "nemotron": "nvidia/nemotron-speech-streaming-en-0.6b",
    "parakeet-realtime": "nvidia/parakeet_realtime_eou_120m-v1",
    "multitalker": "nvidia/multitalker-parakeet-streaming-0.6b-v1",
}
# the streaming diarizer that tells the multitalker ASR who speaks when
DEFAULT_DIAR_MODEL = "nvidia/diar_streaming_sortformer_4spk-v2.1"
DEFAULT_CHUNK_MS = {"nemotron": 160, "parakeet-realtime": 160, "multitalker": 160}


@dataclass
class StreamingConfig:
    worker: str = "nemotron"
    model: Optional[str] = None  # a Hugging Face id, a local .nemo path or random:<arch> (random_models.py)
    model_revision: Optional[str] = None  # the Hugging Face commit to serve (None: main; modal_deploy pins it)
    fallback_model: Optional[str] = None  # used, loudly, only when `model` cannot be DOWNLOADED
    diar_model: Optional[str] = None  # multitalker only: the diarizer (a Hugging Face id or a local .nemo)
    diar_model_revision: Optional[str] = None
    diar_fallback_model: Optional[str] = None  # multitalker only: as `fallback_model`, for the diarizer
    speaker_threshold: float = 0.5  # multitalker: diarizer probability that opens a speaker's utterance
    speaker_silence_ms: int = 640  # multitalker: a speaker quiet this long gets their final
    # multitalker: `low|balanced|accurate` (adapters/diarizer_settings.WORKER_LATENCY: ASR chunk and the
    # diarizer card preset); any diar_* given here overrides the preset's (80 ms frames)
    latency: Optional[str] = None
    diar_left_context: Optional[int] = None
    diar_right_context: Optional[int] = None
    diar_fifo: Optional[int] = None
    diar_cache: Optional[int] = None
    diar_update_period: Optional[int] = None
    speaker_instances: str = "turn"  # multitalker: "turn" rows or NeMo's per-session "session" rows
    speaker_targets: str = "nemo"  # multitalker: NeMo's targets (raw own probability) or "binary"
    device: str = "cpu"  # auto, cpu, cuda or cuda:N; parsed once (devices.py) into "cpu" / "cuda:N"
    dtype: Optional[str] = None  # default: bfloat16 on CUDA, float32 on CPU
    chunk_ms: Optional[int] = None
    max_sessions: int = 256
    max_batch: int = 64
    max_buffer_seconds: float = 10.0  # a session this far behind is ended with `overloaded`
    admit_lag_ms: Optional[float] = 500.0  # refuse new sessions while the engine lags more (None: off)
    shed_lag_s: Optional[float] = 2.0  # most sessions this far behind → the newest are ended (None: off)
    idle_timeout_s: Optional[float] = 60.0  # no frame from a client this long → `timeout`, 4408
    # "fork": a finalize is answered at the next step from a forked tail (the partial chunk on a
    # copy of the stream's state; the stream itself is untouched); "wait": the chunk holding the
    # VAD stop is stepped once it fills, or after `finalize_wait_ms` (None: one chunk; 0 pads the
    # tail with zeros at once). Every worker's adapter forks (multitalker: a copy of the whole
    # session, its held look-ahead chunks included; adapters/multitalker_fork.py).
    finalize: str = "fork"
    finalize_wait_ms: Optional[int] = None
    token: Optional[str] = None
    warmup: bool = True
    amp: bool = False  # float32 weights under bfloat16 autocast
    boosting: bool = True  # per-stream key phrases
    max_utterance_s: Optional[float] = 30.0  # an utterance running longer is cut before its last word
    # blank run after an utterance's last token that ends it (None: the worker's default — 720 ms
    # for nemotron; 1500 ms for parakeet-realtime, a backstop behind its <EOU>; 0: off)
    endpoint_silence_ms: Optional[int] = None
    cuda_graphs: bool = False  # NeMo's CUDA-graph greedy decoder, captured at warm-up (docs/gpu.md)
    # torch intra-op threads, process-wide (None: leave torch's, for in-process use; 0: auto, what
    # `nvasr serve` passes: all cores but one on a CPU worker, torch's own on a GPU; devices.py)
    torch_threads: Optional[int] = None

    def __post_init__(self) -> None:
        self.device = str(parse_device(self.device))
        if self.finalize not in ("fork", "wait"):
            raise ValueError(f"finalize must be 'fork' or 'wait', not {self.finalize!r}")

    @property
    def model_id(self) -> str:
        return self.model or DEFAULT_MODELS[self.worker]

    @property
    def diar_model_id(self) -> str:
        return self.diar_model or DEFAULT_DIAR_MODEL


def _dtype(cfg: StreamingConfig) -> str:
    return cfg.dtype or default_dtype(cfg.device, cfg.amp)


def _utterance_bounds(cfg: StreamingConfig) -> dict:
    bounds = {"max_utterance_s": cfg.max_utterance_s}
    if cfg.endpoint_silence_ms is not None:
        bounds["endpoint_silence_ms"] = cfg.endpoint_silence_ms
    return bounds


def _cache_aware(cfg: StreamingConfig, model: str) -> StreamingAdapter:
    from .adapters.multilingual import MultilingualRNNTAdapter, takes_prompt
    from .adapters.vectorised import VectorisedRNNTAdapter

    cls = MultilingualRNNTAdapter if takes_prompt(model) else VectorisedRNNTAdapter
    return cls(model, chunk_ms=cfg.chunk_ms or DEFAULT_CHUNK_MS["nemotron"], max_streams=cfg.max_sessions,
               device=cfg.device, dtype=_dtype(cfg), amp=cfg.amp, boosting=cfg.boosting, cuda_graphs=cfg.cuda_graphs,
               **_utterance_bounds(cfg))


def _eou(cfg: StreamingConfig, model: str) -> StreamingAdapter:
    from .adapters.vectorised_eou import VectorisedEOUAdapter

    return VectorisedEOUAdapter(model, chunk_ms=cfg.chunk_ms or DEFAULT_CHUNK_MS["parakeet-realtime"],
                                max_streams=cfg.max_sessions, device=cfg.device, dtype=_dtype(cfg), amp=cfg.amp,
                                boosting=cfg.boosting, cuda_graphs=cfg.cuda_graphs,
                                **_utterance_bounds(cfg))


def _multitalker(cfg: StreamingConfig, model: str) -> StreamingAdapter:
    """Streaming Sortformer → multitalker ASR. The diarizer falls back on its own, so a
    local ASR with a hub diarizer (or the reverse) still gets the bundled half it lacks."""
    from .adapters.diarizer_settings import WORKER_LATENCY, DiarizerSettings
    from .adapters.multitalker import MultitalkerAdapter
    from .refusal import StartupRefusal

    if cfg.cuda_graphs:  # its row decoder is not warmed at its largest row batch: graphs would capture mid-call
        raise StartupRefusal("--cuda-graphs is not supported by the multitalker worker yet (docs/gpu.md)")
    if cfg.latency is not None and cfg.latency not in WORKER_LATENCY:
        raise StartupRefusal(f"--latency must be one of {sorted(WORKER_LATENCY)}, not {cfg.latency!r}")
    settings = DiarizerSettings.resolve(cfg.latency, left_context=cfg.diar_left_context,
                                        right_context=cfg.diar_right_context, fifo_len=cfg.diar_fifo,
                                        spkcache_len=cfg.diar_cache, update_period=cfg.diar_update_period)
    chunk_ms = cfg.chunk_ms or WORKER_LATENCY[cfg.latency or "low"][0]
    diar = fetch_or_fallback(cfg.diar_model_id, cfg.diar_model_revision, cfg.diar_fallback_model, "diarizer")
    adapter = MultitalkerAdapter(model, diar.path, chunk_ms=chunk_ms, max_streams=cfg.max_sessions, device=cfg.device,
                                 dtype=_dtype(cfg), amp=cfg.amp, speaker_threshold=cfg.speaker_threshold,
                                 speaker_silence_ms=cfg.speaker_silence_ms, diar_settings=settings,
                                 instances=cfg.speaker_instances, targets=cfg.speaker_targets)
    adapter.diar_model = diar.label
    return adapter


ADAPTERS: dict[str, Callable[[StreamingConfig, str], StreamingAdapter]] = {
    "nemotron": _cache_aware,
    "parakeet-realtime": _eou,
    "multitalker": _multitalker,
}


def load_adapter(cfg: StreamingConfig) -> StreamingAdapter:
    """Load the worker's model. A fallback is used, loudly, only when the model cannot be
    DOWNLOADED; any other load error (a wrong model class, an untrained chunk size: a
    `StartupRefusal`) stops the worker with its cause."""
    if cfg.worker not in ADAPTERS:
        raise ValueError(f"unknown streaming worker {cfg.worker!r}; known: {sorted(ADAPTERS)}")
    if cfg.model == "null":  # no model: measures the host side alone (benchmarks/load.py)
        from .adapters.null import NullAdapter

        return NullAdapter(chunk_ms=cfg.chunk_ms or DEFAULT_CHUNK_MS[cfg.worker], max_streams=cfg.max_sessions)
    weights = fetch_or_fallback(cfg.model_id, cfg.model_revision, cfg.fallback_model)
    adapter = ADAPTERS[cfg.worker](cfg, weights.path)
    adapter.model_name = weights.label  # `ready` and /health report it: hub id@commit, a path or a spec
    return adapter


def warm_up(adapter: StreamingAdapter, cfg: StreamingConfig, samples=None) -> None:
    """Pay every lazy initialisation before the first session: one stream of `samples`, and
    with CUDA graphs on, one step at the engine's largest batch, so NeMo captures its graphs
    now (its decoder keeps buffers for the largest batch seen) and never on the serving path."""
    use_device(cfg.device)
    adapter.warmup(samples)
    if cfg.cuda_graphs and hasattr(adapter, "warmup_batch"):
        adapter.warmup_batch(min(cfg.max_batch, cfg.max_sessions))


def create_streaming_app(cfg: StreamingConfig, adapter: Optional[StreamingAdapter] = None,
                         on_dead: Optional[Callable[[str], None]] = None) -> FastAPI:
    """The worker's app. `on_dead(reason)` runs once if its engine can no longer serve (the CLI
    and the Modal shells end the process, so the orchestrator replaces it)."""
    adapter = adapter or load_adapter(cfg)
    metrics = Metrics(cfg.worker)
    engine = EngineCore(
        adapter,
        max_sessions=cfg.max_sessions,
        max_batch=cfg.max_batch,
        max_buffer_seconds=cfg.max_buffer_seconds,
        finalize_wait=None if cfg.finalize_wait_ms is None else cfg.finalize_wait_ms / 1000,
        fork_finalize=cfg.finalize == "fork",
        on_step=metrics.observe_step,
        admit_lag=cfg.admit_lag_ms / 1000 if cfg.admit_lag_ms is not None else None,
        shed_lag=cfg.shed_lag_s,
    )
    metrics.watch_engine(engine)
    if on_dead is not None:
        engine.on_dead.append(on_dead)
    adapter.on_eou = metrics.eou_latency.observe  # adapters whose model ends utterances

    model_threads = {"torch": None}

    async def start() -> None:
        await engine.start()
        await engine.run_on_model_thread(use_device, cfg.device)  # CUDA's current device is per thread
        threads = 0 if cfg.torch_threads is None else intra_op_threads(cfg.device, cfg.torch_threads)
        model_threads["torch"] = await engine.run_on_model_thread(use_threads, threads)
        if cfg.warmup:
            await engine.run_on_model_thread(warm_up, adapter, cfg)

    def health() -> dict:
        return {
            "sessions": len(engine.sessions),
            "max_sessions": engine.max_sessions,
            "chunk_ms": adapter.chunk_ms,
            "model_streams": adapter.active_streams(),
            "torch_threads": model_threads["torch"],  # intra-op threads of the model thread
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
