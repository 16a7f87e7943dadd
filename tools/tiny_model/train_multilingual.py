"""Train the tiny prompt-conditioned multilingual RNNT (tests/assets/tiny_multilingual.nemo) on CPU.

    python tools/tiny_model/multilingual.py                      # corpus (work/ml) + tests/assets/multilingual
    python tools/tiny_model/train_multilingual.py --init tests/assets/tiny_rnnt.nemo --minutes 35 \
        --out tests/assets/tiny_multilingual.nemo

The model is NeMo's `EncDecRNNTBPEModelWithPrompt` (the class of Nemotron 3.5 ASR): a one-hot language
prompt is concatenated to every encoder frame and projected back by `prompt_kernel`. Why it trains in
minutes: the encoder (the acoustics of espeak-ng) is carried over from the English tiny model and the
prompt kernel starts as an exact identity on the encoder path (see `identity_prompt_kernel`), so at step 0
the model is the English model; only the new vocabulary, the other languages and the prompt are learnt.
`auto`: a share of clips is trained with the `auto` prompt and the language tag (`<es-ES>`) as the last
token, which is what Nemotron 3.5 does in auto mode (it appends the detected language as a tag).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import open_dict

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpus import read_manifest  # noqa: E402
from model import model_config, train_tokenizer  # noqa: E402
from multilingual import LOCALES  # noqa: E402
from rnnt_loss import rnnt_loss  # noqa: E402
from train import batches, collate, load_data, lr_at  # noqa: E402

AUTO = "auto"
CONTEXTS = [[70, 6], [68, 3], [70, 1], [70, 0]]  # 560 / 320 / 160 / 80 ms (chunked_limited: left % (right+1) == 0)
NUM_PROMPTS = 16


def tag(locale: str) -> str:
    """The language tag a prompt-`auto` transcript ends with."""
    return f"<{locale}>"


def build_prompt_model(tok_dir: Path):
    from nemo.collections.asr.models.rnnt_bpe_models_prompt import EncDecRNNTBPEModelWithPrompt

    cfg = model_config(tok_dir, hybrid=False)
    with open_dict(cfg):
        cfg.encoder.att_context_size = CONTEXTS
        cfg.model_defaults.num_prompts = NUM_PROMPTS
        cfg.model_defaults.prompt_dictionary = {loc: i for i, loc in enumerate([*LOCALES, AUTO])}
        cfg.model_defaults.initialize_prompt_feature = True
    return EncDecRNNTBPEModelWithPrompt(cfg=cfg)


def carry_encoder(model, init_path: Path) -> None:
    """Copy every same-shaped tensor of the English model (encoder, LSTM, joint projections)."""
    from nemo.collections.asr.models import ASRModel

    src = ASRModel.restore_from(str(init_path), map_location="cpu").state_dict()
    dst = model.state_dict()
    carried = [k for k, v in dst.items() if k in src and src[k].shape == v.shape]
    for k in carried:
        dst[k] = src[k].clone()
    model.load_state_dict(dst)
    print(f"carried {len(carried)} tensors; new: {sorted(set(dst) - set(carried))}", flush=True)


@torch.no_grad()
def identity_prompt_kernel(model) -> None:
    """prompt_kernel = Linear(D+P, 2D) -> ReLU -> Linear(2D, D); set it to relu(x) - relu(-x) = x.

    The prompt columns start at zero, so the untrained prompt changes nothing and training decides how
    much the language prompt steers the output.
    """
    first, last = model.prompt_kernel[0], model.prompt_kernel[2]
    d = last.out_features
    eye = torch.eye(d)
    first.weight.zero_()
    first.bias.zero_()
    first.weight[:d, :d] = eye
    first.weight[d:, :d] = -eye
    last.weight.copy_(torch.cat([eye, -eye], dim=1))
    last.bias.zero_()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--init", type=Path, help="English .nemo whose encoder to start from")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--minutes", type=float, default=0, help="also stop (and end the cosine) after this long")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--vocab", type=int, default=160)
    ap.add_argument("--auto-share", type=float, default=0.25, help="share of clips trained with the auto prompt")
    ap.add_argument("--seed", type=int, default=2121)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    rows = read_manifest(a.work / "ml" / "train.jsonl")
    tok_dir = a.work / "tok_ml"
    if not (tok_dir / "tokenizer.model").exists():
        train_tokenizer([r["text"] for r in rows], tok_dir, a.vocab, user_symbols=tuple(tag(x) for x in LOCALES))
    model = build_prompt_model(tok_dir)
    if a.init:
        carry_encoder(model, a.init)
    identity_prompt_kernel(model)
    tok, prompts = model.tokenizer, model.cfg.model_defaults.prompt_dictionary
    data = load_data(rows, tok, None, seed=a.seed)
    # Per clip: the prompt index and the targets (auto clips end with their language tag).
    # The tag is one piece glued to the last word (no "▁" piece before it): decoded text "hola<es-ES>".
    prompt_of, auto_ids = [], {loc: [tok.token_to_id(tag(loc))] for loc in LOCALES}
    for i, r in enumerate(rows):
        if rng.random() < a.auto_share:
            prompt_of.append(prompts[AUTO])
            data[i] = (data[i][0], data[i][1] + auto_ids[r["lang"]])
        else:
            prompt_of.append(prompts[r["lang"]])
    assert all(v[0] != tok.token_to_id("<unk>") for v in auto_ids.values()), auto_ids
    blank = model.decoder.blank_idx
    hours = sum(len(x) for x, _ in data) / 16000 / 3600
    print(f"{len(data)} utterances, {hours:.2f} h, vocab {tok.vocab_size}, blank {blank}, "
          f"params {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=1e-3)
    order: list = []
    model.train()
    t0, step, hist, progress = time.time(), 0, [], 0.0
    while progress < 1.0:
        if not order:
            order = batches(data, a.batch, rng)
        ids = order.pop()
        audio, alen, tgt, tlen = collate(data, ids)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, progress, a.lr, a.warmup)
        enc, enc_len = model.forward(input_signal=audio, input_signal_length=alen,
                                     prompt_indices=torch.tensor([prompt_of[i] for i in ids]))
        dec, _, _ = model.decoder(targets=tgt, target_length=tlen)
        loss = rnnt_loss(model.joint(encoder_outputs=enc, decoder_outputs=dec), tgt, enc_len, tlen, blank=blank)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        progress = step / a.steps
        if a.minutes:
            progress = max(progress, (time.time() - t0) / 60 / a.minutes)
        hist.append(loss.item())
        if step % 50 == 0 or progress >= 1.0:
            el = time.time() - t0
            print(f"step {step} rnnt {np.mean(hist[-50:]):.3f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"{el / 60:.1f} min {step / el * 60:.0f} steps/min", flush=True)
        if step % 500 == 0 and progress < 1.0:
            model.save_to(str(a.work / "ml_ckpt.nemo"))
    model.eval()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(a.out))
    info = {"steps": step, "init": a.init.name if a.init else None, "batch": a.batch, "lr": a.lr,
            "warmup": a.warmup, "threads": a.threads, "auto_share": a.auto_share, "contexts": CONTEXTS,
            "train_minutes": round((time.time() - t0) / 60, 1), "utterances": len(data), "hours": round(hours, 2),
            "vocab": tok.vocab_size, "final_rnnt_loss": round(float(np.mean(hist[-100:])), 4), "seed": a.seed,
            "size_mb": round(a.out.stat().st_size / 1e6, 2)}
    (a.work / "train_multilingual.json").write_text(json.dumps(info, indent=1))
    print("saved", a.out, info, flush=True)


if __name__ == "__main__":
    main()
