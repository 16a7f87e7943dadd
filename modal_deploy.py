"""Deploy the nvasr workers on Modal: `modal deploy modal_deploy.py`.

Thin shells around `services/`: each class picks a GPU, a volume with the weights, a
concurrency budget and a token, then hands over to the same app factory the local CLI
uses. No inference logic lives here.

Before the first deploy:
    modal secret create nvasr-auth NVASR_TOKEN=$(python -c 'import secrets;print(secrets.token_urlsafe(24))')
Settings come from the environment at deploy time, e.g.
    NVASR_GPU=L40S NVASR_NEMOTRON_CHUNK_MS=80 NVASR_NEMOTRON_MIN_CONTAINERS=1 modal deploy modal_deploy.py
and travel into the containers as each class's environment (`CONTAINER_ENV`), so what
runs there is what was deployed. The sessions a container takes is ONE value per worker:
it is both Modal's `@modal.concurrent(max_inputs=...)` and the engine's `max_sessions`.
Clients connect to `wss://<workspace>--pipecat-nvasr-nemotron-web.modal.run/v1/listen`
(multilingual: `…-nemotron35-web…/v1/listen?language=es`)
with `Authorization: Bearer $NVASR_TOKEN`.
"""

from __future__ import annotations

import os
from pathlib import Path

import modal

# Every deploy-time setting, by the environment variable that sets it. Modal re-imports this
# module in each container WITHOUT the deploying shell's environment, so the values read here
# are also handed to every class as its container environment (`env=CONTAINER_ENV`): the
# container then computes exactly the configuration that was deployed.
DEFAULTS = {
    "NVASR_APP_NAME": "pipecat-nvasr",
    "NVASR_GPU": "H100",
    "NVASR_DEVICE": "cuda",  # "cpu" runs a class locally (tests)
    "NVASR_CUDA_GRAPHS": "0",  # 1: NeMo's CUDA-graph greedy decoder (off as in NeMo's reference config)
    "NVASR_NEMOTRON_MODEL": "nvidia/nemotron-speech-streaming-en-0.6b",
    # Hugging Face commits each model is served at (`*_REVISION`; docs/gpu.md "Revision pins"). The
    # nemotron checkpoint on main was retrained on 2026-03-12: a deploy must not change model under
    # its users. "" = no commit known here: the first image build records main's commit in the
    # Volume (`revisions.json`) and every later deploy serves that one until a pin is set.
    "NVASR_NEMOTRON_REVISION": "ebe59e5a817142986528bbbee5dba8db7b38ed50",
    "NVASR_NEMOTRON_CHUNK_MS": "160",
    "NVASR_NEMOTRON_SESSIONS": "400",  # sessions per container: Modal routes each WebSocket as one input
    "NVASR_NEMOTRON_MIN_CONTAINERS": "0",
    "NVASR_NEMOTRON_BUFFER_CONTAINERS": "0",
    "NVASR_STREAMING_MAX_BATCH": "256",
    # Nemotron 3.5 ASR: 40 locales + auto, a language per session (`language=`, `configure`)
    "NVASR_NEMOTRON35_MODEL": "nvidia/nemotron-3.5-asr-streaming-0.6b",
    "NVASR_NEMOTRON35_REVISION": "",  # unknown here: locked at the first build
    "NVASR_NEMOTRON35_CHUNK_MS": "160",  # 80, 160, 320, 560 or 1120
    "NVASR_NEMOTRON35_SESSIONS": "400",
    "NVASR_NEMOTRON35_MIN_CONTAINERS": "0",
    "NVASR_NEMOTRON35_BUFFER_CONTAINERS": "0",
    "NVASR_REALTIME_MODEL": "nvidia/parakeet_realtime_eou_120m-v1",
    "NVASR_REALTIME_REVISION": "",  # unknown here: locked at the first build
    "NVASR_REALTIME_GPU": "L4",  # 120M parameters: a small GPU is plenty
    "NVASR_REALTIME_CHUNK_MS": "160",  # 80 or 160
    "NVASR_REALTIME_SESSIONS": "400",
    "NVASR_REALTIME_MIN_CONTAINERS": "0",
    "NVASR_REALTIME_BUFFER_CONTAINERS": "0",
    "NVASR_MULTITALKER_MODEL": "nvidia/multitalker-parakeet-streaming-0.6b-v1",
    "NVASR_MULTITALKER_REVISION": "",  # unknown here: locked at the first build
    "NVASR_MULTITALKER_DIAR_MODEL": "nvidia/diar_streaming_sortformer_4spk-v2.1",
    "NVASR_MULTITALKER_DIAR_REVISION": "cd03eee90fbec18297ac31b8c21546e596b7f71c",
    "NVASR_MULTITALKER_GPU": "H100",  # the diarizer re-encodes its speaker cache every step
    "NVASR_MULTITALKER_CHUNK_MS": "160",
    "NVASR_MULTITALKER_SESSIONS": "64",  # each session is up to 4 ASR rows (one per speaker)
    "NVASR_MULTITALKER_MIN_CONTAINERS": "0",
    "NVASR_MULTITALKER_BUFFER_CONTAINERS": "0",
    "NVASR_PARAKEET_MODEL": "nvidia/parakeet-tdt-0.6b-v3",
    "NVASR_PARAKEET_REVISION": "541d1f99c6b0c3cd0b11a95167540bb8edefd82b",
    "NVASR_PARAKEET_MAX_BATCH": "128",
    "NVASR_PARAKEET_INPUTS": "512",  # requests in flight per GPU container
    "NVASR_PARAKEET_MIN_CONTAINERS": "0",
    "NVASR_PARAKEET_BUFFER_CONTAINERS": "0",
    "NVASR_SEGMENTER_SESSIONS": "200",  # per CPU container
}
CONTAINER_ENV = {name: os.environ.get(name, default) for name, default in DEFAULTS.items()}


