"""Held-out WER of the tiny multilingual model through the worker's own adapter, and its model card.

    python tools/tiny_model/evaluate_multilingual.py --model tests/assets/tiny_multilingual.nemo

Every held-out clip (work/ml/test.jsonl, sentences never in training) streams through
`MultilingualRNNTAdapter` (16 streams per step, mixed languages), at each chunk size the model was
trained for: with the right prompt, with a wrong one (the next locale: en→es, es→de, de→en), and with
`auto` (WER of the untagged text, and how often the tag names the clip's language). Writes
work/eval_multilingual.json and tests/assets/tiny_multilingual.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))
from corpus import read_manifest  # noqa: E402
from evaluate import wer  # noqa: E402
from multilingual import LOCALES  # noqa: E402

CHUNKS = (160, 80, 320, 560)


def transcribe(adapter, clips: list, locales: list[str], batch: int = 16) -> list[tuple[str, str | None]]:
    """(text, language of its last final) per clip, `batch` clips stepped together."""
    from services.engine.adapter import StepItem

    n, out = adapter.chunk_samples, []
    for first in range(0, len(clips), batch):
        audio, langs = clips[first:first + batch], locales[first:first + batch]
        texts, tags = [[] for _ in audio], [None] * len(audio)
        for start in range(0, max(len(x) for x in audio) + 1, n):
            live = [k for k, x in enumerate(audio) if start <= len(x)]  # a whole-chunk clip ends with an empty last chunk
            items = [StepItem(10_000 + first + k, audio[k][start:start + n], start == 0, start + n > len(audio[k]),
                              language=langs[k] if start == 0 else None) for k in live]
            for k, res in zip(live, adapter.step(items)):
                for final in res.finals:
                    texts[k].append(final.text)
                    tags[k] = final.language or tags[k]
        out += [(" ".join(" ".join(t).split()), tag) for t, tag in zip(texts, tags)]
    return out


def evaluate(model: str, rows: list[dict], chunks=CHUNKS) -> dict:
    import torch

    from services.adapters.multilingual import MultilingualRNNTAdapter

    torch.set_num_threads(1)
    clips = [sf.read(r["audio_filepath"], dtype="float32")[0] for r in rows]
    wrong = {loc: LOCALES[(i + 1) % len(LOCALES)] for i, loc in enumerate(LOCALES)}
    res: dict = {"n_per_language": {loc: sum(r["lang"] == loc for r in rows) for loc in LOCALES}}
    for chunk in chunks:
        adapter = MultilingualRNNTAdapter(model, chunk_ms=chunk, max_streams=32)
        for mode in ("right", "wrong", "auto") if chunk == 160 else ("right",):
            prompts = [r["lang"] if mode == "right" else wrong[r["lang"]] if mode == "wrong" else "auto" for r in rows]
            hyps = transcribe(adapter, clips, prompts)
            for loc in LOCALES:
                idx = [i for i, r in enumerate(rows) if r["lang"] == loc]
                key = f"{chunk}ms_{mode}_{loc}"
                res[key] = round(wer([hyps[i][0] for i in idx], [rows[i]["text"] for i in idx]), 2)
                if mode == "auto":
                    res[f"{chunk}ms_auto_langid_{loc}"] = round(100 * sum(hyps[i][1] == loc for i in idx) / len(idx), 1)
                if mode == "right" and chunk == 160:
                    res[f"examples_{loc}"] = [[rows[i]["text"], hyps[i][0]] for i in idx[:4]]
                if mode == "wrong" and chunk == 160:
                    res[f"examples_wrong_{loc}"] = [[rows[i]["text"], hyps[i][0]] for i in idx[:2]]
            print(chunk, mode, {loc: res[f"{chunk}ms_{mode}_{loc}"] for loc in LOCALES}, flush=True)
    return res


def card(res: dict, train: dict, size_mb: float) -> str:
    lines = [
        "# tiny_multilingual.nemo - Tiny prompt-conditioned multilingual streaming RNNT (en-US, es-ES, de-DE)",
        "",
        "A TEST model, in the shape of Nemotron 3.5 ASR: it knows ~100 English words (`tools/tiny_model/words.txt`)",
        "and ~40 Spanish and ~40 German ones (`tools/tiny_model/multilingual.py`), spoken by espeak-ng.",
        "",
        "## Model",
        f"- class `EncDecRNNTBPEModelWithPrompt` (NeMo 3.0.0), {size_mb:.1f} MB; prompt dictionary "
        "`{en-US: 0, es-ES: 1, de-DE: 2, auto: 3}`, 16 one-hot prompts into `prompt_kernel`",
        "  (Linear(128+16, 256) → ReLU → Linear(256, 128)) on every encoder frame",
        "- encoder as `tiny_rnnt.nemo` (FastConformer d_model 128 × 4 layers, causal, `normalize: NA`), trained for",
        "  `att_context_size` [[70,6],[68,3],[70,1],[70,0]]: 560 / 320 / 160 / 80 ms chunks",
        "- RNNT only (LSTM 128, joint 128), SentencePiece BPE 160 with the tags `<en-US>` `<es-ES>` `<de-DE>` as",
        "  whole pieces. `auto`: the transcript ends with the tag of the language heard (NeMo's tag form,",
        "  `rnnt_decoding.lang_tag_pattern`); the worker cuts it out and reports it as the final's `language`.",
        "",
        "## Data and training",
        f"- {train['utterances']} clips ({train['hours']} h), 2,500 per language: espeak-ng voices en-us/en-gb, "
        "es/es-419, de × 4 variants,",
        "  1-5 word phrases and random word strings, noise 25-45 dB SNR; held-out sentences never in training",
        f"- started from `tiny_rnnt.nemo` (every same-shaped tensor: encoder, LSTM, joint projections), prompt kernel",
        "  initialised to an exact identity on the encoder path (prompt columns zero), so step 0 is the English model",
        f"- {train['steps']} steps, batch {train['batch']}, AdamW lr {train['lr']}, {train['warmup']} warm-up then cosine, "
        f"{int(100 * train['auto_share'])} % of clips with the `auto` prompt (+ tag), "
        f"1 CPU thread on a shared 2-core machine: {train['train_minutes']} min; final train loss {train['final_rnnt_loss']}",
        "",
        "## Held-out WER (%), streaming through the worker's adapter (16 mixed-language streams per step)",
        "",
        "| prompt | chunk | " + " | ".join(LOCALES) + " |",
        "|---|---|" + "---|" * len(LOCALES),
    ]
    for chunk in CHUNKS:
        lines.append(f"| right | {chunk} ms | " + " | ".join(f"{res[f'{chunk}ms_right_{loc}']:.1f}" for loc in LOCALES) + " |")
    lines.append("| wrong (en→es, es→de, de→en) | 160 ms | "
                 + " | ".join(f"{res[f'160ms_wrong_{loc}']:.1f}" for loc in LOCALES) + " |")
    lines.append("| auto | 160 ms | " + " | ".join(f"{res[f'160ms_auto_{loc}']:.1f}" for loc in LOCALES) + " |")
    lines.append("| auto: tag = the clip's language (%) | 160 ms | "
                 + " | ".join(f"{res[f'160ms_auto_langid_{loc}']:.1f}" for loc in LOCALES) + " |")
    if all(res.get(f"80ms_right_{loc}") == 100.0 for loc in LOCALES):
        lines += ["", "80 ms: the worker's vectorised step writes no token at [70,0] on this model, although the model",
                  "transcribes these clips at [70,0] offline and through NeMo's own `conformer_stream_step` (checked by",
                  "hand on the committed clips): a defect of the step at one encoder frame per chunk, not of the model;",
                  "`test_every_trained_chunk_size_transcribes[80]` is a strict xfail until it is fixed."]
    mean = {m: sum(res[f"160ms_{m}_{loc}"] for loc in LOCALES) / len(LOCALES) for m in ("right", "wrong", "auto")}
    lines += [
        "",
        f"What the prompt does here: the right prompt gives {mean['right']:.1f} % mean WER, `auto` {mean['auto']:.1f} %,",
        f"a wrong prompt {mean['wrong']:.1f} %. The wrong prompt costs little because",
        "espeak-ng's voices differ per language, so this model hears the language and leans on the prompt",
        "mostly for what only the prompt decides: whether the sentence ends with a language tag (`auto`).",
        "Nemotron 3.5 on real speech depends on it far more; the tests check the mechanics (each row its own",
        "prompt, batched == alone), not a size of effect.",
    ]
    lines += ["", f"Clips per language: {res['n_per_language']}.", "", "Examples at 160 ms (reference / right prompt):", ""]
    for loc in LOCALES:
        lines += [f"- {loc}: `{r}` / `{h}`" for r, h in res[f"examples_{loc}"][:3]]
    lines += ["", "With the wrong prompt (reference / output):", ""]
    for loc in LOCALES:
        lines += [f"- {loc} audio: `{r}` / `{h}`" for r, h in res[f"examples_wrong_{loc}"][:2]]
    lines += ["", "Batched vs alone: five streams in one batch (en-US, es-ES, de-DE, `auto`, and one switching",
              "en-US → de-DE mid-stream), joining at different steps, give exactly (float64) what each gives alone:",
              "`tests/test_multilingual_adapter.py::test_three_languages_batched_equal_each_alone`.",
              "", "Rebuild: see `tools/tiny_model/README.md` (multilingual section).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--limit", type=int, default=0, help="clips per language (0: all)")
    ap.add_argument("--chunks", default=",".join(map(str, CHUNKS)), help="chunk sizes (ms), 160 first")
    ap.add_argument("--no-card", action="store_true")
    a = ap.parse_args()
    rows = read_manifest(a.work / "ml" / "test.jsonl")
    if a.limit:
        rows = [r for loc in LOCALES for r in [r for r in rows if r["lang"] == loc][:a.limit]]
    res = evaluate(str(a.model), rows, tuple(int(c) for c in a.chunks.split(",")))
    (a.work / "eval_multilingual.json").write_text(json.dumps(res, indent=1, ensure_ascii=False))
    if not a.no_card:
        train = json.loads((a.work / "train_multilingual.json").read_text())
        out = HERE.parents[1] / "tests" / "assets" / "tiny_multilingual.md"
        out.write_text(card(res, train, a.model.stat().st_size / 1e6))
        print("wrote", out)


if __name__ == "__main__":
    main()
