"""Evaluate a tiny model on the held-out split and write its model card.

    python tools/tiny_model/evaluate.py --kind rnnt --model tests/assets/tiny_rnnt.nemo
    python tools/tiny_model/evaluate.py --kind eou --model tests/assets/tiny_eou.nemo

Offline WER: `transcribe()` (RNNT decoder). Streaming WER: cache-aware `conformer_stream_step`, one stream
at a time, 160 ms chunks (att_context [70,1]). Per context ([70,6] / [70,1] / [70,0]: 560 / 160 / 80 ms
chunks, each one the model has): offline WER with that attention mask, and streaming WER at that chunk. EOU: the audio time at which the chunk that first emits
<EOU> ends (speech end + look-ahead + chunking: the latency a live worker would see, compute excluded).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpus import read_manifest  # noqa: E402
from model import EOU  # noqa: E402

ROOT = HERE.parents[1]


def load(path: Path):
    from nemo.collections.asr.models import ASRModel

    m = ASRModel.restore_from(str(path), map_location="cpu")
    m.eval()
    return m


def wer(hyps: list[str], refs: list[str]) -> float:
    from nemo.collections.asr.metrics.wer import word_error_rate

    return 100.0 * word_error_rate(hypotheses=hyps, references=refs)


def clean(text: str) -> str:
    return " ".join(w for w in text.replace(EOU, " ").replace("<EOB>", " ").split())


@torch.inference_mode()
def offline_direct(model, rows: list[dict], eou_id: int, batch_size: int = 16) -> list[str]:
    """Full-utterance RNNT greedy decoding without transcribe() (the EOU model has no validation_ds,
    which transcribe() needs). Audio is decoded one batch at a time, <EOU>/<EOB> removed."""
    texts = []
    for i in range(0, len(rows), batch_size):
        xs = [sf.read(r["audio_filepath"], dtype="float32")[0] for r in rows[i:i + batch_size]]
        audio = torch.zeros(len(xs), max(len(x) for x in xs))
        for k, x in enumerate(xs):
            audio[k, :len(x)] = torch.from_numpy(x)
        enc, enc_len = model.forward(input_signal=audio, input_signal_length=torch.tensor([len(x) for x in xs]))
        hyps = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=enc_len)
        for h in hyps:
            ids = [int(t) for t in h.y_sequence if int(t) < eou_id]
            texts.append(clean(model.tokenizer.ids_to_text(ids)))
    return texts


def offline(model, rows: list[dict], batch_size: int = 32) -> list[str]:
    if EOU in model.tokenizer.vocab:
        return offline_direct(model, rows, model.tokenizer.token_to_id(EOU))
    out = model.transcribe([r["audio_filepath"] for r in rows], batch_size=batch_size, verbose=False)
    if isinstance(out, tuple):
        out = out[0]
    return [clean(h.text if hasattr(h, "text") else h) for h in out]


def streaming_decoding(model) -> None:
    """EncDecRNNTBPEEOUModel forces decoding.compute_timestamps (and preserve_alignments) on at every
    construction, restore_from included; then the streaming step's Hypothesis.merge_ fails (timestamps
    become a dict). Turn both off before streaming."""
    from omegaconf import open_dict

    if model.cfg.decoding.get("compute_timestamps") or model.cfg.decoding.get("preserve_alignments"):
        dc = model.cfg.decoding.copy()
        with open_dict(dc):
            dc.compute_timestamps = False
            dc.preserve_alignments = False
        model.change_decoding_strategy(dc, verbose=False)


@torch.inference_mode()
def stream(model, audio: np.ndarray, att_context=(70, 1)):
    """Run one stream chunk by chunk. Returns (token ids, [(chunk_end_seconds, ids_so_far), ...])."""
    from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

    streaming_decoding(model)
    model.encoder.set_default_att_context_size(list(att_context))
    model.encoder.setup_streaming_params()
    cfg = model.encoder.streaming_cfg
    buf = CacheAwareStreamingAudioBuffer(model=model, online_normalization=False, pad_and_drop_preencoded=False)
    buf.append_audio(audio, stream_id=-1)
    cache = model.encoder.get_initial_cache_state(batch_size=1)
    hyps, pred, trace = None, None, []
    pos = 0
    for step, (chunk, lens) in enumerate(buf):
        first = step == 0
        chunk_size = cfg.chunk_size[0 if first else 1] if isinstance(cfg.chunk_size, list) else cfg.chunk_size
        shift = cfg.shift_size[0 if first else 1] if isinstance(cfg.shift_size, list) else cfg.shift_size
        out = model.conformer_stream_step(
            processed_signal=chunk, processed_signal_length=lens, cache_last_channel=cache[0],
            cache_last_time=cache[1], cache_last_channel_len=cache[2], keep_all_outputs=buf.is_buffer_empty(),
            previous_hypotheses=hyps, previous_pred_out=pred,
            drop_extra_pre_encoded=0 if first else cfg.drop_extra_pre_encoded, return_transcription=True)
        pred, _, c0, c1, c2, hyps = out
        cache = (c0, c1, c2)
        end = min(pos + chunk_size, buf.buffer.size(-1)) * model.cfg.preprocessor.window_stride
        pos += shift
        ids = [int(t) for t in hyps[0].y_sequence]
        trace.append((end, ids))
    return trace[-1][1] if trace else [], trace


CONTEXT_CHUNK_MS = {(70, 6): 560, (70, 1): 160, (70, 0): 80}


def per_context(model, rows: list[dict], eou_id: int | None, contexts=None) -> tuple[dict, dict]:
    """Offline and streaming WER at each attention context the model was trained with; and the
    hypotheses, {context: (offline, streaming)}."""
    refs, out, hyps = [r["text"] for r in rows], {}, {}
    default = list(model.encoder.att_context_size)
    for ctx in contexts or [tuple(c) for c in model.encoder.att_context_size_all]:
        model.encoder.set_default_att_context_size(list(ctx))
        off = offline(model, rows)
        st, _ = streaming(model, rows, eou_id, att_context=ctx)
        hyps[ctx] = (off, st)
        out[str(CONTEXT_CHUNK_MS.get(ctx, ctx))] = {"att_context": list(ctx), "offline_wer": round(wer(off, refs), 2),
                                                     "streaming_wer": round(wer(st, refs), 2)}
        print(ctx, out[str(CONTEXT_CHUNK_MS.get(ctx, ctx))], flush=True)
    model.encoder.set_default_att_context_size(default)
    return out, hyps


def streaming(model, rows: list[dict], eou_id: int | None = None, att_context=(70, 1)):
    texts, traces = [], []
    for r in rows:
        x, _ = sf.read(r["audio_filepath"], dtype="float32")
        ids, trace = stream(model, x, att_context)
        texts.append(clean(model.tokenizer.ids_to_text([i for i in ids if i != eou_id])))
        traces.append(trace)
    return texts, traces


def eou_times(trace, eou_id: int) -> list[float]:
    """Chunk-end times at which each new <EOU> appeared."""
    times, seen = [], 0
    for end, ids in trace:
        n = sum(1 for i in ids if i == eou_id)
        times += [end] * (n - seen)
        seen = n
    return times


def eou_metrics(model, work: Path, limit: int = 0) -> dict:
    eou_id = model.tokenizer.token_to_id(EOU)
    rows = read_manifest(work / "eou" / "test.jsonl")[:limit or None]
    texts, traces = streaming(model, rows, eou_id)
    lat, ok, early, missed = [], 0, 0, 0
    for r, tr in zip(rows, traces):
        end = r["segments"][-1][1]
        ts = eou_times(tr, eou_id)
        if not ts:
            missed += 1
            continue
        if ts[0] < end:
            early += 1
            continue
        lat.append(ts[0] - end)
        ok += ts[0] - end <= 0.5
    prow = read_manifest(work / "eou" / "test_pause.jsonl")[:limit or None]
    ptexts, ptraces = streaming(model, prow, eou_id)
    false_pause, end_ok = 0, 0
    for r, tr in zip(prow, ptraces):
        ts = eou_times(tr, eou_id)
        last_end = r["segments"][-1][1]
        false_pause += any(t < last_end for t in ts)
        end_ok += any(last_end <= t <= last_end + 0.5 for t in ts)
    return {
        "eou_within_500ms_pct": round(100 * ok / len(rows), 1),
        "eou_missed_pct": round(100 * missed / len(rows), 1),
        "eou_before_speech_end_pct": round(100 * early / len(rows), 1),
        "eou_latency_median_ms": round(1000 * float(np.median(lat)), 0) if lat else None,
        "eou_latency_p90_ms": round(1000 * float(np.percentile(lat, 90)), 0) if lat else None,
        "eou_on_mid_pause_pct": round(100 * false_pause / len(prow), 1),
        "eou_at_end_of_paused_pct": round(100 * end_ok / len(prow), 1),
        "streaming_wer_trailing_silence": round(wer(texts, [r["text"] for r in rows]), 2),
        "streaming_wer_mid_pause": round(wer(ptexts, [r["text"] for r in prow]), 2),
        "n_utterances": len(rows), "n_paused": len(prow),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kind", choices=["rnnt", "eou"], required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--limit", type=int, default=0, help="evaluate only the first N held-out utterances")
    ap.add_argument("--no-card", action="store_true")
    ap.add_argument("--contexts", help="per-context WER at these only, e.g. '70,1;70,0' (default: the model's "
                    "list); a context the model was not trained with compares an older model")
    a = ap.parse_args()
    # One thread: on a shared 2-core machine, 2 OpenMP threads per process made small-op streaming
    # steps many times slower (threads spin waiting for each other); 1 thread is the fast, safe choice.
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    t0 = time.time()
    model = load(a.model)
    rows = read_manifest(a.work / "asr" / "test.jsonl")
    if a.limit:
        rows = rows[:a.limit]
    refs = [r["text"] for r in rows]
    wanted = [tuple(int(v) for v in c.split(",")) for c in a.contexts.split(";")] if a.contexts else None
    eou_id = model.tokenizer.token_to_id(EOU) if a.kind == "eou" else None
    contexts, hyps = per_context(model, rows, eou_id, wanted)
    off = hyps.get(tuple(model.encoder.att_context_size), hyps[(70, 1)])[0]  # the default context, else [70,1]
    st = hyps[(70, 1)][1]  # 160 ms
    res = {"offline_wer": round(wer(off, refs), 2), "streaming_wer_160ms": round(wer(st, refs), 2),
           "n_heldout": len(rows), "contexts": contexts}
    res["examples"] = [{"ref": r, "offline": o, "stream": s} for r, o, s in list(zip(refs, off, st))[:8]]
    if a.kind == "eou":
        res.update(eou_metrics(model, a.work, a.limit))
    res["eval_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res, indent=1))
    (a.work / f"eval_{a.kind}.json").write_text(json.dumps(res, indent=1))
    if not a.no_card:
        from card import write_card

        write_card(a.kind, a.model, a.work)


if __name__ == "__main__":
    main()
