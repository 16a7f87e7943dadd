"""Assemble the batch worker: offline model → dynamic batcher → OpenAI-compatible app.

The CLI and the Modal class call `create_batch_app` with a config; they add no logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from fastapi import FastAPI

from .batch.api import DEFAULT_MAX_UPLOAD_BYTES, UploadLimit, transcription_router
from .batch.batcher import DynamicBatcher
from .batch.deepgram_prerecorded import PRERECORDED_PATH, prerecorded_router
from .batch.model import DEFAULT_MODEL, OfflineASRModel
from .devices import default_dtype, parse_device
from .server.app import create_app
from .server.metrics import Metrics


@dataclass
class BatchConfig:
    model: Optional[str] = None  # a Hugging Face id or a local .nemo path
    model_revision: Optional[str] = None  # the Hugging Face commit to serve (None: main; modal_deploy pins it)
    device: str = "cpu"  # auto, cpu, cuda or cuda:N (devices.py)
    dtype: Optional[str] = None  # default: bfloat16 on CUDA, float32 on CPU
    max_batch: int = 128
    max_wait_ms: float = 10.0
    max_batch_seconds: float = 128 * 30.0  # padded audio per model call (GPU memory)
    max_queue: int = 4096
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    language: str = "en"
    token: Optional[str] = None
    warmup: bool = True

    @property
    def model_id(self) -> str:
        return self.model or DEFAULT_MODEL


def load_batch_model(cfg: BatchConfig) -> OfflineASRModel:
    """The model at its pinned revision on the parsed device; `model_name` reports the revision."""
    from .weights import fetch

    device = parse_device(cfg.device)
    weights = fetch(cfg.model_id, cfg.model_revision)
    model = OfflineASRModel(weights.path, device=str(device), dtype=cfg.dtype or default_dtype(device))
    model.model_name = weights.label
    return model


def create_batcher(cfg: BatchConfig, model: OfflineASRModel, metrics: Optional[Metrics] = None) -> DynamicBatcher:
    return DynamicBatcher(
        model.transcribe,
        sample_rate=model.sample_rate,
        max_batch=cfg.max_batch,
        max_wait_ms=cfg.max_wait_ms,
        max_batch_seconds=cfg.max_batch_seconds,
        max_queue=cfg.max_queue,
        on_batch=metrics.observe_step if metrics else None,
    )


def create_batch_app(cfg: BatchConfig, model: Optional[OfflineASRModel] = None) -> FastAPI:
    model = model or load_batch_model(cfg)
    metrics = Metrics("parakeet")
    batcher = create_batcher(cfg, model, metrics)

    async def start() -> None:
        await batcher.start()
        if cfg.warmup:
            await batcher.run_on_model_thread(model.warmup)

    def health() -> dict:
        return {"model": model.model_name, "max_batch": batcher.max_batch, "waiting": batcher.waiting}

    router = transcription_router(
        batcher,
        sample_rate=model.sample_rate,
        metrics=metrics,
        default_language=cfg.language,
        max_upload_bytes=cfg.max_upload_bytes,
    )
    deepgram = prerecorded_router(batcher, sample_rate=model.sample_rate, model_name=model.model_name,
                                  metrics=metrics, max_upload_bytes=cfg.max_upload_bytes)
    app = create_app(
        worker="parakeet",
        token=cfg.token,
        routers=[router, deepgram],
        metrics=metrics,
        on_startup=[start],
        on_shutdown=[batcher.stop],
        health=health,
    )
    app.add_middleware(UploadLimit, max_bytes=cfg.max_upload_bytes, metrics=metrics)
    app.add_middleware(UploadLimit, max_bytes=cfg.max_upload_bytes, metrics=metrics, path=PRERECORDED_PATH)
    app.state.batcher = batcher
    app.state.model = model
    return app
