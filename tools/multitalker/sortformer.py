"""Tiny streaming Sortformer: config built in code, chunked streaming through NeMo's own step, DER.

The committed model is a `SortformerEncLabelModel` (NeMo 3.0.0) with `streaming_mode` and
`async_streaming` on, so every batch row carries its own speaker cache / FIFO and sessions at different
stages can share one `forward_streaming_step` call. Audio is never normalised (the streaming path does
not; the offline `forward` divides by the batch-wide max, so training here calls the preprocessor,
`frontend_encoder` and `forward_infer` directly on un-normalised audio with random gain instead).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from omegaconf import OmegaConf

N_SPK = 4


def model_config(d_model: int = 96, n_layers: int = 3, tf_layers: int = 2, chunk_len: int = 6,
                 right_context: int = 1, spkcache_len: int = 63, fifo_len: int = 63) -> OmegaConf:
    """SortformerEncLabelModel config: FastConformer (8x subsampling, 80 ms frames) + Transformer, 4 speakers."""
    cfg = {
        "sample_rate": 16000, "max_num_of_spks": N_SPK, "streaming_mode": True, "async_streaming": True,
        "pil_weight": 0.5, "ats_weight": 0.5, "max_batch_dur": 0,
        "model_defaults": {"fc_d_model": d_model, "tf_d_model": d_model},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000, "normalize": "NA", "window_size": 0.025, "window_stride": 0.01,
            "window": "hann", "features": 80, "n_fft": 512, "log": True, "frame_splicing": 1,
            "dither": 1e-5, "pad_to": 0, "pad_value": 0.0},
        "sortformer_modules": {
            "_target_": "nemo.collections.asr.modules.sortformer_modules.SortformerModules",
            "num_spks": N_SPK, "dropout_rate": 0.1, "fc_d_model": d_model, "tf_d_model": d_model,
            "subsampling_factor": 8, "spkcache_len": spkcache_len, "fifo_len": fifo_len,
            "chunk_len": chunk_len, "spkcache_update_period": max(chunk_len, fifo_len // 2),
            "chunk_left_context": 1, "chunk_right_context": right_context, "spkcache_sil_frames_per_spk": 3},
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": 80, "feat_out": -1, "n_layers": n_layers, "d_model": d_model,
            "subsampling": "dw_striding", "subsampling_factor": 8, "subsampling_conv_channels": 64,
            "ff_expansion_factor": 4, "self_attention_model": "rel_pos", "n_heads": 4,
            "att_context_size": [-1, -1], "xscaling": True, "untie_biases": True, "pos_emb_max_len": 5000,
            "conv_kernel_size": 9, "conv_norm_type": "batch_norm", "dropout": 0.1, "dropout_pre_encoder": 0.1,
            "dropout_emb": 0.0, "dropout_att": 0.1},
        "transformer_encoder": {
            "_target_": "nemo.collections.asr.modules.transformer.transformer_encoders.TransformerEncoder",
            "num_layers": tf_layers, "hidden_size": d_model, "inner_size": 4 * d_model, "num_attention_heads": 4,
            "attn_score_dropout": 0.1, "attn_layer_dropout": 0.1, "ffn_dropout": 0.1, "hidden_act": "relu",
            "pre_ln": False, "pre_ln_final_layer_norm": True},
        "loss": {"_target_": "nemo.collections.asr.losses.bce_loss.BCELoss", "weight": None,
                 "reduction": "mean"},
        "optim": {"name": "adamw", "lr": 1e-3},
    }
    return OmegaConf.create(cfg)


def build(**kw):
    from nemo.collections.asr.models import SortformerEncLabelModel

    return SortformerEncLabelModel(cfg=model_config(**kw))


def load(path, **overrides):
    """Restore a .nemo on CPU, eval mode; `overrides` set streaming params (chunk_len, fifo_len, ...)."""
    from nemo.collections.asr.models import SortformerEncLabelModel

    m = SortformerEncLabelModel.restore_from(str(path), map_location="cpu").eval()
    for k, v in overrides.items():
        setattr(m.sortformer_modules, k, v)
    return m


def features(model, audio: np.ndarray) -> torch.Tensor:
    """Log-mel (1, 80, T) of un-normalised audio, as the streaming path sees it."""
    x = torch.as_tensor(audio, dtype=torch.get_default_dtype())[None]
    with torch.no_grad():
        f, flen = model.preprocessor(input_signal=x, length=torch.tensor([x.shape[1]]))
    return f[:, :, : int(flen[0])]


def chunks(model, feats: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, int, int]]:
    """One session's streaming chunks (features (1, T, 80), lengths, left_offset, right_offset)."""
    length = torch.tensor([feats.shape[2]])
    loader = model.sortformer_modules.streaming_feat_loader(feats, length, torch.zeros(1, dtype=torch.long))
    return [(c, n, lc, rc) for _, c, n, lc, rc in loader]


