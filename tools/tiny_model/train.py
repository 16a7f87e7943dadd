"""Train a tiny model on CPU with a plain PyTorch loop (no Lightning), then save a .nemo.

    python tools/tiny_model/train.py --kind rnnt --steps 5000 --out tests/assets/tiny_rnnt.nemo
    python tools/tiny_model/train.py --kind eou --init tests/assets/tiny_rnnt.nemo --steps 2500 \
        --out tests/assets/tiny_eou.nemo

Why a custom loop: NeMo's CPU RNNT loss (numba) is unusably slow, so the loss is rnnt_loss.py (plus
CTC for the hybrid model); the model's own modules (preprocessor, encoder, decoder, joint) run as-is.
The EOU model starts from the trained RNNT model: its tokenizer is the same BPE with <EOU>, <EOB>
appended, so every weight carries over and only two new output rows are learnt from scratch.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpus import read_manifest  # noqa: E402
from model import EOU, build_model, eou_tokenizer, train_tokenizer  # noqa: E402
from rnnt_loss import rnnt_loss  # noqa: E402


def load_data(rows: list[dict], tok, eou_id: int | None, silent_lead: float = 0.0, seed: int = 0):
    """Audio as int16 arrays in memory + token ids (with <EOU> where each turn ends, for the EOU model;
    none at a mid-sentence pause).

    `silent_lead`: the share of clips given 0.1-0.6 s of digital silence in front. NeMo's stock
    streaming pipeline pads a stream's first features with digital-silence log-mels, which noisy
    synthetic clips never contain. (Our worker pads with zeros instead, as the encoder does in
    training; see CacheAwareRNNTAdapter._pad_stream_starts_like_training.)
    """
    data = []
    rng = random.Random(seed)
    for r in rows:
        x, _ = sf.read(r["audio_filepath"], dtype="int16")
        if silent_lead and rng.random() < silent_lead:
            x = np.concatenate([np.zeros(int(16000 * rng.uniform(0.1, 0.6)), dtype=np.int16), x])
        if eou_id is None:
            ids = tok.text_to_ids(r["text"])
        else:
            ends = r.get("eou_after") or [True] * len(r["segments"])
            ids = [i for s, end in zip(r["segments"], ends) for i in tok.text_to_ids(s[2]) + [eou_id] * end]
        data.append((x, ids))
    return data


def batches(data, batch_size: int, rng: random.Random):
    """Length-bucketed batches (sort within pools of 50 batches) in random order: little padding."""
    idx = list(range(len(data)))
    rng.shuffle(idx)
    out = []
    pool = batch_size * 50
    for p in range(0, len(idx), pool):
        chunk = sorted(idx[p:p + pool], key=lambda i: len(data[i][0]))
        out += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def collate(data, ids):
    xs, ys = [data[i][0] for i in ids], [data[i][1] for i in ids]
    audio = torch.zeros(len(ids), max(len(x) for x in xs))
    tgt = torch.zeros(len(ids), max(len(y) for y in ys), dtype=torch.long)
    for k, (x, y) in enumerate(zip(xs, ys)):
        audio[k, :len(x)] = torch.from_numpy(x.astype(np.float32) / 32768.0)
        tgt[k, :len(y)] = torch.tensor(y)
    return audio, torch.tensor([len(x) for x in xs]), tgt, torch.tensor([len(y) for y in ys])


def carry_weights(model, init_path: Path) -> None:
    """Copy an RNNT(+CTC) model's weights into the EOU model; remap the vocabulary-sized tensors.

    Old vocab: pieces 0..N-1, blank N. New: pieces 0..N-1, <EOU> N, <EOB> N+1, blank N+2.
    """
    from nemo.collections.asr.models import ASRModel

    src = ASRModel.restore_from(str(init_path), map_location="cpu").state_dict()
    dst = model.state_dict()
    for k, v in dst.items():
        if k not in src:
            continue
        s = src[k]
        if s.shape == v.shape:
            dst[k] = s.clone()
        elif k.startswith("joint.joint_net") and s.shape[0] + 2 == v.shape[0]:
            n = s.shape[0] - 1
            new = v.clone()
            new[:n], new[n + 2] = s[:n], s[n]
            dst[k] = new
        elif k.startswith("decoder.prediction.embed") and s.shape[0] + 2 == v.shape[0]:
            n = s.shape[0] - 1
            new = v.clone()
            new[:n], new[n + 2] = s[:n], s[n]
            dst[k] = new
        else:
            print("not carried:", k, tuple(s.shape), "->", tuple(v.shape))
    model.load_state_dict(dst)


def lr_at(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine down to 2 % of peak as `progress` goes 0 -> 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kind", choices=["rnnt", "eou"], required=True)
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--init", type=Path, help="EOU: start from this RNNT .nemo")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--minutes", type=float, default=0,
                    help="also stop (and end the cosine) after this many minutes: the CPU is shared, so a "
                         "time budget keeps training bounded; the card records the steps actually run")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ctc-weight", type=float, default=0.5)
    ap.add_argument("--vocab", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", help="train only this att_context, e.g. 70,1 (the EOU worker's); the saved "
                    "model keeps both. With [70,6] in training the model sees 560 ms ahead and learns to tell a "
                    "pause from the end by looking ahead, which it cannot do when streaming at [70,1].")
    ap.add_argument("--context-probs", help="sampling weights for the model's att_context_size list "
                    "[[70,6],[70,1],[70,0]], e.g. 0.3,0.3,0.4: fine-tuning a model to a new context ([70,0], 80 ms "
                    "chunks) while keeping the old ones; 0 leaves a context out")
    ap.add_argument("--silent-lead", type=float, default=0.0,
                    help="share of clips prefixed with 0.1-0.6 s of digital silence (see load_data)")
    ap.add_argument("--data", help="corpus folder(s) under work/, comma-separated (default: asr, or eou for --kind eou)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    # Precaution: subnormal floats (e.g. in Adam's second moments) are very slow on CPUs.
    torch.set_flush_denormal(True)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    np.random.seed(a.seed)
    asr_rows = read_manifest(a.work / "asr" / "train.jsonl")
    tok_dir = a.work / "tok_rnnt"
    if not (tok_dir / "tokenizer.model").exists():
        train_tokenizer([r["text"] for r in asr_rows], tok_dir, a.vocab)
    eou = a.kind == "eou"
    if eou:
        tok_dir = eou_tokenizer(tok_dir, a.work / "tok_eou")
    model = build_model(tok_dir, eou=eou)
    if a.init:
        carry_weights(model, a.init)
    if a.context:
        want = [int(v) for v in a.context.split(",")]
        model.encoder.att_context_probs = [float(list(c) == want) for c in model.encoder.att_context_size_all]
        assert sum(model.encoder.att_context_probs) == 1.0, model.encoder.att_context_size_all
    elif a.context_probs:
        probs = [float(v) for v in a.context_probs.split(",")]
        assert len(probs) == len(model.encoder.att_context_size_all), model.encoder.att_context_size_all
        model.encoder.att_context_probs = [p / sum(probs) for p in probs]
    tok = model.tokenizer
    eou_id = tok.token_to_id(EOU) if eou else None
    rows = [r for d in (a.data or ("eou" if eou else "asr")).split(",") for r in read_manifest(a.work / d / "train.jsonl")]
    t0 = time.time()
    data = load_data(rows, tok, eou_id, silent_lead=a.silent_lead, seed=a.seed)
    blank = model.decoder.blank_idx
    hours = sum(len(x) for x, _ in data) / 16000 / 3600
    print(f"{len(data)} utterances, {hours:.2f} h, vocab {tok.vocab_size}, blank {blank}, "
          f"params {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M, load {time.time() - t0:.0f}s",
          flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=1e-3)
    rng = random.Random(a.seed)
    order: list = []
    model.train()
    t0, step, hist = time.time(), 0, []
    progress = 0.0
    while progress < 1.0:
        if not order:
            order = batches(data, a.batch, rng)
        audio, alen, tgt, tlen = collate(data, order.pop())
        for g in opt.param_groups:
            g["lr"] = lr_at(step, progress, a.lr, a.warmup)
        enc, enc_len = model.forward(input_signal=audio, input_signal_length=alen)
        dec, _, _ = model.decoder(targets=tgt, target_length=tlen)
        joint = model.joint(encoder_outputs=enc, decoder_outputs=dec)
        loss_rnnt = rnnt_loss(joint, tgt, enc_len, tlen, blank=blank)
        loss = loss_rnnt
        loss_ctc = torch.zeros(())
        if not eou and a.ctc_weight > 0:
            lp = model.ctc_decoder(encoder_output=enc)
            loss_ctc = torch.nn.functional.ctc_loss(lp.transpose(0, 1), tgt, enc_len, tlen, blank=blank,
                                                    reduction="sum", zero_infinity=True) / len(tlen)
            loss = (1 - a.ctc_weight) * loss_rnnt + a.ctc_weight * loss_ctc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        progress = step / a.steps
        if a.minutes:
            progress = max(progress, (time.time() - t0) / 60 / a.minutes)
        hist.append((loss_rnnt.item(), loss_ctc.item()))
        if step % 50 == 0 or progress >= 1.0:
            m = np.mean(hist[-50:], axis=0)
            el = time.time() - t0
            print(f"step {step} rnnt {m[0]:.3f} ctc {m[1]:.3f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"{el / 60:.1f} min {step / el * 60:.0f} steps/min", flush=True)
        if step % 1000 == 0 and progress < 1.0:
            model.save_to(str(a.work / f"{a.kind}_ckpt.nemo"))
    minutes = (time.time() - t0) / 60
    model.eval()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(a.out))
    info = {"kind": a.kind, "steps": step, "init": str(a.init.name) if a.init else None, "batch": a.batch, "lr": a.lr, "warmup": a.warmup, "threads": a.threads, "data": a.data or ("eou" if eou else "asr"), "context": a.context, "context_probs": a.context_probs, "silent_lead": a.silent_lead,
            "train_minutes": round(minutes, 1), "utterances": len(data), "hours": round(hours, 2),
            "vocab": tok.vocab_size, "final_rnnt_loss": round(float(np.mean([h[0] for h in hist[-100:]])), 4),
            "seed": a.seed, "size_mb": round(a.out.stat().st_size / 1e6, 2)}
    (a.work / f"train_{a.kind}.json").write_text(json.dumps(info, indent=1))
    print("saved", a.out, info, flush=True)


if __name__ == "__main__":
    main()
