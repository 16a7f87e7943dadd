"""Deploy the nvasr workers on Modal: `modal deploy modal_deploy.py`.

Thin shells around `services/`: each class picks a GPU, a volume with the weights, a
concurrency budget and a token, then hands over to the same app factory the local CLI
uses. No inference logic lives here.

Before the first deploy:
    modal secret create nvasr-auth NVASR_TOKEN=$(python -c 'import secrets;print(secrets.token_urlsafe(24))')
Settings come from the environment at deploy time, e.g.
    NVASR_GPU=L40S NVASR_NEMOTRON_CHUNK_MS=80 modal deploy modal_deploy.py
Clients connect to `wss://<workspace>--pipecat-nvasr-nemotron-web.modal.run/v1/listen`
with `Authorization: Bearer $NVASR_TOKEN`.
"""

from __future__ import annotations

import os
from pathlib import Path

import modal

APP_NAME = os.environ.get("NVASR_APP_NAME", "pipecat-nvasr")
GPU = os.environ.get("NVASR_GPU", "H100")
DEVICE = os.environ.get("NVASR_DEVICE", "cuda")  # "cpu" runs a class locally (tests)
CACHE_DIR = "/cache"
NEMOTRON_MODEL = os.environ.get("NVASR_NEMOTRON_MODEL", "nvidia/nemotron-speech-streaming-en-0.6b")
NEMOTRON_CHUNK_MS = int(os.environ.get("NVASR_NEMOTRON_CHUNK_MS", "160"))
# sessions per container: Modal routes each WebSocket as one input
NEMOTRON_SESSIONS = int(os.environ.get("NVASR_NEMOTRON_SESSIONS", "400"))
SESSION_TIMEOUT_S = 2 * 60 * 60  # the longest call a container serves
WARMUP_AUDIO = "/root/assets/demo.wav" if not modal.is_local() else str(Path(__file__).parent / "tests/assets/demo.wav")

app = modal.App(APP_NAME)
weights = modal.Volume.from_name("nvasr-weights", create_if_missing=True)
auth = modal.Secret.from_name("nvasr-auth", required_keys=["NVASR_TOKEN"])


def download_weights(model_ids: list[str]) -> None:
    """Runs at image build: weights land in the volume, never fetched at container start."""
    from huggingface_hub import snapshot_download

    for model_id in model_ids:
        if not os.path.exists(model_id):
            snapshot_download(model_id)
    weights.commit()


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
    .run_function(download_weights, args=([NEMOTRON_MODEL],), volumes={CACHE_DIR: weights})
    .add_local_file(Path(__file__).parent / "tests/assets/demo.wav", "/root/assets/demo.wav")
    .add_local_python_source("services", "pipecat_nvasr")
)


def _warmup_samples():
    from services.audio import read_audio

    return read_audio(WARMUP_AUDIO, 16000)


@app.cls(
    gpu=GPU,
    image=image,
    volumes={CACHE_DIR: weights},
    secrets=[auth],
    timeout=SESSION_TIMEOUT_S,
    scaledown_window=300,
    enable_memory_snapshot=True,
    experimental_options={"enable_gpu_snapshot": True},
)
@modal.concurrent(max_inputs=NEMOTRON_SESSIONS, target_inputs=int(NEMOTRON_SESSIONS * 0.75))
class Nemotron:
    """Cache-aware streaming Nemotron: every session of this container shares one GPU batch loop."""

    config = dict(
        worker="nemotron",
        model=NEMOTRON_MODEL,
        device=DEVICE,
        chunk_ms=NEMOTRON_CHUNK_MS,
        max_sessions=NEMOTRON_SESSIONS,
        max_batch=256,
        warmup=False,
    )

    @modal.enter(snap=True)
    def load(self) -> None:
        """Load and warm the model on bundled speech; the GPU snapshot is taken after this."""
        from services.streaming_worker import StreamingConfig, load_adapter

        self.adapter = load_adapter(StreamingConfig(**self.config))
        self.adapter.warmup(_warmup_samples())

    @modal.enter(snap=False)
    def serve(self) -> None:
        """After restore: the token is read now, so rotating the secret needs no new snapshot."""
        from services.streaming_worker import StreamingConfig, create_streaming_app

        cfg = StreamingConfig(**self.config, token=os.environ["NVASR_TOKEN"])
        self.asgi = create_streaming_app(cfg, adapter=self.adapter)

    @modal.asgi_app()
    def web(self):
        return self.asgi
