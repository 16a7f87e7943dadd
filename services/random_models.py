"""`random:<arch>` model specs: cache-aware FastConformer-RNNT models built from config with
random weights, for benchmarks and tests (no weights are downloadable here).

    random:minimal        d_model 16, 1 layer, 16 mels: next to no compute, so a step's time is host cost
    random:tiny           d_model 64, 2 layers (the tests' random model)
    random:nemotron-0.6b  the production shape: cache-aware FastConformer, 24 layers, d_model 1024,
                          8 heads, FF x4, no Linear/Conv1d biases in the conformer layers, 128 mel
                          features, 8x causal dw_striding subsampling (256 channels), causal convs
                          kernel 9, chunked_limited attention [[70,13],[70,6],[70,1],[70,0]], RNNT
                          with a 2-layer LSTM prediction net and joint of 640 (as published for
                          Nemotron speech streaming 0.6B models)
    random:parakeet-eou-120m  parakeet_realtime_eou_120m-v1's encoder: 17 layers x 512, 8 heads,
                          FF x4, no biases, no xscaling, [70,1] only; its 80 mels and the 640-wide
                          1-layer prediction net are the FastConformer-110M family's, not read
                          off this model's card. Served by parakeet-realtime it is the EOU class.
    random:nemotron-3.5-0.6b  Nemotron 3.5 ASR's shape: nemotron-0.6b + a language prompt (128 one-hot
                          prompts, its 40 locales + auto, NeMo's EncDecRNNTBPEModelWithPrompt) and a
                          320 ms context [68,3]
    random:tiny-multilingual  tiny + the tiny multilingual model's prompt (en-US, es-ES, de-DE, auto)

The tokenizer is trained on the small word list in `tiny_model.WORDS`; SentencePiece stops
short of a large requested vocabulary, so `nemotron-0.6b`'s joint is narrower than the real
model's (332 outputs, not 1,025) — a small share of its compute; 618 M parameters in all.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .languages import NEMOTRON_35_LOCALES

PREFIX = "random:"

ARCHS: dict[str, dict] = {
    # 16 mel bands from a 128-point FFT, 4 subsampling channels: the front end costs next to nothing too
    # (its joint is rescaled so that it writes ~0.5 tokens per 80 ms frame on noise, about a speech
    # rate; plain random weights write max_symbols (10) tokens every frame, a pathological decode)
    "minimal": dict(d_model=16, n_layers=1, n_heads=1, subsampling_conv_channels=4, n_mels=16, n_fft=128,
                    window_size=0.008, vocab=64, joint_scale=20.0, blank_bias=7.0),
    "tiny": dict(d_model=64, n_layers=2, n_heads=2, vocab=64),
    "nemotron-0.6b": dict(
        d_model=1024, n_layers=24, n_heads=8, ff_expansion_factor=4, subsampling_conv_channels=256,
        pred_hidden=640, pred_rnn_layers=2, n_mels=128, vocab=1024, use_bias=False,
    ),
    "parakeet-eou-120m": dict(
        d_model=512, n_layers=17, n_heads=8, ff_expansion_factor=4, subsampling_conv_channels=256,
        pred_hidden=640, pred_rnn_layers=1, n_mels=80, vocab=1024, use_bias=False, xscaling=False,
        att_context_size=[[70, 1]],
    ),
    # Nemotron 3.5 ASR: the same, plus the one-hot language prompt (128 prompts, its 40 locales + auto)
    # through a prompt kernel on the encoder output, and 320 ms chunks
    "nemotron-3.5-0.6b": dict(
        d_model=1024, n_layers=24, n_heads=8, ff_expansion_factor=4, subsampling_conv_channels=256,
        pred_hidden=640, pred_rnn_layers=2, n_mels=128, vocab=1024, prompts=NEMOTRON_35_LOCALES,
        att_context_size=[[70, 13], [70, 6], [68, 3], [70, 1], [70, 0]],
    ),
    # the tests' random multilingual model: tiny's shape with the prompt of the tiny multilingual model
    "tiny-multilingual": dict(d_model=64, n_layers=2, n_heads=2, vocab=64, prompts=("en-US", "es-ES", "de-DE", "auto"),
                              num_prompts=16, att_context_size=[[70, 6], [68, 3], [70, 1], [70, 0]]),
}

_tokenizers: dict[tuple[str, bool], Path] = {}
_saved: dict[tuple[str, bool], Path] = {}


def is_random(spec: str) -> bool:
    return spec.startswith(PREFIX)


def arch_of(spec: str) -> str:
    arch = spec[len(PREFIX):]
    if arch not in ARCHS:
        raise ValueError(f"unknown model spec {spec!r}; known: {[PREFIX + a for a in ARCHS]}")
    return arch


def build(spec: str, eou: bool = False, seed: int = 0):
    """A fresh model for a `random:` spec (eval mode, CPU); same seed, same weights."""
    from .tiny_model import build_model, train_tokenizer

    key = (arch_of(spec), eou)
    params = dict(ARCHS[key[0]])
    vocab = params.pop("vocab")
    scale, blank_bias = params.pop("joint_scale", None), params.pop("blank_bias", 0.0)
    if key not in _tokenizers:
        work = Path(tempfile.mkdtemp(prefix="nvasr-random-"))
        _tokenizers[key] = train_tokenizer(work / "tok", vocab_size=vocab, eou=eou)
    model = build_model(_tokenizers[key], seed=seed, eou=eou, **params)
    if scale is not None:
        import torch

        out = model.joint.joint_net[-1]
        with torch.no_grad():
            out.weight *= scale
            out.bias[-1] += blank_bias
    return model


def nemo_path(spec: str, eou: bool = False) -> str:
    """A `.nemo` file for a spec (for loaders that only take paths, e.g. NeMo's pipeline builder)."""
    if not is_random(spec):
        return spec
    key = (arch_of(spec), eou)
    if key not in _saved:
        path = Path(tempfile.mkdtemp(prefix="nvasr-random-")) / f"{key[0]}.nemo"
        build(spec, eou=eou).save_to(str(path))
        _saved[key] = path
    return str(_saved[key])
