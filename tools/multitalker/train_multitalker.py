"""Fine-tune a tiny multitalker ASR (EncDecMultiTalkerRNNTBPEModel) from tests/assets/tiny_rnnt.nemo on CPU.

    python tools/multitalker/train_multitalker.py --out tools/multitalker/work/multitalker.nemo --minutes 25

The model is tiny_rnnt's encoder/decoder/joint (its CTC head dropped) plus feed-forward speaker kernels
(`spk_kernel_type: ff`) before encoder layer(s) `--layers`, with a background-speaker kernel. The last
Linear of every kernel starts at zero, so step 0 is exactly tiny_rnnt. One example = one speaker turn of
a two-voice conversation, cropped and targeted as the worker will stream it (turns.py); the text is only
that speaker's words, while the other voice may overlap at the edges. Training runs the encoder as a
fresh [70,1] cache-aware stream sees it (turns.encode), the plain-PyTorch RNNT loss from tools/tiny_model.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tiny_model"))
from conversations import FRAME, labels_array  # noqa: E402
from rnnt_loss import rnnt_loss  # noqa: E402
from train import lr_at  # noqa: E402
from turns import Turn, audio_path, crop_audio, crop_frames, encode, jitter, targets, turns_of  # noqa: E402

ROOT = HERE.parents[1]
TARGET = "nemo.collections.asr.models.multitalker_asr_models.EncDecMultiTalkerRNNTBPEModel"


def from_rnnt(path: Path, layers: list[int]):
    """tiny_rnnt's weights in an EncDecMultiTalkerRNNTBPEModel; kernels' last Linear zeroed (a no-op at start)."""
    from nemo.collections.asr.models import ASRModel
    from nemo.collections.asr.models.multitalker_asr_models import EncDecMultiTalkerRNNTBPEModel
    from omegaconf import open_dict

    cfg = ASRModel.restore_from(str(path), map_location="cpu", return_config=True)
    with open_dict(cfg):
        cfg.pop("aux_ctc", None)  # the multitalker class is RNNT only
        cfg.target = TARGET
        cfg.spk_kernel_type = "ff"
        cfg.spk_kernel_layers = list(layers)
        cfg.add_bg_spk_kernel = True
    model = EncDecMultiTalkerRNNTBPEModel.restore_from(str(path), override_config_path=cfg, map_location="cpu",
                                                       strict=False)
    with torch.no_grad():
        for kernels in (model.spk_kernels, model.bg_spk_kernels):
            for k in kernels.values():
                k[-1].weight.zero_()
                k[-1].bias.zero_()
    return model


def load_turns(manifest: Path) -> tuple[list[dict], list[Turn]]:
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    for r in rows:
        r["audio_filepath"] = str(audio_path(r, manifest))
    return rows, [t for i, r in enumerate(rows) for t in turns_of(r, i)]


class Examples:
    """Random crops of turns (+ a few 'false row' negatives: a crop of the other speaker's turn with an
    empty text, a short target blip and the other voice as background), collated into batches."""

    def __init__(self, rows, turns, tok, seed: int, negatives: float = 0.05, flip: float = 0.02,
                 overlap_repeat: int = 1, predicted=None, predicted_share: float = 0.0):
        self.rows, self.turns, self.tok = rows, turns, tok
        self.r = random.Random(seed)
        self.negatives, self.flip = negatives, flip
        self.labels = [labels_array(r) for r in rows]
        # the worker diarizer's own activity per conversation (diarize_set.py): targets with its real
        # errors, for `predicted_share` of the crops (turn boundaries and text still come from the truth)
        self.predicted, self.predicted_share = predicted, predicted_share
        self.ids = [tok.text_to_ids(t.text) for t in turns]
        # turns whose crop holds both voices at once appear overlap_repeat times per epoch
        self.epoch = [k for k, t in enumerate(turns)
                      for _ in range(overlap_repeat if self.overlapped(t) else 1)]

    def overlapped(self, t: Turn) -> bool:
        y = self.labels[t.conv]
        start, stop = crop_frames(t, len(y), None)
        return bool((y[max(0, start - 3): stop].sum(1) > 1).any())

    def one(self, k: int):
        r, t = self.r, self.turns[k]
        y = self.labels[t.conv]
        start, stop = crop_frames(t, len(y), r)
        spk_idx, ids = t.speaker, self.ids[k]
        if r.random() < self.negatives:  # a row the diarizer opened wrongly: say nothing
            spk_idx, ids = 1 - t.speaker, []
        if ids and self.predicted is not None and r.random() < self.predicted_share:
            spk, bg = targets(self.predicted[str(t.conv)], spk_idx, start, stop - start)
        else:
            spk, bg = targets(y, spk_idx, start, stop - start)
            if not ids:
                spk[:] = 0
                spk[: r.randint(1, 3)] = 1
            spk, bg = jitter(spk, r, self.flip), jitter(bg, r, self.flip)
        with sf.SoundFile(self.rows[t.conv]["audio_filepath"]) as f:
            f.seek(min(start * FRAME, f.frames))
            x = f.read((stop - start) * FRAME, dtype="float32")
        return crop_audio(x, 0, stop - start), spk, bg, ids

    def batches(self, batch: int):
        """Length-bucketed batches (sorted within pools of 50 batches) in random order."""
        idx = list(self.epoch)
        self.r.shuffle(idx)
        out, pool = [], batch * 50
        for p in range(0, len(idx), pool):
            chunk = sorted(idx[p: p + pool], key=lambda i: self.turns[i].end_frame - self.turns[i].first)
            out += [chunk[i: i + batch] for i in range(0, len(chunk), batch)]
        self.r.shuffle(out)
        return out

    def collate(self, ks):
        items = [self.one(k) for k in ks]
        n = max(len(x) for x, *_ in items)
        audio = torch.zeros(len(items), n)
        T = n // FRAME
        spk, bg = torch.zeros(len(items), T), torch.zeros(len(items), T)
        U = max(1, max(len(i[3]) for i in items))
        tgt = torch.zeros(len(items), U, dtype=torch.long)
        for b, (x, s, g, ids) in enumerate(items):
            audio[b, : len(x)] = torch.from_numpy(x)
            spk[b, : len(s)], bg[b, : len(g)] = torch.from_numpy(s), torch.from_numpy(g)
            tgt[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return (audio, torch.tensor([len(i[0]) for i in items]), spk, bg, tgt,
                torch.tensor([len(i[3]) for i in items]))


@torch.no_grad()
def quick_wer(model, rows, turns, batch: int = 16) -> float:
    """Oracle-target WER on turns with the deterministic eval crop, full-sequence [70,1] emulation."""
    from nemo.collections.asr.metrics.wer import word_error_rate

    model.eval()
    ex = Examples(rows, turns, model.tokenizer, 0)
    hyps, refs = [], []
    for i in range(0, len(turns), batch):
        items = []
        for t in turns[i: i + batch]:
            y = ex.labels[t.conv]
            start, stop = crop_frames(t, len(y), None)
            x, _ = sf.read(rows[t.conv]["audio_filepath"], dtype="float32")
            items.append((crop_audio(x, start, stop), *targets(y, t.speaker, start, stop - start)))
        n = max(len(x) for x, *_ in items)
        audio, T = torch.zeros(len(items), n), n // FRAME
        spk, bg = torch.zeros(len(items), T), torch.zeros(len(items), T)
        for b, (x, s, g) in enumerate(items):
            audio[b, : len(x)], spk[b, : len(s)], bg[b, : len(g)] = torch.from_numpy(x), torch.from_numpy(s), torch.from_numpy(g)
        enc, enc_len = encode(model, audio, torch.tensor([len(i[0]) for i in items]), spk, bg)
        for h in model.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=enc_len):
            hyps.append(model.tokenizer.ids_to_text([int(v) for v in h.y_sequence]))
        refs += [t.text for t in turns[i: i + batch]]
    model.train()
    return 100.0 * word_error_rate(hypotheses=hyps, references=refs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--init", type=Path, default=ROOT / "tests" / "assets" / "tiny_rnnt.nemo",
                    help="tiny_rnnt.nemo (a fresh multitalker model) or a multitalker .nemo to continue")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layers", default="0", help="encoder layers with speaker kernels, e.g. 0 or 0,2")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--minutes", type=float, default=0, help="also stop (and end the cosine) after this long")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--kernel-lr-mult", type=float, default=4.0, help="speaker kernels learn from zero: faster")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--pred-labels", type=Path, default=None,
                    help="diarize_set.py output: train on the worker diarizer's targets for a share of the crops")
    ap.add_argument("--pred-share", type=float, default=0.5)
    ap.add_argument("--overlap-repeat", type=int, default=1, help="show turns with overlapping voices N times an epoch")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    np.random.seed(a.seed)
    if a.init.name == "tiny_rnnt.nemo":
        model = from_rnnt(a.init, [int(v) for v in a.layers.split(",")])
    else:
        from nemo.collections.asr.models import ASRModel
        model = ASRModel.restore_from(str(a.init), map_location="cpu")
    enc = model.encoder
    enc.att_context_probs = [float(list(c) == [70, 1]) for c in enc.att_context_size_all]  # the worker's context
    rows, turns = load_turns(a.work / "train.jsonl")
    ev_rows, ev_turns = load_turns(a.work / "test.jsonl")
    ev_turns = [t for t in ev_turns if t.conv < 15]
    predicted = dict(np.load(a.pred_labels)) if a.pred_labels else None
    data = Examples(rows, turns, model.tokenizer, a.seed, overlap_repeat=a.overlap_repeat, predicted=predicted,
                    predicted_share=a.pred_share)
    blank = model.decoder.blank_idx
    print(f"{len(turns)} training turns from {len(rows)} conversations; {len(ev_turns)} eval turns; params "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M", flush=True)

    kernel_params = [p for n, p in model.named_parameters() if "spk_kernels" in n]
    other = [p for n, p in model.named_parameters() if "spk_kernels" not in n]
    opt = torch.optim.AdamW([{"params": other, "mult": 1.0}, {"params": kernel_params, "mult": a.kernel_lr_mult}],
                            lr=a.lr, betas=(0.9, 0.98), weight_decay=1e-3)
    curve = [{"step": 0, "minutes": 0.0, "wer": round(quick_wer(model, ev_rows, ev_turns), 2)}]
    print("step 0 eval WER", curve[-1]["wer"], flush=True)
    model.train()
    order: list = []
    t0, step, hist, progress = time.time(), 0, [], 0.0
    while progress < 1.0:
        if not order:
            order = data.batches(a.batch)
        audio, alen, spk, bg, tgt, tlen = data.collate(order.pop())
        for g in opt.param_groups:
            g["lr"] = lr_at(step, progress, a.lr, a.warmup) * g["mult"]
        enc_out, enc_len = encode(model, audio, alen, spk, bg)
        dec, _, _ = model.decoder(targets=tgt, target_length=tlen)
        joint = model.joint(encoder_outputs=enc_out, decoder_outputs=dec)
        loss = rnnt_loss(joint, tgt, enc_len, tlen, blank=blank)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        progress = step / a.steps
        if a.minutes:
            progress = max(progress, (time.time() - t0) / 60 / a.minutes)
        hist.append(loss.item())
        if step % 50 == 0:
            el = time.time() - t0
            print(f"step {step} rnnt {np.mean(hist[-50:]):.3f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"{el / 60:.1f} min", flush=True)
        if step % a.eval_every == 0 or progress >= 1.0:
            curve.append({"step": step, "minutes": round((time.time() - t0) / 60, 1),
                          "loss": round(float(np.mean(hist[-50:])), 3),
                          "wer": round(quick_wer(model, ev_rows, ev_turns), 2)})
            print("eval", curve[-1], flush=True)
            model.save_to(str(a.out.with_suffix(".ckpt.nemo")))
    model.eval()
    model.clear_speaker_targets()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(a.out))
    info = {"init": a.init.name, "layers": ",".join(model.spk_kernels), "overlap_repeat": a.overlap_repeat, "steps": step, "batch": a.batch, "lr": a.lr,
            "kernel_lr_mult": a.kernel_lr_mult, "warmup": a.warmup, "seed": a.seed, "threads": a.threads,
            "minutes": round((time.time() - t0) / 60, 1), "turns": len(turns), "curve": curve,
            "size_mb": round(a.out.stat().st_size / 1e6, 2)}
    Path(str(a.out) + ".train.json").write_text(json.dumps(info, indent=1))
    print("saved", a.out, info, flush=True)


if __name__ == "__main__":
    main()
