"""Prometheus metrics for one worker process.

Each app gets its own registry, so several apps (tests, a CLI serving two workers) never
collide on metric names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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

    def watch_engine(self, engine) -> None:
        """Export the engine's load and protection counters (read at scrape time)."""
        self.registry.register(_EngineCollector(engine))

    def watch_listen(self, state) -> None:
        """Export how many sessions the socket layer cut off (idle, slow consumer)."""
        self.registry.register(_ListenCollector(state))

    def observe_step(self, batch: int, seconds: float) -> None:
        self.batch_size.observe(batch)
        self.step_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        e = self.engine
        yield GaugeMetricFamily("nvasr_engine_sessions", "Sessions the engine holds", value=len(e.sessions))
        yield GaugeMetricFamily("nvasr_model_streams", "Streams holding model state", value=e.adapter.active_streams())
        if hasattr(e.adapter, "active_rows"):  # multitalker: one ASR row per (session, speaker) talking
            yield GaugeMetricFamily("nvasr_model_rows", "Speaker rows holding ASR state", value=e.adapter.active_rows())
        yield GaugeMetricFamily(
            "nvasr_step_lag_seconds", "Longest wait of a ready chunk for its step (last 1-2 s)", value=e.step_lag()
        )
        yield GaugeMetricFamily(
            "nvasr_loop_lag_seconds", "Longest event-loop delay (last 1-2 s)", value=e.loop_lag()
        )
        yield GaugeMetricFamily(
            "nvasr_predicted_round_seconds", "Model time for every open session to advance one chunk (estimate)",
            value=e.predicted_round(len(e.sessions)),
        )
        yield GaugeMetricFamily("nvasr_draining", "1 while the worker drains for shutdown", value=int(e.draining))
        refused = CounterMetricFamily(
            "nvasr_sessions_refused", "Sessions refused at open, by reason (sessions, capacity, lag, draining)",
            labels=["reason"],
        )
        for reason in ("sessions", "capacity", "lag", "draining"):
            refused.add_metric([reason], e.refused.get(reason, 0))
        yield refused
        yield CounterMetricFamily(
            "nvasr_sessions_shed", "Sessions ended with `overloaded` because the engine fell behind (newest first)",
            value=e.shed,
        )
        yield CounterMetricFamily(
            "nvasr_failed_streams", "Sessions ended because the model failed on their own step",
            value=e.failed_streams,
        )
        yield CounterMetricFamily(
            "nvasr_finalize_pads", "Chunks zero-padded because a finalize's chunk did not fill in time "
            "(a client that stopped sending; counts from streaming clients mean audio arrives late)",
            value=e.finalize_pads,
        )
        yield CounterMetricFamily(
            "nvasr_isolation_steps", "Extra steps run to find the stream that failed a batch",
            value=e.isolation_steps,
        )


class _ListenCollector:
    def __init__(self, state):
        self.state = state

    def collect(self):
        cut = CounterMetricFamily(
            "nvasr_sessions_cut_off", "Sessions ended by the server, by reason (idle, slow_consumer)",
            labels=["reason"],
        )
        for reason, count in self.state.cut_off.items():
            cut.add_metric([reason], count)
        yield cut
