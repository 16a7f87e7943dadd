"""Write the markdown model card next to a .nemo from the training and evaluation JSON in work/."""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

TARGETS = {
    "offline_wer": "<= 10 %",
    "streaming_wer_160ms": "within 2 points of offline",
    "eou_within_500ms_pct": ">= 90 %",
    "eou_on_mid_pause_pct": "< 5 %",
}


def _mark(key: str, v, res: dict) -> str:
    if v is None:
        return ""
    if key == "offline_wer":
        return "met" if v <= 10 else "NOT met"
    if key == "streaming_wer_160ms":
        return "met" if v - res["offline_wer"] <= 2 else "NOT met"
    if key == "eou_within_500ms_pct":
        return "met" if v >= 90 else "NOT met"
    if key == "eou_on_mid_pause_pct":
        return "met" if v < 5 else "NOT met"
    return ""


def _contexts(run: dict) -> str:
    if run.get("context"):
        return f"att_context [{run['context']}] only"
    if run.get("context_probs"):
        return f"att_context [70,6]/[70,1]/[70,0] sampled {run['context_probs'].replace(',', '/')}"
    return "att_context random [70,6]/[70,1]"


def _lead(run: dict) -> str:
    share = run.get("silent_lead")
    return f", {share:.0%} of clips with 0.1-0.6 s of digital silence in front" if share else ""


