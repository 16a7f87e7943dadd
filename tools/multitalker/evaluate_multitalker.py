"""Streaming target-speaker WER and cpWER of the tiny multitalker ASR on held-out conversations.

    python tools/multitalker/evaluate_multitalker.py --model tools/multitalker/work/multitalker.nemo

Every row is a fresh cache-aware stream stepped 160 ms at a time ([70,1]) through `conformer_stream_step`,
fed the way the worker feeds it (9 zero feature frames of look-back before the first chunk, 2 pre-encoded
frames dropped every step) with the step's 2 frames of targets set just before the call:
  oracle      per turn (turns.py crop), targets from the true labels
  sortformer  per turn, targets from the streaming tiny Sortformer (chunk 2, right context 0) over the
              whole conversation, its columns mapped to the reference speakers by the best permutation
  worker      rows opened and closed from the Sortformer's output exactly as the worker does (open at the
              first chunk with p >= 0.5, close after 8 frames below), every column; cpWER per conversation
Also the plain tiny_rnnt's WER on single-speaker clips of voices held out from training, random word order.
Writes <model>.eval.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import time
from multiprocessing import Pool
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tiny_model"))
import sortformer as S  # noqa: E402
from conversations import BASES_HELD, FEMALE_HELD, FRAME, MALE_HELD, SR, labels_array, speak  # noqa: E402
from cpwer import cpwer, edit_distance  # noqa: E402
from turns import CLOSE_FRAMES, PRE_ENCODE_DROP, PRE_ENCODE_PAD, crop_audio, crop_frames, targets  # noqa: E402
from train_multitalker import load_turns  # noqa: E402

ROOT = HERE.parents[1]
CHUNK_FRAMES = 2  # 160 ms steps: 2 encoder frames, 16 feature frames
THRESHOLD = 0.5  # a row opens when p >= THRESHOLD and closes after 8 frames below it


def load_asr(path):
    from nemo.collections.asr.models import ASRModel

    m = ASRModel.restore_from(str(path), map_location="cpu").eval()
    m.encoder.set_default_att_context_size([70, 1])
    m.encoder.setup_streaming_params()
    return m


@torch.inference_mode()
def stream_row(model, audio: np.ndarray, spk: np.ndarray | None = None, bg: np.ndarray | None = None) -> str:
    """One fresh stream over `audio` (whole 160 ms chunks; zero-padded), targets (frames,) per step."""
    n_chunks = -(-len(audio) // (CHUNK_FRAMES * FRAME))
    x = np.zeros(n_chunks * CHUNK_FRAMES * FRAME, np.float32)
    x[: len(audio)] = audio
    feats, _ = model.preprocessor(input_signal=torch.from_numpy(x)[None], length=torch.tensor([len(x)]))
    feats = torch.nn.functional.pad(feats, (PRE_ENCODE_PAD, 0))  # zero look-back, as a fresh worker stream
    step_feats = CHUNK_FRAMES * 8
    cache = model.encoder.get_initial_cache_state(batch_size=1)
    hyps, pred = None, None
    for k in range(n_chunks):
        chunk = feats[:, :, k * step_feats: k * step_feats + PRE_ENCODE_PAD + step_feats]
        if spk is not None:
            sl = slice(k * CHUNK_FRAMES, (k + 1) * CHUNK_FRAMES)
            model.set_speaker_targets(torch.from_numpy(spk[sl])[None].float(), torch.from_numpy(bg[sl])[None].float())
        pred, _, c0, c1, c2, hyps = model.conformer_stream_step(
            processed_signal=chunk, processed_signal_length=torch.tensor([chunk.shape[2]]),
            cache_last_channel=cache[0], cache_last_time=cache[1], cache_last_channel_len=cache[2],
            keep_all_outputs=k == n_chunks - 1, previous_hypotheses=hyps, previous_pred_out=pred,
            drop_extra_pre_encoded=PRE_ENCODE_DROP, return_transcription=True)
        cache = (c0, c1, c2)
    return model.tokenizer.ids_to_text([int(t) for t in hyps[0].y_sequence]) if hyps else ""


def column_map(probs: np.ndarray, ref: np.ndarray) -> list[int]:
    """Sortformer column for each reference speaker: the assignment with the fewest frame disagreements."""
    n = min(len(probs), len(ref))
    sys_ = probs[:n] > THRESHOLD
    best = min(itertools.permutations(range(probs.shape[1]), ref.shape[1]),
               key=lambda cols: sum(int((sys_[:, c] != (ref[:n, s] > 0)).sum()) for s, c in enumerate(cols)))
    return list(best)


def diar_targets(probs: np.ndarray, col: int, start: int, n: int,
                 spk_threshold: float = THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """What the worker sets: spk = p_col > spk_threshold, bg = any other column > 0.5 (float 0/1),
    frames start..start+n."""
    seg = np.zeros((n, probs.shape[1]), np.float32)
    part = probs[start: start + n]
    seg[: len(part)] = part
    on = (seg > THRESHOLD).astype(np.float32)
    return (seg[:, col] > spk_threshold).astype(np.float32), np.delete(on, col, axis=1).max(1)


def worker_rows(p: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) frames of the rows one column opens: open at the first chunk with a frame >= 0.5,
    close at the end of the chunk in which the 8th consecutive frame below 0.5 falls."""
    rows, start, silent = [], None, 0
    for c0 in range(0, len(p), CHUNK_FRAMES):
        frames = p[c0: c0 + CHUNK_FRAMES]
        if start is None:
            if (frames >= THRESHOLD).any():
                start, silent = c0, 0
            else:
                continue
        closed = False
        for v in frames:
            silent = 0 if v >= THRESHOLD else silent + 1
            closed = closed or silent >= CLOSE_FRAMES
        if closed:
            rows.append((start, c0 + CHUNK_FRAMES))
            start = None
    if start is not None:
        rows.append((start, len(p)))
    return rows