def _setting(name: str) -> str:
    return CONTAINER_ENV[name]


def _count(name: str) -> int:
    return int(CONTAINER_ENV[name])


APP_NAME = _setting("NVASR_APP_NAME")
GPU = _setting("NVASR_GPU")
DEVICE = _setting("NVASR_DEVICE")
CUDA_GRAPHS = _setting("NVASR_CUDA_GRAPHS") == "1"
CACHE_DIR = "/cache"
NEMOTRON_MODEL = _setting("NVASR_NEMOTRON_MODEL")
NEMOTRON_REVISION = _setting("NVASR_NEMOTRON_REVISION") or None
NEMOTRON_CHUNK_MS = _count("NVASR_NEMOTRON_CHUNK_MS")
NEMOTRON_SESSIONS = _count("NVASR_NEMOTRON_SESSIONS")
STREAMING_MAX_BATCH = _count("NVASR_STREAMING_MAX_BATCH")
NEMOTRON35_MODEL = _setting("NVASR_NEMOTRON35_MODEL")
NEMOTRON35_REVISION = _setting("NVASR_NEMOTRON35_REVISION") or None
NEMOTRON35_CHUNK_MS = _count("NVASR_NEMOTRON35_CHUNK_MS")
NEMOTRON35_SESSIONS = _count("NVASR_NEMOTRON35_SESSIONS")
SESSION_TIMEOUT_S = 2 * 60 * 60  # the longest call a container serves
REALTIME_MODEL = _setting("NVASR_REALTIME_MODEL")
REALTIME_REVISION = _setting("NVASR_REALTIME_REVISION") or None
REALTIME_GPU = _setting("NVASR_REALTIME_GPU")
REALTIME_CHUNK_MS = _count("NVASR_REALTIME_CHUNK_MS")
REALTIME_SESSIONS = _count("NVASR_REALTIME_SESSIONS")
MULTITALKER_MODEL = _setting("NVASR_MULTITALKER_MODEL")
MULTITALKER_REVISION = _setting("NVASR_MULTITALKER_REVISION") or None
MULTITALKER_DIAR_MODEL = _setting("NVASR_MULTITALKER_DIAR_MODEL")
MULTITALKER_DIAR_REVISION = _setting("NVASR_MULTITALKER_DIAR_REVISION") or None
MULTITALKER_GPU = _setting("NVASR_MULTITALKER_GPU")
MULTITALKER_CHUNK_MS = _count("NVASR_MULTITALKER_CHUNK_MS")
MULTITALKER_SESSIONS = _count("NVASR_MULTITALKER_SESSIONS")
PARAKEET_MODEL = _setting("NVASR_PARAKEET_MODEL")
PARAKEET_REVISION = _setting("NVASR_PARAKEET_REVISION") or None
PARAKEET_MAX_BATCH = _count("NVASR_PARAKEET_MAX_BATCH")
PARAKEET_INPUTS = _count("NVASR_PARAKEET_INPUTS")
SEGMENTER_SESSIONS = _count("NVASR_SEGMENTER_SESSIONS")
WARMUP_AUDIO = "/root/assets/demo.wav" if not modal.is_local() else str(Path(__file__).parent / "tests/assets/demo.wav")