def write_card(kind: str, nemo: Path, work: Path) -> Path:
    tr = json.loads((work / f"train_{kind}.json").read_text())
    ev = json.loads((work / f"eval_{kind}.json").read_text())
    name = nemo.stem
    title = ("Tiny cache-aware streaming FastConformer, hybrid RNNT+CTC" if kind == "rnnt"
             else "Tiny cache-aware streaming FastConformer RNNT with end-of-utterance tokens")
    cls = ("EncDecHybridRNNTCTCBPEModel" if kind == "rnnt"
           else "nemo.collections.asr.models.asr_eou_models.EncDecRNNTBPEEOUModel")
    lines = [
        f"# {name}.nemo - {title}", "",
        "A TEST model: it knows only the ~100 words in `tools/tiny_model/words.txt`, spoken by espeak-ng.",
        "It exists so tests and the offline demo show real words without downloading weights.", "",
        "## Model",
        f"- class `{cls}`, NeMo 3.0.0; {nemo.stat().st_size / 1e6:.1f} MB",
        "- FastConformer encoder d_model 128, 4 layers, 4 heads, causal 8x dw_striding subsampling (64 ch),",
        "  causal convolutions (kernel 9), `att_context_style: chunked_limited`,",
        "  `att_context_size: [[70,6],[70,1],[70,0]]` (560 / 160 / 80 ms chunks), `normalize: NA`, 80 mel features",
        "- RNNT prediction net (LSTM 128) and joint 128" + (", CTC auxiliary head (weight 0.5)" if kind == "rnnt" else ""),
        f"- SentencePiece BPE vocabulary {tr['vocab']}" + (" (128 BPE pieces + `<EOU>`, `<EOB>` as the last two)"
                                                          if kind == "eou" else ""),
        "", "## Data",
        f"- {tr['utterances']} synthetic utterances ({tr['hours']} h), espeak-ng: 4 English voices x 4 variants,",
        "  speed 135-195 wpm, pitch 30-70, 16 kHz (soxr from 22.05 kHz), white noise at 25-45 dB SNR, gain 0.5-1.0",
        "- sentences: voice-agent templates + random word strings, 1-8 words, vocabulary in `words.txt`",
    ]
    if kind == "eou":
        lines += ["- `<EOU>` where each turn ends (manifest field `eou_after`), never at a mid-sentence pause.",
                  "  `work/eou`: 55 % one utterance, 30 % one utterance with a 0.12-0.3 s mid-sentence pause,",
                  "  15 % two utterances 0.8-1.5 s apart; half the clips end 0.35-0.5 s after the speech (so `<EOU>`",
                  "  must come by then), half have 0.6-1.5 s of trailing silence. `work/eou2` (other sentences and",
                  "  clips): 50 % with a mid-sentence pause, short tails 0.45-0.6 s.",
                  "- EOU test: held-out sentences with 1 s trailing silence; pause test: the same sentences cut at",
                  "  a random word boundary with a 0.15-0.3 s pause"]
    lines += [
        f"- held-out: {ev['n_heldout']} sentences never seen in training (3-8 words)",
        "", "## Training",
        f"- {'last stage: ' if list(work.glob(f'train_{kind}_stage*.json')) else ''}"
        f"{tr['steps']} steps, batch {tr['batch']}, AdamW lr {tr['lr']}, {tr['warmup']} warm-up steps then cosine,",
        f"  no SpecAugment, {tr.get('threads', 2)} CPU thread(s) on a shared 2-core machine, plain PyTorch loop with",
        f"  the vectorised RNNT loss: {tr['train_minutes']} min",
        f"- seed {tr['seed']}; final train RNNT loss {tr['final_rnnt_loss']}",
    ]
    stages = sorted(work.glob(f"train_{kind}_stage*.json"))
    if stages:
        prev = [json.loads(p.read_text()) for p in stages]
        for i, p in enumerate(prev, 1):
            lines.append(f"- stage {i}: {p['steps']} steps, {p['train_minutes']} min, lr {p['lr']}, "
                         f"warm-up {p['warmup']}, seed {p['seed']}, {p.get('threads', 2)} thread(s), "
                         f"data `{p.get('data', 'asr' if kind == 'rnnt' else 'eou')}`, init {p.get('init')}, "
                         f"{_contexts(p)}{_lead(p)}")
        lines.append(f"- stage {len(prev) + 1} (the committed model): the run described above, data "
                     f"`{tr.get('data', 'asr' if kind == 'rnnt' else 'eou')}`, init {tr.get('init')}, "
                     f"{_contexts(tr)}{_lead(tr)}")
        lines.append(f"- total: {sum(p['steps'] for p in prev) + tr['steps']} steps, "
                     f"{sum(p['train_minutes'] for p in prev) + tr['train_minutes']:.1f} min")
    if kind == "eou":
        lines.append(f"- initialised from {tr.get('init') or 'tiny_rnnt.nemo'} (same BPE pieces; new `<EOU>`/`<EOB>`"
                     " output rows), RNNT loss only")
    lines += ["", "## Held-out results", "", "| metric | value | target | |", "|---|---|---|---|"]
    for key, label in [("offline_wer", "offline WER, RNNT greedy (%)"),
                       ("streaming_wer_160ms", "streaming WER, 160 ms chunks, [70,1] (%)"),
                       ("eou_within_500ms_pct", "`<EOU>` within 500 ms after speech end (%)"),
                       ("eou_on_mid_pause_pct", "`<EOU>` on a mid-sentence pause (%)")]:
        if key in ev:
            lines.append(f"| {label} | {ev[key]} | {TARGETS[key]} | {_mark(key, ev[key], ev)} |")
    for key in ["eou_latency_median_ms", "eou_latency_p90_ms", "eou_missed_pct", "eou_before_speech_end_pct",
                "eou_at_end_of_paused_pct", "streaming_wer_trailing_silence", "streaming_wer_mid_pause"]:
        if key in ev:
            lines.append(f"| {key} | {ev[key]} | | |")
    for name, label, judged in [
        ("worker", "streaming WER through our worker's adapter, 160 ms, 16 streams batched (%)", True),
        ("pipeline", "streaming WER through NeMo's stock `CacheAwareRNNTPipeline.run()` ([70,1], stream starts "
                     "padded with log-mel silence) (%)", False),
    ]:  # written by pipeline_check.py (--ours / without)
        path = work / f"{name}_{nemo.stem}.json"
        if path.exists():
            v = json.loads(path.read_text())[f"{name}_streaming_wer_160ms"]
            target = f" {TARGETS['streaming_wer_160ms']} | {_mark('streaming_wer_160ms', v, ev)} " if judged else " | "
            lines.append(f"| {label} | {v} |{target}|")
    if ev.get("contexts"):
        lines += ["", "Per attention context (offline: the whole utterance under that context's mask; streaming:",
                  "`conformer_stream_step`, one stream at a time, chunks of that size):", "",
                  "| chunk | att_context | offline WER % | streaming WER % |", "|---|---|---|---|"]
        lines += [f"| {ms} ms | {c['att_context']} | {c['offline_wer']} | {c['streaming_wer']} |"
                  for ms, c in sorted(ev["contexts"].items(), key=lambda kv: int(kv[0]))]
    lines += ["", "Streaming WER is measured with `conformer_stream_step`, one stream at a time, 160 ms chunks,",
              "and through the worker's own adapter (`tools/tiny_model/pipeline_check.py --ours`).",
              "", "Examples (reference / offline / streaming):", ""]
    lines += [f"- `{e['ref']}` / `{e['offline']}` / `{e['stream']}`" for e in ev["examples"][:5]]
    lines += ["", "Rebuild: `python tools/tiny_model/make_data.py && python tools/tiny_model/train.py ...`"
              " (see tools/tiny_model/README.md)", ""]
    notes = HERE / f"notes_{kind}.md"
    if notes.exists():
        lines += ["## Notes", "", notes.read_text().strip(), ""]
    out = nemo.with_suffix(".md")
    out.write_text("\n".join(lines))
    return out
