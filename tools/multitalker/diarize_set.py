"""What the worker's diarizer says about a set of conversations: per conversation, the speaker activity
the streaming Sortformer gives through `services/adapters/diarizer.py` (the worker's own path: 160 ms
chunks, incremental features, no right context), binarised at 0.5 and put in REFERENCE speaker order
(the permutation with the fewest frame errors). Saved as one .npz (key = conversation index) so the
multitalker ASR can be trained on the targets it will really get (`train_multitalker.py --pred-labels`).

    python tools/multitalker/diarize_set.py --set train --out tools/multitalker/work/train_pred.npz
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from conversations import labels_array  # noqa: E402
from turns import audio_path  # noqa: E402


def in_reference_order(active: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Columns of `active` (frames, 4) permuted to best match `ref` (frames, k); returns (frames, k)."""
    n = min(len(active), len(ref))
    best, best_cols = None, None
    for cols in itertools.permutations(range(active.shape[1]), ref.shape[1]):
        errors = int((active[:n, list(cols)] != ref[:n]).sum())
        if best is None or errors < best:
            best, best_cols = errors, cols
    out = np.zeros((len(ref), ref.shape[1]), np.float32)
    out[:n] = active[:n, list(best_cols)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--diar", default="tests/assets/tiny_sortformer.nemo")
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--set", default="train")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from services.adapters.diarizer import StreamingDiarizer

    manifest = Path(args.work) / f"{args.set}.jsonl"
    rows = [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()]
    chunk = 2560
    diar = StreamingDiarizer(args.diar, args.batch, chunk, torch.device("cpu"))
    out, began = {}, time.time()
    for first in range(0, len(rows), args.batch):
        group = rows[first: first + args.batch]
        audio = [sf.read(audio_path(r, manifest), dtype="float32")[0] for r in group]
        n_chunks = [-(-len(a) // chunk) for a in audio]
        probs = [[] for _ in group]
        diar.reset(list(range(len(group))))
        for t in range(max(n_chunks)):
            live = [i for i in range(len(group)) if t < n_chunks[i]]
            block = np.zeros((len(live), chunk), np.float32)
            valid = np.zeros(len(live), np.int64)
            for j, i in enumerate(live):
                piece = audio[i][t * chunk: (t + 1) * chunk]
                block[j, : len(piece)], valid[j] = piece, len(piece)
            p, commit = diar.step(np.array(live, np.int64), torch.from_numpy(block), valid,
                                  np.full(len(live), t == 0))
            commit()
            for j, i in enumerate(live):
                probs[i].append(p[j])
        for i, r in enumerate(group):
            active = (np.concatenate(probs[i]) >= 0.5).astype(np.float32)
            out[str(first + i)] = in_reference_order(active, labels_array(r).astype(np.float32))
        print(f"{first + len(group)}/{len(rows)} {time.time() - began:.0f} s", flush=True)
    np.savez_compressed(args.out, **out)


if __name__ == "__main__":
    main()