def _scaling(prefix: str) -> dict:
    """Warm containers for `prefix` (NEMOTRON, REALTIME, MULTITALKER, PARAKEET). Each one is billed for
    as long as it runs, idle or not: see the README's "Cold starts" section."""
    return dict(
        min_containers=_count(f"NVASR_{prefix}_MIN_CONTAINERS") or None,
        buffer_containers=_count(f"NVASR_{prefix}_BUFFER_CONTAINERS") or None,
    )


app = modal.App(APP_NAME)
weights = modal.Volume.from_name("nvasr-weights", create_if_missing=True)
auth = modal.Secret.from_name("nvasr-auth", required_keys=["NVASR_TOKEN"])


LOCK_PATH = f"{CACHE_DIR}/revisions.json"  # services/weights.py: model id → the commit served
PINS = {
    NEMOTRON_MODEL: NEMOTRON_REVISION,
    NEMOTRON35_MODEL: NEMOTRON35_REVISION,
    PARAKEET_MODEL: PARAKEET_REVISION,
    REALTIME_MODEL: REALTIME_REVISION,
    MULTITALKER_MODEL: MULTITALKER_REVISION,
    MULTITALKER_DIAR_MODEL: MULTITALKER_DIAR_REVISION,
}


def download_weights(pins: dict) -> None:
    """Runs at image build: every model lands in the volume at its pinned (or locked) commit,
    never fetched at container start (the containers run with HF_HUB_OFFLINE=1)."""
    from services.weights import lock_revisions

    print("serving revisions:", lock_revisions(pins, LOCK_PATH))
    weights.commit()


def _revision(model_id: str, pin) -> str | None:
    from services.weights import locked_revision

    return locked_revision(model_id, pin, LOCK_PATH)


image = (
    modal.Image.debian_slim(python_version="3.11")
    .apt_install("libsndfile1", "ffmpeg")
    .pip_install("torch==2.13.0")  # first, so NeMo does not pick another build
    .pip_install(
        "nemo-toolkit[asr]==3.0.0",
        "fastapi==0.165.0",
        "uvicorn[standard]==0.54.0",
        "prometheus-client==0.26.0",
        "python-multipart==0.0.34",
        "soundfile==0.13.1",
        "soxr==1.0.0",
        "av==18.1.0",
        "websockets==15.0.1",
        "huggingface_hub[hf_transfer]",
    )
    .env({"HF_HOME": f"{CACHE_DIR}/hf", "HF_HUB_ENABLE_HF_TRANSFER": "1", "TOKENIZERS_PARALLELISM": "false"})
    .add_local_python_source("services", "pipecat_nvasr", copy=True)  # download_weights needs services.weights
    .run_function(download_weights, args=(PINS,), volumes={CACHE_DIR: weights})
    .add_local_file(Path(__file__).parent / "tests/assets/demo.wav", "/root/assets/demo.wav")
    .add_local_dir(Path(__file__).parent / "frontend", "/root/frontend")  # the page at `/`
)
# serving containers read the weights from the Volume only: a deploy never fetches another revision
SERVING_ENV = {**CONTAINER_ENV, "HF_HUB_OFFLINE": "1"}


def _warmup_samples():
    from services.audio import read_audio

    return read_audio(WARMUP_AUDIO, 16000)


