"""Prometheus metrics for one worker process.

Each app gets its own registry, so several apps (tests, a CLI serving two workers) never
collide on metric names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, worker: str):
        self.registry = CollectorRegistry()
        labels = {"worker": worker}
        self.active_sessions = Gauge(
            "nvasr_active_sessions", "Sessions open now", registry=self.registry
        )
        self.sessions = Counter("nvasr_sessions", "Sessions opened", registry=self.registry)
        self.batch_size = Histogram(
            "nvasr_batch_size", "Streams per model step", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.step_seconds = Histogram(
            "nvasr_step_seconds", "Model step latency", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.audio_seconds = Counter(
            "nvasr_audio_seconds", "Seconds of audio transcribed", registry=self.registry
        )
        self.errors = Counter(
            "nvasr_errors", "Errors sent to clients, by code", ["code"], registry=self.registry
        )
        self.eou_latency = Histogram(
            "nvasr_eou_latency_seconds",
            "End of speech to end-of-utterance event, in stream time",
            buckets=(0.08, 0.16, 0.24, 0.32, 0.48, 0.64, 0.8, 1.2, 2.0),
            registry=self.registry,
        )
        self.requests = Counter(
            "nvasr_transcription_requests", "Batch transcription requests", ["status"], registry=self.registry
        )
        self.info = Gauge("nvasr_worker_info", "Worker identity", list(labels), registry=self.registry)
        self.info.labels(**labels).set(1)

    def observe_step(self, batch: int, seconds: float) -> None:
        self.batch_size.observe(batch)
        self.step_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
