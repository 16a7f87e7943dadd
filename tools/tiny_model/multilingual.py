"""The tiny multilingual corpus: English, Spanish and German espeak-ng speech, one small vocabulary each.

    python tools/tiny_model/multilingual.py            # -> work/ml/{train,test}.jsonl + tests/assets/multilingual/

Why these sizes: the brief measured that a ~40-word vocabulary converges on a shared 2-core CPU in
minutes and a 500-word one does not; English reuses the ~100 words of `words.txt` (the encoder we start
from already knows them), Spanish and German get ~40 words each. Every manifest row carries `lang`, the
model's locale (the prompt it is trained with).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpus import _write, read_manifest, render  # noqa: E402
from sentences import split_sentences  # noqa: E402

ASSETS = HERE.parents[1] / "tests" / "assets" / "multilingual"
LOCALES = ["en-US", "es-ES", "de-DE"]
VOICES = {"en-US": ["en-us", "en-gb"], "es-ES": ["es", "es-419"], "de-DE": ["de"]}

ES_WORDS = ("hola adiós gracias por favor sí no uno dos tres cuatro cinco seis siete ocho nueve diez quiero "
            "un una café agua mesa para hoy mañana noche lunes martes viernes llamar abrir cerrar la el "
            "puerta luz ayuda buenos días").split()
DE_WORDS = ("hallo tschüss danke bitte ja nein eins zwei drei vier fünf sechs sieben acht neun zehn ich "
            "möchte einen eine kaffee wasser tee tisch für heute morgen abend montag dienstag freitag "
            "anrufen öffnen schließen die der tür licht hilfe guten tag").split()


def _es(r: random.Random) -> str:
    n = r.choice(ES_WORDS[7:17])
    options = [
        lambda: f"quiero un café {r.choice(['por favor', 'hoy', 'mañana'])}",
        lambda: f"una mesa para {n}",
        lambda: f"{r.choice(['abrir', 'cerrar'])} la puerta",
        lambda: f"{r.choice(['hola', 'sí', 'no'])} gracias",
        lambda: f"buenos días {r.choice(['hola', 'gracias'])}",
        lambda: f"llamar {r.choice(['hoy', 'mañana', 'lunes', 'martes', 'viernes'])} a las {n}",
        lambda: f"quiero agua por favor",
        lambda: f"ayuda por favor",
    ]
    return r.choice(options)()


def _de(r: random.Random) -> str:
    n = r.choice(DE_WORDS[6:16])
    options = [
        lambda: f"ich möchte einen kaffee {r.choice(['bitte', 'heute', 'morgen'])}",
        lambda: f"einen tisch für {n}",
        lambda: f"die tür {r.choice(['öffnen', 'schließen'])}",
        lambda: f"{r.choice(['hallo', 'ja', 'nein'])} danke",
        lambda: f"guten tag {r.choice(['hallo', 'danke'])}",
        lambda: f"{r.choice(['heute', 'morgen', 'montag', 'dienstag', 'freitag'])} um {n} anrufen",
        lambda: f"ich möchte wasser bitte",
        lambda: f"hilfe bitte",
    ]
    return r.choice(options)()


def _random(r: random.Random, words: list[str]) -> str:
    return " ".join(r.choice(words) for _ in range(r.choices([1, 2, 3, 4, 5], weights=[2, 3, 3, 3, 2])[0]))


def split_language(locale: str, seed: int, n_train: int, n_test: int) -> tuple[list[str], list[str]]:
    """Train sentences (repeats allowed) and DISTINCT held-out sentences (3-6 words) never in train."""
    if locale == "en-US":
        return split_sentences(seed, n_train, n_test)
    words, template = (ES_WORDS, _es) if locale == "es-ES" else (DE_WORDS, _de)
    r = random.Random(seed)
    draw = lambda: template(r) if r.random() < 0.5 else _random(r, words)  # noqa: E731
    test: list[str] = []
    while len(test) < n_test:
        s = draw()
        if 3 <= len(s.split()) <= 6 and s not in test:
            test.append(s)
    held = set(test)
    train = []
    while len(train) < n_train:
        s = draw()
        if s not in held:
            train.append(s)
    return train, test


def build(work: Path, seed: int, n_train: int, n_test: int, n_assets: int) -> None:
    """Synthesise train/test manifests for all languages, and a small committed test set per language."""
    out = work / "ml"
    (out / "wav").mkdir(parents=True, exist_ok=True)
    ASSETS.mkdir(parents=True, exist_ok=True)
    train_jobs, test_jobs, asset_rows, asset_jobs = [], [], [], []
    for k, loc in enumerate(LOCALES):
        train, test = split_language(loc, seed + k, n_train, n_test + n_assets)
        r = random.Random(seed * 31 + k)
        v = VOICES[loc]
        for i, t in enumerate(train):
            train_jobs.append(([(r.uniform(0.1, 0.5), t)], r.uniform(0.1, 0.5), seed * 1_000_033 + k * 100_000 + i,
                               out / "wav" / f"tr_{loc}_{i:05d}.wav", False, v))
        for i, t in enumerate(test[:n_test]):
            test_jobs.append(([(r.uniform(0.2, 0.4), t)], r.uniform(0.3, 0.5), seed * 2_000_029 + k * 100_000 + i,
                              out / "wav" / f"te_{loc}_{i:05d}.wav", False, v))
        for i, t in enumerate(test[n_test:]):
            name = f"{loc}_{i:02d}.wav"
            asset_jobs.append(([(0.3, t)], 0.5, seed * 3_000_017 + k * 100_000 + i, ASSETS / name, False, v))
            asset_rows.append({"audio": name, "text": t, "language": loc})
    langs = [job[3].name.split("_")[1] for job in train_jobs]
    rows = _write(train_jobs, out / "train.jsonl")
    _tag(rows, langs, out / "train.jsonl")
    rows = _write(test_jobs, out / "test.jsonl")
    _tag(rows, [job[3].name.split("_")[1] for job in test_jobs], out / "test.jsonl")
    rows = _write(asset_jobs, work / "ml" / "assets.jsonl")
    for a, row in zip(asset_rows, rows):
        a["speech_start"], a["speech_end"] = row["segments"][0][:2]
    (ASSETS / "manifest.json").write_text(json.dumps(asset_rows, indent=1, ensure_ascii=False) + "\n")


def _tag(rows: list[dict], langs: list[str], manifest: Path) -> None:
    for row, lang in zip(rows, langs):
        row["lang"] = lang
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=2121)
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--train", type=int, default=2500, help="training clips per language")
    ap.add_argument("--test", type=int, default=60, help="held-out clips per language")
    ap.add_argument("--assets", type=int, default=6, help="committed test clips per language")
    a = ap.parse_args()
    build(a.work, a.seed, a.train, a.test, a.assets)
    print({loc: sum(r["lang"] == loc for r in read_manifest(a.work / "ml" / "train.jsonl")) for loc in LOCALES})


if __name__ == "__main__":
    main()
