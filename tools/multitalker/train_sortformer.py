"""Train the tiny streaming Sortformer on CPU (plain PyTorch loop, seeded), save a .nemo.

Forward used for training: preprocessor -> frontend_encoder -> forward_infer on UN-normalised audio with
a random gain (what the streaming path sees; NeMo's offline `forward` would divide by the batch max).
Loss: NeMo's BCE on arrival-time-sorted (ATS) and permutation-invariant (PIL) targets, half each, as
`SortformerEncLabelModel.training_step` does. Half the batches are random crops (2-10 s) so the model
also learns from contexts as short as the streaming speaker cache + FIFO. Every --eval-every steps the
streaming DER (chunk by chunk, forward_streaming_step) on a few held-out conversations is logged.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads must not spin

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import sortformer as S  # noqa: E402
from conversations import labels_array  # noqa: E402


def load_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def make_batch(rows, r: random.Random, bs: int):
    """Audio (B, N) with random gain and optional crop, lengths, 80 ms targets (B, F, 4)."""
    xs, ys = [], []
    for row in r.sample(rows, bs):
        x, _ = sf.read(row["audio_filepath"], dtype="float32")
        y = labels_array(row)
        if r.random() < 0.5:
            n = int(r.uniform(2, 10) / S_FRAME)
            if n < len(y):
                a = r.randrange(0, len(y) - n)
                x, y = x[a * FRAME: (a + n) * FRAME], y[a: a + n]
        peak = np.abs(x).max() + 1e-6
        x = x / peak * 10 ** r.uniform(-1.3, 0)  # peak between 0.05 and 1
        xs.append(x)
        ys.append(y)
    n = max(len(x) for x in xs)
    f = max(len(y) for y in ys)
    audio = torch.zeros(bs, n)
    tgt = torch.zeros(bs, f, S.N_SPK)
    for i, (x, y) in enumerate(zip(xs, ys)):
        audio[i, : len(x)] = torch.from_numpy(x)
        tgt[i, : len(y), :2] = torch.from_numpy(y)
    return audio, torch.tensor([len(x) for x in xs]), tgt, torch.tensor([len(y) for y in ys])


FRAME, S_FRAME = 1280, 0.08


def loss_fn(model, audio, alen, tgt, tlen):
    from nemo.collections.asr.parts.utils.asr_multispeaker_utils import get_ats_targets, get_pil_targets

    feats, flen = model.preprocessor(input_signal=audio, length=alen)
    emb, elen = model.frontend_encoder(processed_signal=feats, processed_signal_length=flen)
    preds = model.forward_infer(emb, elen)
    f = min(preds.shape[1], tgt.shape[1])
    preds, tgt, tlen = preds[:, :f], tgt[:, :f], torch.minimum(tlen, elen).clamp(max=f)
    ats = get_ats_targets(tgt.clone(), preds, speaker_permutations=model.speaker_permutations)
    pil = get_pil_targets(tgt.clone(), preds, speaker_permutations=model.speaker_permutations)
    return 0.5 * model.loss(probs=preds, labels=ats, target_lens=tlen) + \
        0.5 * model.loss(probs=preds, labels=pil, target_lens=tlen)


def stream_der(model, rows) -> float:
    model.eval()
    tot = {"miss": 0, "fa": 0, "conf": 0, "ref": 0}
    for row in rows:
        x, _ = sf.read(row["audio_filepath"], dtype="float32")
        _, c = S.der(S.stream_one(model, x), labels_array(row))
        for k in tot:
            tot[k] += c[k]
    model.train()
    return (tot["miss"] + tot["fa"] + tot["conf"]) / tot["ref"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--init", type=Path, help="continue from this .nemo")
    ap.add_argument("--steps", type=int, default=3000, help="length of the LR schedule")
    ap.add_argument("--minutes", type=float, help="stop early after this wall time (steps reached are logged)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=250)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    r = random.Random(a.seed)
    train = load_rows(a.work / "train.jsonl")
    dev = load_rows(a.work / "test.jsonl")[:12]
    model = S.load(a.init) if a.init else S.build()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / a.warmup) * max(
        0.02, 0.5 * (1 + math.cos(math.pi * min(1.0, s / a.steps)))))
    log, t0, ema = [], time.time(), None
    print(f"params {sum(p.numel() for p in model.parameters())}, train {len(train)}", flush=True)
    for step in range(1, a.steps + 1):
        loss = loss_fn(model, *make_batch(train, r, a.batch))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        done = a.minutes is not None and time.time() - t0 > a.minutes * 60
        if step % a.eval_every == 0 or step == a.steps or done:
            d = stream_der(model, dev)
            log.append({"step": step, "s": round(time.time() - t0, 1), "loss": round(ema, 4), "stream_der": d})
            print(json.dumps(log[-1]), flush=True)
            model.save_to(str(a.out))
        if done:
            break
    model.eval()
    model.save_to(str(a.out))
    Path(str(a.out) + ".log.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                                           "log": log}, indent=1))


if __name__ == "__main__":
    main()
