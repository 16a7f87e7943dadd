"""Tokenizers and model configs for the tiny cache-aware streaming FastConformer models.

Architecture (why): the recipe measured on a 2-core CPU in the project brief -- d_model 128 x 4 layers
keeps the .nemo under 10 MB; chunked_limited attention with [[70,6],[70,1]] trains both the 560 ms and
the 160 ms chunk sizes the workers serve; causal convolutions and causal 8x dw_striding subsampling make
it cache-aware; `normalize: NA` because per-feature normalisation is not causal.
"""
from __future__ import annotations

import struct
from pathlib import Path

import sentencepiece as spm
from omegaconf import OmegaConf

EOU, EOB = "<EOU>", "<EOB>"


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int, user_symbols: tuple[str, ...] = ()) -> Path:
    """SentencePiece BPE on the training sentences -> out_dir/tokenizer.model (+ vocab.txt for NeMo).

    `user_symbols`: pieces kept whole (e.g. a multilingual model's language tags).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "text.txt"
    corpus.write_text("\n".join(texts) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out_dir / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1, num_threads=2,
        split_digits=False, hard_vocab_limit=True, seed_sentencepiece_size=100000, minloglevel=2,
        user_defined_symbols=list(user_symbols))
    _write_vocab(out_dir)
    return out_dir


def _write_vocab(out_dir: Path) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    (out_dir / "vocab.txt").write_text("".join(sp.id_to_piece(i) + "\n" for i in range(sp.get_piece_size())))


def _piece_bytes(piece: str, score: float = 0.0, ptype: int = 4) -> bytes:
    """Serialized ModelProto.pieces entry (field 1) for one piece; ptype 4 = USER_DEFINED."""
    p = piece.encode()
    inner = b"\x0a" + bytes([len(p)]) + p + b"\x15" + struct.pack("<f", score) + b"\x18" + bytes([ptype])
    return b"\x0a" + bytes([len(inner)]) + inner


def eou_tokenizer(src_dir: Path, out_dir: Path) -> Path:
    """Copy a tokenizer and append <EOU>, <EOB> as its LAST two pieces (what EncDecRNNTBPEEOUModel needs).

    Appending repeated-field entries to the end of a serialized protobuf message appends them to the
    list, so no protobuf runtime is needed (the wheel's generated module is version-incompatible here).
    Ids of all existing pieces stay the same, so the RNNT model's weights carry over.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    data = (src_dir / "tokenizer.model").read_bytes() + _piece_bytes(EOU) + _piece_bytes(EOB)
    (out_dir / "tokenizer.model").write_bytes(data)
    _write_vocab(out_dir)
    sp = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    n = sp.get_piece_size()
    assert sp.id_to_piece(n - 2) == EOU and sp.id_to_piece(n - 1) == EOB
    assert sp.encode("yes <EOU>")[-1] == n - 2
    return out_dir


def model_config(tokenizer_dir: Path, hybrid: bool = True, d_model: int = 128, n_layers: int = 4):
    """OmegaConf model config (NeMo 3.0 FastConformer streaming, hybrid RNNT+CTC or RNNT only)."""
    cfg = {
        "sample_rate": 16000,
        "log_prediction": False,
        "model_defaults": {"enc_hidden": d_model, "pred_hidden": 128, "joint_hidden": 128},
        "compute_eval_loss": False,
        "tokenizer": {"dir": str(tokenizer_dir), "type": "bpe"},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000, "normalize": "NA", "window_size": 0.025, "window_stride": 0.01,
            "window": "hann", "features": 80, "n_fft": 512, "log": True, "frame_splicing": 1,
            "dither": 1e-5, "pad_to": 0, "pad_value": 0.0},
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": 80, "feat_out": -1, "n_layers": n_layers, "d_model": d_model,
            "subsampling": "dw_striding", "subsampling_factor": 8, "subsampling_conv_channels": 64,
            "causal_downsampling": True, "ff_expansion_factor": 4, "self_attention_model": "rel_pos",
            "n_heads": 4, "att_context_size": [[70, 6], [70, 1]], "att_context_probs": None,
            "att_context_style": "chunked_limited", "xscaling": True, "untie_biases": True,
            "pos_emb_max_len": 5000, "conv_kernel_size": 9, "conv_norm_type": "layer_norm",
            "conv_context_size": "causal", "dropout": 0.1, "dropout_pre_encoder": 0.1,
            "dropout_emb": 0.0, "dropout_att": 0.1},
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
            "random_state_sampling": False, "blank_as_pad": True, "vocab_size": -1,
            "prednet": {"pred_hidden": 128, "pred_rnn_layers": 1, "t_max": None, "dropout": 0.1}},
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None,
            "preserve_memory": False, "fuse_loss_wer": False, "fused_batch_size": 4,
            "num_classes": -1, "vocabulary": [],
            "jointnet": {"encoder_hidden": d_model, "pred_hidden": 128, "joint_hidden": 128,
                         "activation": "relu", "dropout": 0.1}},
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
        "loss": {"loss_name": "default", "warprnnt_numba_kwargs": {"fastemit_lambda": 0.0, "clamp": -1.0}},
        "optim": {"name": "adamw", "lr": 2e-3, "betas": [0.9, 0.98], "weight_decay": 1e-3},
    }
    if hybrid:
        cfg["aux_ctc"] = {
            "ctc_loss_weight": 0.5, "use_cer": False, "ctc_reduction": "mean_batch",
            "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": None,
                        "num_classes": -1, "vocabulary": []},
            "decoding": {"strategy": "greedy"}}
        # transcribe() needs a validation_ds section with a `shuffle` key (stub, no manifest).
        cfg["validation_ds"] = {"manifest_filepath": None, "sample_rate": 16000, "batch_size": 16,
                                "shuffle": False}
    else:
        cfg["validation_ds"] = None  # EncDecRNNTBPEEOUModel requires it
    return OmegaConf.create(cfg)


def build_model(tokenizer_dir: Path, eou: bool):
    """Instantiate the NeMo model class: hybrid RNNT+CTC, or the EOU RNNT model."""
    if eou:
        from nemo.collections.asr.models.asr_eou_models import EncDecRNNTBPEEOUModel
        return EncDecRNNTBPEEOUModel(cfg=model_config(tokenizer_dir, hybrid=False))
    from nemo.collections.asr.models import EncDecHybridRNNTCTCBPEModel
    return EncDecHybridRNNTCTCBPEModel(cfg=model_config(tokenizer_dir, hybrid=True))
