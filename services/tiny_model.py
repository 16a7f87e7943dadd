"""The one builder of small cache-aware models: tokenizers and configs, for tests, benchmarks
and the training recipe in tools/tiny_model (which calls these with its own sizes).

No pretrained weights are reachable offline, so the engine is exercised with models of the
production architecture (cache-aware FastConformer + RNNT, chunked_limited attention,
causal convolutions) shrunk to a few layers. A SentencePiece tokenizer is trained on a
word list (or given sentences) on the spot. Everything is deterministic for a given seed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

WORDS = (
    "yes no hello please order pizza weather tomorrow schedule meeting one two three four five "
    "six seven eight nine zero what is the time call me at noon today cancel book table for "
    "with cheese large small coffee tea thanks goodbye morning evening"
).split()

EOU_PIECES = ["<EOU>", "<EOB>"]


def train_tokenizer(
    out_dir: str | Path, vocab_size: int = 64, eou: bool = False, texts: Optional[list[str]] = None, **options
) -> Path:
    """Train a BPE SentencePiece model on `texts` (default: WORDS) into out_dir/tokenizer.model
    (+ vocab.txt for NeMo); with `eou`, <EOU>/<EOB> become the last two pieces. `options` go
    to SentencePieceTrainer (the training recipe sets a hard vocabulary limit, threads...)."""
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    lines = texts if texts is not None else [" ".join(WORDS[i : i + 5]) for i in range(0, len(WORDS), 3)] + WORDS
    corpus.write_text("\n".join(lines) + "\n")
    settings = dict(
        input=str(corpus),
        model_prefix=str(out_dir / "tokenizer"),
        vocab_size=vocab_size - (len(EOU_PIECES) if eou else 0),
        model_type="bpe",
        character_coverage=1.0,
        bos_id=-1,
        eos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    spm.SentencePieceTrainer.train(**{**settings, **options})
    if eou:
        _append_pieces(out_dir / "tokenizer.model", EOU_PIECES)
    _write_vocab(out_dir)
    return out_dir


def add_eou_pieces(src_dir: str | Path, out_dir: str | Path) -> Path:
    """A copy of a tokenizer with <EOU>, <EOB> as its LAST two pieces (what
    EncDecRNNTBPEEOUModel needs). Every existing piece keeps its id, so an RNNT model's
    weights carry over to the EOU model."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes((Path(src_dir) / "tokenizer.model").read_bytes())
    _append_pieces(out_dir / "tokenizer.model", EOU_PIECES)
    _write_vocab(out_dir)
    return out_dir


def _write_vocab(out_dir: Path) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    (out_dir / "vocab.txt").write_text("".join(sp.id_to_piece(i) + "\n" for i in range(sp.get_piece_size())))


def _append_pieces(model_path: Path, pieces: list[str]) -> None:
    """Append user-defined pieces at the END of a SentencePiece model (EOU models need this).

    Written at the protobuf wire level: a repeated field may be appended after later fields,
    and this avoids sentencepiece_model_pb2, which clashes with the installed protobuf runtime.
    """
    import struct

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    data = bytearray(model_path.read_bytes())
    for piece in pieces:
        raw = piece.encode()
        # SentencePiece{piece=1:string, score=2:float, type=3:enum USER_DEFINED(4)}
        body = b"\x0a" + varint(len(raw)) + raw + b"\x15" + struct.pack("<f", 0.0) + b"\x18\x04"
        data += b"\x0a" + varint(len(body)) + body  # ModelProto.pieces = field 1
    model_path.write_bytes(bytes(data))


