"""Cross-check streaming WER with NeMo 3.0's official cache-aware pipeline (nemo.collections.asr.inference).

    python tools/tiny_model/pipeline_check.py --model tests/assets/tiny_rnnt.nemo [--limit 100]

Shows the minimal config CacheAwareRNNTPipeline needs for a local .nemo at att_context [70,1] (160 ms
chunks) and runs all held-out files through `pipeline.run()` (continuous batching over streams).

    python tools/tiny_model/pipeline_check.py --model tests/assets/tiny_rnnt.nemo --ours
    python tools/tiny_model/pipeline_check.py --model tests/assets/tiny_eou.nemo --ours --kind eou

`--ours`: the worker's own path instead: the streaming adapter (`services/adapters`, the one
`nvasr serve` runs: NeMo's pipeline plus our endpointing and per-utterance decoder reset), 16 streams
stepped together in 160 ms chunks, finals joined. This is the streaming WER a client sees.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))  # services/, for --ours
from corpus import read_manifest  # noqa: E402
from evaluate import clean, wer  # noqa: E402


def pipeline_config(model_path: str, att_context=(70, 1), batch_size: int = 8):
    """Every key the cache-aware RNNT builder and pipeline read (NeMo 3.0.0), with CPU values."""
    return OmegaConf.create({
        "pipeline_type": "cache_aware",
        "asr_decoding_type": "rnnt",
        "log_level": 30,
        "matmul_precision": "highest",
        "asr": {"model_name": model_path, "device": "cpu", "device_id": 0, "compute_dtype": "float32",
                "use_amp": False, "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}}},
        "streaming": {"sample_rate": 16000, "batch_size": batch_size, "num_slots": 2 * batch_size,
                      "att_context_size": list(att_context), "use_cache": True, "use_feat_cache": True,
                      "chunk_size_in_secs": None, "request_type": "frame", "word_boundary_tolerance": 4},
        "endpointing": {"stop_history_eou": -1, "residue_tokens_at_end": 0},
        "asr_output_granularity": "segment",
        "return_tail_result": False,
        "confidence": {"exclude_blank": True, "aggregation": "mean",
                       "method_cfg": {"name": "max_prob", "entropy_type": "tsallis", "alpha": 0.5,
                                      "entropy_norm": "exp"}},
        "enable_itn": False,
        "itn": {"batch_size": 1, "n_jobs": 1, "left_padding_size": 0},
        "enable_nmt": False,
        "nmt": None,
        "cache_dir": None,
    })


def stream_together(adapter, audio: list, first_id: int = 0) -> list[str]:
    """Step one stream per array through `adapter` together, chunk by chunk, as the engine batches
    them; each stream's finals joined. Stream ids are first_id, first_id + 1, ..."""
    from services.engine.adapter import StepItem

    n, texts = adapter.chunk_samples, [[] for _ in audio]
    for start in range(0, max(len(x) for x in audio), n):
        live = [k for k, x in enumerate(audio) if start < len(x)]
        items = [StepItem(first_id + k, audio[k][start:start + n], start == 0, start + n >= len(audio[k])) for k in live]
        for k, out in zip(live, adapter.step(items)):
            texts[k] += [f.text for f in out.finals]
    return [" ".join(" ".join(t).split()) for t in texts]


def worker_hypotheses(model_path: str, paths: list[str], eou: bool, batch: int = 16) -> list[str]:
    """Each file through the worker's adapter, `batch` streams stepped together."""
    import soundfile as sf
    from services.adapters.vectorised import VectorisedRNNTAdapter
    from services.adapters.vectorised_eou import VectorisedEOUAdapter

    adapter = (VectorisedEOUAdapter if eou else VectorisedRNNTAdapter)(model_path, chunk_ms=160, max_streams=2 * batch)
    hyps = []
    for first in range(0, len(paths), batch):
        audio = [sf.read(p, dtype="float32")[0] for p in paths[first:first + batch]]
        hyps += [clean(t) for t in stream_together(adapter, audio, first)]
    return hyps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--kind", choices=["rnnt", "eou"], default="rnnt", help="with --ours: which worker adapter")
    ap.add_argument("--ours", action="store_true", help="the worker's streaming adapter, not NeMo's pipeline.run()")
    a = ap.parse_args()
    import torch
    from nemo.collections.asr.inference.factory.pipeline_builder import PipelineBuilder

    # One thread: on a shared 2-core machine, 2 OpenMP threads per process made small-op streaming
    # steps many times slower (threads spin waiting for each other); 1 thread is the fast, safe choice.
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    rows = read_manifest(a.work / "asr" / "test.jsonl")
    if a.limit:
        rows = rows[:a.limit]
    paths = [r["audio_filepath"] for r in rows]
    if a.ours:
        hyps = worker_hypotheses(str(a.model), paths, eou=a.kind == "eou")
    else:
        out = PipelineBuilder.build_pipeline(pipeline_config(str(a.model))).run(paths)
        by_path = {v["audio_filepath"]: clean(v["text"]) for v in out.values()}
        hyps = [by_path.get(p, "") for p in paths]
    name = "worker" if a.ours else "pipeline"
    res = {f"{name}_streaming_wer_160ms": round(wer(hyps, [r["text"] for r in rows]), 2), "n": len(rows),
           "examples": [[r["text"], h] for r, h in list(zip(rows, hyps)) if r["text"] != h][:8]}
    print(json.dumps(res, indent=1))
    (a.work / f"{name}_{a.model.stem}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
