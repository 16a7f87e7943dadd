"""Streaming DER of a tiny Sortformer on the held-out conversations; copies a few into tests/assets.

DER: frame level (80 ms), collar 0, overlap counted, best speaker permutation per conversation, pooled
over the set (missed + false alarm + confusion) / reference speaker time. Streaming runs chunk by chunk
through `forward_streaming_step` (async state) exactly as the worker will, at several chunk sizes.
Writes <model>.eval.json; with --assets also tests/assets/conversations/ (WAVs + manifest).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import sortformer as S  # noqa: E402
from conversations import labels_array, overlap_fraction  # noqa: E402

ROOT = HERE.parents[1]
# (chunk_len frames of 80 ms, right context frames): the stored default and the ASR step (160 ms)
SETTINGS = [(6, 1), (2, 1)]


def evaluate(model, rows) -> dict:
    tot = {"miss": 0, "fa": 0, "conf": 0, "ref": 0}
    per = []
    t0 = time.time()
    for row in rows:
        x, _ = sf.read(row["audio_filepath"], dtype="float32")
        d, c = S.der(S.stream_one(model, x), labels_array(row))
        per.append(d)
        for k in tot:
            tot[k] += c[k]
    return {"der": round((tot["miss"] + tot["fa"] + tot["conf"]) / tot["ref"], 4),
            "miss": round(tot["miss"] / tot["ref"], 4), "fa": round(tot["fa"] / tot["ref"], 4),
            "conf": round(tot["conf"] / tot["ref"], 4), "n": len(rows),
            "worst": round(max(per), 4), "s": round(time.time() - t0, 1)}


def copy_assets(work: Path, dest: Path, n_seen: int = 3, n_unseen: int = 2) -> None:
    """A few held-out conversations (8.5-11.5 s, with overlap) as small test assets (relative paths)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    out = []
    for name, n in (("test", n_seen), ("test_voices", n_unseen)):
        rows = [json.loads(x) for x in (work / f"{name}.jsonl").read_text().splitlines()]
        picked = [r for r in rows if 8.5 <= r["duration"] <= 11.5 and overlap_fraction(r) > 0.03][:n]
        for r in picked:
            fn = f"{name}_{Path(r['audio_filepath']).stem}.wav"
            shutil.copy(r["audio_filepath"], dest / fn)
            out.append({**r, "audio_filepath": fn, "set": name})
    (dest / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--assets", action="store_true", help="also write tests/assets/conversations/")
    a = ap.parse_args()
    torch.set_num_threads(1)
    res = {}
    for chunk, rc in SETTINGS:
        m = S.load(a.model, chunk_len=chunk, chunk_right_context=rc)
        for name in ("test", "test_voices"):
            rows = [json.loads(x) for x in (a.work / f"{name}.jsonl").read_text().splitlines()]
            res[f"{name}@chunk{chunk}_rc{rc}"] = r = evaluate(m, rows)
            print(name, chunk, rc, r, flush=True)
    Path(str(a.model) + ".eval.json").write_text(json.dumps(res, indent=1))
    if a.assets:
        copy_assets(a.work, ROOT / "tests" / "assets" / "conversations")


if __name__ == "__main__":
    main()