def evaluate_set(asr, diar, manifest: Path, limit: int = 0, spk_threshold: float = THRESHOLD) -> dict:
    rows, turns = load_turns(manifest)
    if limit:
        rows = rows[:limit]
        turns = [t for t in turns if t.conv < limit]
    err = {"oracle": [0, 0], "sortformer": [0, 0], "worker": [0, 0]}
    examples = []
    t0 = time.time()
    for i, row in enumerate(rows):
        x, _ = sf.read(row["audio_filepath"], dtype="float32")
        y = labels_array(row)
        probs = S.stream_one(diar, x)[: len(y)]
        cols = column_map(probs, y)
        for t in (t for t in turns if t.conv == i):
            start, stop = crop_frames(t, len(y), None)
            audio = crop_audio(x, start, stop)
            n = stop - start
            for mode, (spk, bg) in (("oracle", targets(y, t.speaker, start, n)),
                                    ("sortformer", diar_targets(probs, cols[t.speaker], start, n, spk_threshold))):
                hyp = stream_row(asr, audio, spk, bg)
                err[mode][0] += edit_distance(t.text.split(), hyp.split())
                err[mode][1] += len(t.text.split())
                if mode == "oracle" and len(examples) < 6:
                    examples.append((t.text, hyp))
        ref_by = {s: [seg[3] for seg in sorted(row["segments"]) if seg[2] == s] for s in range(y.shape[1])}
        hyp_by = {}
        for c in range(probs.shape[1]):
            for a, b in worker_rows(probs[:, c]):
                spk, bg = diar_targets(probs, c, a, b - a, spk_threshold)
                text = stream_row(asr, crop_audio(x, a, b), spk, bg)
                if text.strip():
                    hyp_by.setdefault(c, []).append(text)
        e, n = cpwer(ref_by, hyp_by)
        err["worker"][0] += e
        err["worker"][1] += n
    out = {k: round(100.0 * e / max(1, n), 2) for k, (e, n) in err.items()}
    out.update(n_conversations=len(rows), n_turns=len(turns), seconds=round(time.time() - t0, 1),
               examples=examples)
    return out