class _StreamingWorker:
    """Shared shell of the streaming classes: load + warm in the snapshot, serve after restore."""

    config: dict = {}
    pins: dict = {}  # config key → (model id, pin): the revisions each container serves

    def _config(self, **extra) -> dict:
        return {**self.config, **{key: _revision(*pin) for key, pin in self.pins.items()}, **extra}

    @modal.enter(snap=True)
    def load(self) -> None:
        """Load and warm the model on bundled speech (with --cuda-graphs, at the largest batch
        too); the GPU snapshot is taken after this."""
        from services.streaming_worker import StreamingConfig, load_adapter, warm_up

        cfg = StreamingConfig(**self._config())
        self.adapter = load_adapter(cfg)
        warm_up(self.adapter, cfg, _warmup_samples())

    @modal.enter(snap=False)
    def serve(self) -> None:
        """After restore: the token is read now, so rotating the secret needs no new snapshot."""
        from services.streaming_worker import StreamingConfig, create_streaming_app

        from services.server.drain import exit_process_soon

        cfg = StreamingConfig(**self._config(token=os.environ["NVASR_TOKEN"]))
        # a dead engine ends the container: Modal starts a fresh one instead of routing callers here
        self.asgi = create_streaming_app(cfg, adapter=self.adapter, on_dead=exit_process_soon)

    @modal.asgi_app()
    def web(self):
        return self.asgi


def _streaming_cls(gpu: str, sessions: int, scaling: dict):
    """The Modal options every streaming worker shares. `sessions` is the one limit: Modal
    routes at most that many WebSockets to a container, and its engine takes that many."""

    def wrap(cls):
        assert cls.config["max_sessions"] == sessions, "Modal's limit and the engine's must be one value"
        cls = modal.concurrent(max_inputs=sessions, target_inputs=max(1, int(sessions * 0.75)))(cls)
        return app.cls(
            gpu=gpu,
            image=image,
            volumes={CACHE_DIR: weights},
            secrets=[auth],
            env=SERVING_ENV,
            timeout=SESSION_TIMEOUT_S,
            scaledown_window=300,
            enable_memory_snapshot=True,
            experimental_options={"enable_gpu_snapshot": True},
            **scaling,
        )(cls)

    return wrap


@_streaming_cls(GPU, NEMOTRON_SESSIONS, _scaling("NEMOTRON"))
class Nemotron(_StreamingWorker):
    """Cache-aware streaming Nemotron: every session of this container shares one GPU batch loop."""

    config = dict(
        worker="nemotron",
        model=NEMOTRON_MODEL,
        device=DEVICE,
        chunk_ms=NEMOTRON_CHUNK_MS,
        max_sessions=NEMOTRON_SESSIONS,
        max_batch=STREAMING_MAX_BATCH,
        cuda_graphs=CUDA_GRAPHS,
        warmup=False,
    )
    pins = {"model_revision": (NEMOTRON_MODEL, NEMOTRON_REVISION)}


@_streaming_cls(GPU, NEMOTRON35_SESSIONS, _scaling("NEMOTRON35"))
class Nemotron35(_StreamingWorker):
    """Multilingual Nemotron 3.5 ASR: sessions in different languages share every GPU step."""

    config = dict(
        worker="nemotron",
        model=NEMOTRON35_MODEL,
        device=DEVICE,
        chunk_ms=NEMOTRON35_CHUNK_MS,
        max_sessions=NEMOTRON35_SESSIONS,
        max_batch=STREAMING_MAX_BATCH,
        cuda_graphs=CUDA_GRAPHS,
        warmup=False,
    )
    pins = {"model_revision": (NEMOTRON35_MODEL, NEMOTRON35_REVISION)}


@_streaming_cls(REALTIME_GPU, REALTIME_SESSIONS, _scaling("REALTIME"))
class ParakeetRealtime(_StreamingWorker):
    """Parakeet realtime EOU on the same engine as Nemotron; its `<EOU>` ends the user's turn."""

    config = dict(
        worker="parakeet-realtime",
        model=REALTIME_MODEL,
        device=DEVICE,
        chunk_ms=REALTIME_CHUNK_MS,
        max_sessions=REALTIME_SESSIONS,
        max_batch=STREAMING_MAX_BATCH,
        cuda_graphs=CUDA_GRAPHS,
        warmup=False,
    )
    pins = {"model_revision": (REALTIME_MODEL, REALTIME_REVISION)}


@_streaming_cls(MULTITALKER_GPU, MULTITALKER_SESSIONS, _scaling("MULTITALKER"))
class Multitalker(_StreamingWorker):
    """Streaming Sortformer diarization driving multitalker Parakeet: speaker-labelled transcripts,
    every session's diarizer step and every (session, speaker) ASR row batched on one GPU."""

    config = dict(
        worker="multitalker",
        model=MULTITALKER_MODEL,
        diar_model=MULTITALKER_DIAR_MODEL,
        device=DEVICE,
        chunk_ms=MULTITALKER_CHUNK_MS,
        max_sessions=MULTITALKER_SESSIONS,
        max_batch=STREAMING_MAX_BATCH,
        warmup=False,
    )
    pins = {"model_revision": (MULTITALKER_MODEL, MULTITALKER_REVISION),
            "diar_model_revision": (MULTITALKER_DIAR_MODEL, MULTITALKER_DIAR_REVISION)}