def stream_one(model, audio: np.ndarray) -> np.ndarray:
    """Streaming speaker activity (frames, 4) of one session, chunk by chunk through forward_streaming_step."""
    f = features(model, audio)
    state = model.sortformer_modules.init_streaming_state(1, async_streaming=True, device=f.device)
    out = torch.zeros((1, 0, N_SPK), dtype=f.dtype)
    with torch.no_grad():
        for c, n, lc, rc in chunks(model, f):
            state, out = model.forward_streaming_step(c, n, state, out, left_offset=lc, right_offset=rc)
    n_frames = math.ceil(f.shape[2] / 8)
    return out[0, :n_frames].numpy()


def der(pred: np.ndarray, ref: np.ndarray, threshold: float = 0.5) -> tuple[float, dict]:
    """Frame DER (collar 0, overlap counted) with the best speaker permutation.

    pred: (frames, >=2) probabilities; ref: (frames, 2) 0/1. Missed + false alarm + confusion over the
    reference speaker time, as in md-eval at frame resolution: for each frame, miss = max(0, nref - nsys),
    fa = max(0, nsys - nref), conf = min(nref, nsys) - correct. Returns (der, counts).
    """
    n = min(len(pred), len(ref))
    sys_ = (pred[:n] > threshold).astype(int)
    ref = ref[:n].astype(int)
    k = max(sys_.shape[1], ref.shape[1])
    sys_ = np.pad(sys_, ((0, 0), (0, k - sys_.shape[1])))
    ref = np.pad(ref, ((0, 0), (0, k - ref.shape[1])))
    nref, nsys = ref.sum(1), sys_.sum(1)
    best = None
    for perm in itertools.permutations(range(k)):
        correct = (ref * sys_[:, list(perm)]).sum(1)
        c = {"miss": int(np.maximum(0, nref - nsys).sum()), "fa": int(np.maximum(0, nsys - nref).sum()),
             "conf": int((np.minimum(nref, nsys) - correct).sum()), "ref": int(nref.sum())}
        if best is None or c["conf"] < best["conf"]:
            best = c
    return (best["miss"] + best["fa"] + best["conf"]) / max(1, best["ref"]), best


STATE_FIELDS = ("spkcache", "spkcache_lengths", "spkcache_preds", "fifo", "fifo_lengths", "fifo_preds",
                "mean_sil_emb", "n_sil_frames")


def new_state(model, dtype=None):
    """A one-row async streaming state (every field has batch dim 1; fifo_preds filled so rows stack)."""
    st = model.sortformer_modules.init_streaming_state(1, async_streaming=True, device=torch.device("cpu"))
    m = model.sortformer_modules
    st.fifo_preds = torch.zeros((1, m.fifo_len, m.n_spk))
    if dtype is not None:
        for k in STATE_FIELDS:
            v = getattr(st, k)
            if v.is_floating_point():
                setattr(st, k, v.to(dtype))
    return st


def stack_states(states):
    """Rows of several sessions -> one batched state (async streaming: every field is per row)."""
    from nemo.collections.asr.modules.sortformer_modules import StreamingSortformerState

    out = StreamingSortformerState()
    for k in STATE_FIELDS:
        setattr(out, k, torch.cat([getattr(s, k) for s in states], 0))
    return out


def split_state(state, n: int):
    """A batched state -> n one-row states (views cloned, so later calls cannot alias them)."""
    from nemo.collections.asr.modules.sortformer_modules import StreamingSortformerState

    rows = []
    for i in range(n):
        s = StreamingSortformerState()
        for k in STATE_FIELDS:
            setattr(s, k, getattr(state, k)[i: i + 1].clone())
        rows.append(s)
    return rows


def step_group(model, states, chunk_list):
    """ONE forward_streaming_step over several sessions whose chunks share (left, right offset, length).

    chunk_list: [(features (1, T, 80), lengths (1,), lc, rc)]; returns (new states, [(chunk_len, 4) preds]).
    """
    lc, rc = chunk_list[0][2], chunk_list[0][3]
    assert all(c[2] == lc and c[3] == rc and c[0].shape == chunk_list[0][0].shape for c in chunk_list)
    feats = torch.cat([c[0] for c in chunk_list], 0)
    lens = torch.cat([c[1] for c in chunk_list], 0)
    empty = torch.zeros((len(states), 0, N_SPK), dtype=feats.dtype)
    with torch.no_grad():
        st, preds = model.forward_streaming_step(feats, lens, stack_states(states), empty,
                                                 left_offset=lc, right_offset=rc)
    # valid output frames of a row: its pre-encoded length (ceil(T / 8)) less the left context frames
    n_out = [min(preds.shape[1], math.ceil(int(c[1][0]) / 8) - round(lc / 8)) for c in chunk_list]
    return split_state(st, len(states)), [preds[i, : n_out[i]] for i in range(len(states))]
