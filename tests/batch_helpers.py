"""Shared by the Parakeet batch/segmenter/service tests: one model per pytest process.

The model is the project's trained tiny RNNT (real words) when it exists, else a random
tiny RNNT whose blank logit is raised so it emits a few tokens per utterance rather than
ten per frame (fast, still exercises decoding). float64, so batched == alone exactly.
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).parent / "assets"
TRAINED = ASSETS / "tiny_rnnt.nemo"


def has_trained_model() -> bool:
    return TRAINED.exists()


@functools.lru_cache(maxsize=None)
def model_is_accurate() -> bool:
    """The trained model gets ≥ 90 % of held-out words right: only then do tests compare with the truth.

    Until it does (it is retrained as the project goes), tests assert consistency instead: the
    same audio gives the same result however it travels.
    """
    if not has_trained_model():
        return False
    items = heldout()
    results = batch_model().transcribe([i["samples"] for i in items])
    scores = [word_accuracy(i["text"], r.text) for i, r in zip(items, results)]
    return sum(scores) / len(scores) >= 0.9


@functools.lru_cache(maxsize=None)
def batch_model():
    """The OfflineASRModel all Parakeet tests share (loaded once per process)."""
    import tempfile

    import torch

    from services.batch.model import OfflineASRModel

    if has_trained_model():
        return OfflineASRModel(str(TRAINED), dtype="float64")
    from services.tiny_model import build_model, train_tokenizer

    from omegaconf import open_dict

    model = build_model(train_tokenizer(Path(tempfile.mkdtemp(prefix="batch-model-")) / "tok"), seed=3)
    with torch.no_grad():
        model.joint.joint_net[-1].bias[-1] += 0.6  # the last output is RNNT's blank
    with open_dict(model.cfg):
        model.cfg.decoding.greedy.max_symbols = 2
    return OfflineASRModel("random-tiny-rnnt", dtype="float64", asr_model=model)


@functools.lru_cache(maxsize=None)
def heldout() -> list[dict]:
    import soundfile as sf

    items = json.loads((ASSETS / "heldout" / "manifest.json").read_text())
    for item in items:
        item["samples"], _ = sf.read(ASSETS / "heldout" / item["audio"], dtype="float32")
    return items


def encode(samples: np.ndarray, rate: int, fmt: str, channels: int = 1) -> bytes:
    """16 kHz mono float32 → `fmt` (wav/flac/ogg/mp3, opus/webm) bytes at `rate` with `channels`."""
    import soundfile as sf
    import soxr

    if fmt in ("opus", "webm"):
        return encode_opus(samples, "ogg" if fmt == "opus" else "webm")
    audio = soxr.resample(samples, 16000, rate) if rate != 16000 else samples
    if channels == 2:
        audio = np.stack([audio, audio * 0.9], axis=1)
    buffer = io.BytesIO()
    kwargs = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"), "mp3": ("MP3", "MPEG_LAYER_III")}
    container, subtype = kwargs[fmt]
    sf.write(buffer, audio, rate, format=container, subtype=subtype)
    return buffer.getvalue()


def encode_opus(samples: np.ndarray, container: str) -> bytes:
    """Opus at 48 kHz in an OGG or WebM container, written with PyAV (FFmpeg)."""
    import av
    import soxr

    audio = soxr.resample(samples, 16000, 48000).astype(np.float32)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = 48000
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            out.mux(packet)
    return buffer.getvalue()


def tdt_model(workdir: str, seed: int = 0):
    """A random tiny TDT in Parakeet's offline shape (full attention, non-causal convs, per_feature)."""
    import torch
    from omegaconf import OmegaConf

    from nemo.collections.asr.models import EncDecRNNTBPEModel
    from services.batch.model import OfflineASRModel
    from services.tiny_model import model_config, train_tokenizer

    cfg = model_config(train_tokenizer(Path(workdir) / "tok"))
    durations = [0, 1, 2, 3, 4]
    cfg["model_defaults"]["tdt_durations"] = durations
    cfg["joint"]["num_extra_outputs"] = len(durations)
    cfg["decoding"] = {"strategy": "greedy_batch", "model_type": "tdt", "durations": durations, "greedy": {"max_symbols": 10}}
    cfg["loss"] = {"loss_name": "tdt", "tdt_kwargs": {"durations": durations, "sigma": 0.02, "omega": 0.1}}
    cfg["encoder"].update(att_context_size=[-1, -1], att_context_style="regular", conv_context_size=None, causal_downsampling=False)
    cfg["preprocessor"]["normalize"] = "per_feature"
    torch.manual_seed(seed)
    model = EncDecRNNTBPEModel(cfg=OmegaConf.create(cfg)).eval()
    with torch.no_grad():
        model.joint.joint_net[-1].bias[-len(durations) - 1] += 0.5  # blank: a few tokens, not 10 per frame
    return OfflineASRModel("random-tiny-tdt", dtype="float64", asr_model=model)


def word_accuracy(reference: str, hypothesis: str) -> float:
    """1 − WER, for assertions on the trained tiny model (it is good, not perfect)."""
    ref, hyp = reference.lower().split(), hypothesis.lower().split()
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return 1 - d[-1] / max(len(ref), 1)