def model_config(
    tokenizer_dir: str | Path,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 2,
    att_context_size: Optional[list[list[int]]] = None,
    eou: bool = False,
    ff_expansion_factor: int = 2,
    subsampling_conv_channels: int = 32,
    pred_hidden: Optional[int] = None,
    pred_rnn_layers: int = 1,
    n_mels: int = 80,
    n_fft: int = 512,
    window_size: float = 0.025,
    hybrid: bool = False,
    dropout: float = 0.0,
    dither: float = 0.0,
    optim: Optional[dict] = None,
    validation_batch_size: int = 1,
    use_bias: bool = True,
    xscaling: bool = True,
) -> dict:
    """A cache-aware FastConformer-RNNT config in the shape of the production models.

    `hybrid` adds NeMo's auxiliary CTC head (EncDecHybridRNNTCTCBPEModel); `dropout`,
    `dither` and `optim` are for training (tools/tiny_model)."""
    att_context_size = att_context_size or [[70, 13], [70, 6], [70, 1], [70, 0]]
    pred_hidden = pred_hidden or d_model
    sample_rate = 16000
    cfg = {
        "sample_rate": sample_rate,
        "log_prediction": False,
        "compute_eval_loss": False,
        "model_defaults": {"enc_hidden": d_model, "pred_hidden": pred_hidden, "joint_hidden": pred_hidden},
        "tokenizer": {"dir": str(tokenizer_dir), "type": "bpe"},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": sample_rate,
            "normalize": "NA",
            "window_size": window_size,
            "window_stride": 0.01,
            "window": "hann",
            "features": n_mels,
            "n_fft": n_fft,
            "log": True,
            "frame_splicing": 1,
            "dither": dither,
            "pad_to": 0,
            "pad_value": 0.0,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": n_mels,
            "feat_out": -1,
            "n_layers": n_layers,
            "d_model": d_model,
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": subsampling_conv_channels,
            "causal_downsampling": True,
            "ff_expansion_factor": ff_expansion_factor,
            "self_attention_model": "rel_pos",
            "n_heads": n_heads,
            "att_context_size": att_context_size,
            "att_context_probs": None,
            "att_context_style": "chunked_limited",
            "xscaling": xscaling,  # scale attention inputs by sqrt(d_model)
            "use_bias": use_bias,  # biases in every Linear/Conv1d of the conformer layers
            "untie_biases": True,
            "pos_emb_max_len": 5000,
            "conv_kernel_size": 9,
            "conv_norm_type": "layer_norm",
            "conv_context_size": "causal",
            "dropout": dropout,
            "dropout_pre_encoder": dropout,
            "dropout_emb": 0.0,
            "dropout_att": dropout,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "normalization_mode": None,
            "random_state_sampling": False,
            "blank_as_pad": True,
            "prednet": {"pred_hidden": pred_hidden, "pred_rnn_layers": pred_rnn_layers, "t_max": None, "dropout": dropout},
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "log_softmax": None,
            "preserve_memory": False,
            "fuse_loss_wer": False,
            "jointnet": {"joint_hidden": pred_hidden, "activation": "relu", "dropout": dropout},
        },
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
        "loss": {"loss_name": "default"},
        "optim": optim or {"name": "adamw", "lr": 1e-3},
        "train_ds": None,
        "test_ds": None,
        # transcribe() needs a validation_ds with a `shuffle` key (a stub); the EOU model needs none
        "validation_ds": None if eou else {
            "manifest_filepath": None, "sample_rate": sample_rate, "batch_size": validation_batch_size, "shuffle": False},
    }
    if hybrid:
        cfg["aux_ctc"] = {
            "ctc_loss_weight": 0.5, "use_cer": False, "ctc_reduction": "mean_batch",
            "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": None,
                        "num_classes": -1, "vocabulary": []},
            "decoding": {"strategy": "greedy"}}
    return cfg


def model_class(eou: bool = False, hybrid: bool = False):
    """The NeMo class for a config: the EOU RNNT model, hybrid RNNT+CTC, or plain RNNT."""
    if eou:
        from nemo.collections.asr.models.asr_eou_models import EncDecRNNTBPEEOUModel

        return EncDecRNNTBPEEOUModel
    if hybrid:
        from nemo.collections.asr.models import EncDecHybridRNNTCTCBPEModel

        return EncDecHybridRNNTCTCBPEModel
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    return EncDecRNNTBPEModel


def build_model(
    tokenizer_dir: str | Path, seed: int = 0, eou: bool = False, prompts: Optional[tuple[str, ...]] = None,
    num_prompts: int = 128, **config_kwargs
):
    """Instantiate a random-weight model (RNNT, or the EOU variant) in eval mode.

    `prompts`: locales of a language-prompted model (NeMo's EncDecRNNTBPEModelWithPrompt, as
    Nemotron 3.5 ASR), prompt index = position."""
    import torch
    from omegaconf import OmegaConf

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cls = model_class(eou, config_kwargs.get("hybrid", False))
    torch.manual_seed(seed)
    cfg = model_config(tokenizer_dir, eou=eou, **config_kwargs)
    if prompts:
        from nemo.collections.asr.models.rnnt_bpe_models_prompt import EncDecRNNTBPEModelWithPrompt as cls

        cfg["model_defaults"].update(num_prompts=num_prompts, prompt_dictionary={p: i for i, p in enumerate(prompts)},
                                     initialize_prompt_feature=True)
    model = cls(cfg=OmegaConf.create(cfg))
    return model.eval()


def save_tiny_model(path: str | Path, workdir: str | Path, seed: int = 0, eou: bool = False, **kw) -> Path:
    """Build a random tiny model and write it as a `.nemo` file (what the servers load)."""
    tok = train_tokenizer(Path(workdir) / ("tok_eou" if eou else "tok"), eou=eou)
    model = build_model(tok, seed=seed, eou=eou, **kw)
    model.save_to(str(path))
    return Path(path)