# The segmenter needs no GPU, torch or NeMo: Silero VAD runs on onnxruntime inside pipecat-ai.
segmenter_image = (
    modal.Image.debian_slim(python_version="3.11")
    .apt_install("libsndfile1")
    .pip_install(
        "pipecat-ai[silero]==1.14.0",
        "fastapi==0.165.0",
        "uvicorn[standard]==0.54.0",
        "prometheus-client==0.26.0",
        "python-multipart==0.0.34",
        "soundfile==0.13.1",
        "soxr==1.0.0",
        "aiohttp>=3.9,<4",
        "websockets==15.0.1",
    )
    .add_local_dir(Path(__file__).parent / "frontend", "/root/frontend")  # the page at `/`
    .add_local_python_source("services", "pipecat_nvasr")
)


@app.cls(
    gpu=GPU,
    image=image,
    volumes={CACHE_DIR: weights},
    secrets=[auth],
    env=SERVING_ENV,
    timeout=10 * 60,
    scaledown_window=300,
    enable_memory_snapshot=True,
    experimental_options={"enable_gpu_snapshot": True},
    **_scaling("PARAKEET"),
)
@modal.concurrent(max_inputs=PARAKEET_INPUTS, target_inputs=PARAKEET_INPUTS // 2)
class Parakeet:
    """Parakeet TDT batch worker: concurrent requests share GPU batches of up to 128 utterances.

    Serves the OpenAI-compatible HTTP API (`web`) and `transcribe`, the segmenter's call;
    both feed batchers on one model (its calls are serialised).
    """

    config = dict(model=PARAKEET_MODEL, device=DEVICE, max_batch=PARAKEET_MAX_BATCH, warmup=False)

    @modal.enter(snap=True)
    def load(self) -> None:
        from services.batch_worker import BatchConfig, load_batch_model

        self.model = load_batch_model(BatchConfig(**self.config, model_revision=_revision(PARAKEET_MODEL, PARAKEET_REVISION)))
        self.model.transcribe([_warmup_samples()] * 4)

    @modal.enter(snap=False)
    def serve(self) -> None:
        from services.batch.remote import BatchCallEndpoint
        from services.batch_worker import BatchConfig, create_batch_app

        cfg = BatchConfig(**self.config, token=os.environ["NVASR_TOKEN"])
        self.asgi = create_batch_app(cfg, model=self.model)
        self.calls = BatchCallEndpoint(self.model, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms)

    @modal.method()
    async def transcribe(self, pcm16: bytes) -> dict:
        """16 kHz s16le mono → verbose_json (words, segments)."""
        return await self.calls.transcribe_pcm(pcm16)

    @modal.asgi_app()
    def web(self):
        return self.asgi


@app.cls(image=segmenter_image, secrets=[auth], env=CONTAINER_ENV, timeout=SESSION_TIMEOUT_S, scaledown_window=300,
         cpu=4.0, memory=4096)
@modal.concurrent(max_inputs=SEGMENTER_SESSIONS, target_inputs=int(SEGMENTER_SESSIONS * 0.75))
class ParakeetSegmenter:
    """`/v1/listen` for Parakeet: Silero VAD per session on CPU, utterances to `Parakeet.transcribe`.

    Scales on sessions, apart from the GPU class, which scales on utterances in flight.
    """

    @modal.enter()
    def serve(self) -> None:
        from services.segmenter import SegmenterConfig, create_segmenter_app
        from services.segmenter.transcriber import CallBatchTranscriber

        transcribe = CallBatchTranscriber(Parakeet().transcribe.remote.aio)
        cfg = SegmenterConfig(model_name=PARAKEET_MODEL, max_sessions=SEGMENTER_SESSIONS, token=os.environ["NVASR_TOKEN"])
        self.asgi = create_segmenter_app(cfg, transcribe=transcribe)

    @modal.asgi_app()
    def web(self):
        return self.asgi
