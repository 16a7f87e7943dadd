"""`random:` specs are the production shapes (model cards, docs/gpu.md), so load and GPU figures
measured with them stand for the real models: no biases where the real model has none."""

from __future__ import annotations

import torch

from services import random_models
from services.tiny_model import model_config


def _encoder_cfg(arch: str) -> dict:
    params = {k: v for k, v in random_models.ARCHS[arch].items() if k not in ("vocab", "joint_scale", "blank_bias")}
    return model_config("unused", **params)["encoder"]


def test_nemotron_0_6b_is_24_by_1024_without_biases():
    enc = _encoder_cfg("nemotron-0.6b")
    assert (enc["n_layers"], enc["d_model"], enc["n_heads"], enc["ff_expansion_factor"]) == (24, 1024, 8, 4)
    assert enc["use_bias"] is False and enc["feat_in"] == 128
    assert enc["att_context_size"] == [[70, 13], [70, 6], [70, 1], [70, 0]]


def test_parakeet_eou_120m_is_17_by_512_at_70_1_without_biases_or_xscaling():
    """Built for real (the EOU class, as parakeet-realtime loads it): the encoder has no bias in
    any conformer Linear/Conv1d, no input scaling, and only the [70,1] context."""
    model = random_models.build("random:parakeet-eou-120m", eou=True)
    enc = model.encoder
    assert type(model).__name__ == "EncDecRNNTBPEEOUModel"
    assert (len(enc.layers), enc.d_model) == (17, 512) and enc.att_context_size_all == [[70, 1]]
    assert enc.xscale is None
    layer_modules = [m for layer in enc.layers for m in layer.modules()]
    with_bias = [m for m in layer_modules
                 if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d)) and m.bias is not None]
    assert not with_bias and any(isinstance(m, torch.nn.Linear) for m in layer_modules)
    encoder_params = sum(p.numel() for p in enc.parameters())
    assert 95e6 < encoder_params < 125e6, encoder_params  # a "120M" model's encoder
