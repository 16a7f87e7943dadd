"""The tiny models' training recipe: sizes and training settings on top of the project's one
model builder (services/tiny_model.py), which tests, benchmarks and `random:` specs use too.

Architecture (why): the recipe measured on a 2-core CPU in the project brief -- d_model 128 x 4 layers
keeps the .nemo under 10 MB; chunked_limited attention with [[70,6],[70,1],[70,0]] trains the 560, 160
and 80 ms chunk sizes the workers serve; causal convolutions and causal 8x dw_striding subsampling make
it cache-aware; `normalize: NA` because per-feature normalisation is not causal.
"""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for services/
from services import tiny_model as builder  # noqa: E402

EOU, EOB = builder.EOU_PIECES
ATT_CONTEXT = [[70, 6], [70, 1], [70, 0]]  # 560, 160 and 80 ms chunks
# SentencePiece settings of the recipe (the builder's defaults are for word-list tokenizers).
TOKENIZER_OPTIONS = dict(unk_id=0, pad_id=-1, num_threads=2, split_digits=False, hard_vocab_limit=True,
                         seed_sentencepiece_size=100000)
OPTIM = {"name": "adamw", "lr": 2e-3, "betas": [0.9, 0.98], "weight_decay": 1e-3}


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int, user_symbols: tuple[str, ...] = ()) -> Path:
    """SentencePiece BPE on the training sentences -> out_dir/tokenizer.model (+ vocab.txt for NeMo).

    `user_symbols`: pieces kept whole (e.g. a multilingual model's language tags).
    """
    return builder.train_tokenizer(out_dir, vocab_size, texts=texts, user_defined_symbols=list(user_symbols),
                                   **TOKENIZER_OPTIONS)


def eou_tokenizer(src_dir: Path, out_dir: Path) -> Path:
    """Copy a tokenizer and append <EOU>, <EOB> as its LAST two pieces (what EncDecRNNTBPEEOUModel needs);
    ids of all existing pieces stay the same, so the RNNT model's weights carry over."""
    import sentencepiece as spm

    builder.add_eou_pieces(src_dir, out_dir)
    sp = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    n = sp.get_piece_size()
    assert sp.id_to_piece(n - 2) == EOU and sp.id_to_piece(n - 1) == EOB
    assert sp.encode("yes <EOU>")[-1] == n - 2
    return out_dir


def model_config(tokenizer_dir: Path, hybrid: bool = True, d_model: int = 128, n_layers: int = 4):
    """OmegaConf model config (NeMo 3.0 FastConformer streaming, hybrid RNNT+CTC or, for EOU, RNNT only)."""
    return OmegaConf.create(builder.model_config(
        tokenizer_dir, d_model=d_model, n_layers=n_layers, n_heads=4, att_context_size=ATT_CONTEXT,
        eou=not hybrid, hybrid=hybrid, ff_expansion_factor=4, subsampling_conv_channels=64, pred_hidden=128,
        dropout=0.1, dither=1e-5, optim=OPTIM, validation_batch_size=16))


def build_model(tokenizer_dir: Path, eou: bool):
    """Instantiate the NeMo model class, in training mode: hybrid RNNT+CTC, or the EOU RNNT model."""
    cls = builder.model_class(eou=eou, hybrid=not eou)
    return cls(cfg=model_config(tokenizer_dir, hybrid=not eou))