def _clip(args):
    text, seed, path = args
    r = random.Random(seed)
    pool = MALE_HELD if r.random() < 0.5 else FEMALE_HELD
    v = {"voice": r.choice(BASES_HELD) + r.choice(pool), "speed": r.randint(140, 185),
         "pitch": r.randint(25, 50) if pool is MALE_HELD else r.randint(50, 80)}
    speech = speak(text, v, r) * r.uniform(0.4, 1.0)
    x = np.concatenate([np.zeros(int(r.uniform(0.1, 0.5) * SR), np.float32), speech,
                        np.zeros(int(r.uniform(0.1, 0.5) * SR), np.float32)])
    rms = float(np.sqrt(np.mean(speech ** 2)))
    x = x + np.random.default_rng(seed).standard_normal(len(x)).astype(np.float32) * rms * 10 ** (-r.uniform(25, 45) / 20)
    sf.write(path, np.clip(x, -1, 1), SR, subtype="PCM_16")
    return {"audio_filepath": str(path), "text": text, "voice": v["voice"]}


def heldout_voice_clips(work: Path, n: int = 200, seed: int = 77) -> list[dict]:
    """Single-speaker clips, voices never in training, 3-8 words of words.txt in random order (cached)."""
    d = work / "voices_words"
    man = d / "manifest.jsonl"
    if man.exists():
        return [json.loads(x) for x in man.read_text().splitlines()]
    d.mkdir(parents=True, exist_ok=True)
    words = (HERE.parent / "tiny_model" / "words.txt").read_text().split()
    r = random.Random(seed)
    jobs = [(" ".join(r.choice(words) for _ in range(r.randint(3, 8))), seed * 1000 + i, d / f"{i:04d}.wav")
            for i in range(n)]
    with Pool(2) as p:
        rows = p.map(_clip, jobs)
    man.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return rows


def heldout_voices_wer(model, work: Path, multitalker: bool) -> dict:
    """Streaming WER on the held-out-voice word-order clips, overall and per espeak variant; a multitalker
    model gets the single-speaker targets (spk 1, bg 0 on every frame)."""
    clips = heldout_voice_clips(work)
    tot, per = [0, 0], {}
    for c in clips:
        x = sf.read(c["audio_filepath"], dtype="float32")[0]
        n = -(-len(x) // FRAME) + CHUNK_FRAMES
        hyp = stream_row(model, x, np.ones(n, np.float32), np.zeros(n, np.float32)) if multitalker else stream_row(model, x)
        e, w = edit_distance(c["text"].split(), hyp.split()), len(c["text"].split())
        for acc in (tot, per.setdefault(c["voice"].split("+")[1], [0, 0])):
            acc[0] += e
            acc[1] += w
    return {"wer": round(100.0 * tot[0] / tot[1], 2), "clips": len(clips), "words": tot[1],
            "by_variant": {k: round(100.0 * e / w, 1) for k, (e, w) in sorted(per.items())}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--diar", type=Path, default=ROOT / "tests" / "assets" / "tiny_sortformer.nemo")
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--limit", type=int, default=0, help="first N conversations per set (0: all)")
    ap.add_argument("--sets", default="test,test_voices")
    ap.add_argument("--spk-threshold", type=float, default=THRESHOLD,
                    help="Sortformer p above which a row's own-speaker target is 1 (rows still open/close at 0.5)")
    ap.add_argument("--skip-rnnt", action="store_true", help="skip both held-out-voice single-speaker runs")
    ap.add_argument("--out", type=Path, help="results JSON (default <model>.eval.json)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    asr = load_asr(a.model)
    diar = S.load(a.diar, chunk_len=2, chunk_right_context=0)
    res = {}
    for name in a.sets.split(","):
        res[name] = evaluate_set(asr, diar, a.work / f"{name}.jsonl", a.limit, a.spk_threshold)
        print(name, res[name], flush=True)
    if not a.skip_rnnt:
        res["heldout_voices_single_speaker"] = heldout_voices_wer(asr, a.work, multitalker=True)
        print("held-out voices, single speaker", res["heldout_voices_single_speaker"], flush=True)
        res["tiny_rnnt_heldout_voices"] = heldout_voices_wer(load_asr(ROOT / "tests" / "assets" / "tiny_rnnt.nemo"),
                                                             a.work, multitalker=False)
        print("tiny_rnnt held-out voices", res["tiny_rnnt_heldout_voices"], flush=True)
    (a.out or Path(str(a.model) + ".eval.json")).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
