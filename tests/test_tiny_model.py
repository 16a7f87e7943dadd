"""The committed tiny models (tests/assets/*.nemo) recognise real words from held-out synthetic speech.

Real NeMo models, real audio, no mocks: offline RNNT transcription of the held-out WAVs and the demo,
and cache-aware streaming of the multi-utterance EOU clips (160 ms chunks) with <EOU> timing checks.
"""
import json
import os
import sys
from pathlib import Path

import pytest
import soundfile as sf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets"
sys.path.insert(0, str(ROOT / "tools" / "tiny_model"))


def word_accuracy(hyps, refs):
    from nemo.collections.asr.metrics.wer import word_error_rate

    return 1.0 - word_error_rate(hypotheses=hyps, references=refs)


@pytest.fixture(scope="session")
def torch_threads():
    import torch

    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def rnnt_model(torch_threads):
    from nemo.collections.asr.models import ASRModel

    return ASRModel.restore_from(str(ASSETS / "tiny_rnnt.nemo"), map_location="cpu").eval()


@pytest.fixture(scope="session")
def eou_model(torch_threads):
    from nemo.collections.asr.models.asr_eou_models import EncDecRNNTBPEEOUModel

    return EncDecRNNTBPEEOUModel.restore_from(str(ASSETS / "tiny_eou.nemo"), map_location="cpu").eval()


def test_assets_are_16k_mono_s16_with_manifests():
    rows = json.loads((ASSETS / "heldout" / "manifest.json").read_text())
    assert len(rows) >= 20
    for r in rows:
        info = sf.info(str(ASSETS / "heldout" / r["audio"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 3 <= len(r["text"].split()) <= 8
        assert 0 < r["speech_start"] < r["speech_end"] < info.duration
    words = set((ROOT / "tools" / "tiny_model" / "words.txt").read_text().split())
    assert all(set(r["text"].split()) <= words for r in rows)
    for r in json.loads((ASSETS / "eou" / "manifest.json").read_text()):
        utts = r["utterances"]
        assert 2 <= len(utts) <= 3
        assert all(a["speech_end"] + 1.0 < b["speech_start"] for a, b in zip(utts, utts[1:]))
    for r in json.loads((ASSETS / "pause" / "manifest.json").read_text()):
        start, end = r["pause"]
        assert 0.15 <= end - start <= 0.31 and end < r["speech_end"] < sf.info(str(ASSETS / "pause" / r["audio"])).duration
        assert len(r["text"].split()) >= 3 and set(r["text"].split()) <= words
    assert sf.info(str(ASSETS / "demo.wav")).samplerate == 16000
    assert len((ASSETS / "demo.txt").read_text().split("\n")) >= 3


def test_tiny_models_are_small():
    for name in ("tiny_rnnt.nemo", "tiny_eou.nemo"):
        assert (ASSETS / name).stat().st_size <= 10 * 1024 * 1024


def test_rnnt_transcribes_heldout_offline(rnnt_model):
    rows = json.loads((ASSETS / "heldout" / "manifest.json").read_text())
    out = rnnt_model.transcribe([str(ASSETS / "heldout" / r["audio"]) for r in rows], batch_size=8, verbose=False)
    hyps = [h.text if hasattr(h, "text") else h for h in out]
    acc = word_accuracy(hyps, [r["text"] for r in rows])
    assert acc >= 0.8, list(zip(hyps, [r["text"] for r in rows]))


def test_eou_model_streams_demo_with_one_eou_per_sentence(eou_model):
    """The demo (3 sentences, ~1 s pauses) streamed at 160 ms: every word, and an <EOU> after each sentence.

    (tiny_rnnt was trained on single utterances only and drops words after the first long pause of
    the demo; the EOU model saw multi-utterance clips. See tests/assets/tiny_rnnt.md.)"""
    from evaluate import stream

    ref = (ASSETS / "demo.txt").read_text().split("\n")
    x, _ = sf.read(str(ASSETS / "demo.wav"), dtype="float32")
    ids, _ = stream(eou_model, x, att_context=(70, 1))
    eou = eou_model.eou_token
    assert ids.count(eou) == 3 and ids[-1] == eou
    hyp = eou_model.tokenizer.ids_to_text([i for i in ids if i != eou])
    assert word_accuracy([hyp], [" ".join(ref)]) >= 0.8, hyp


def test_eou_model_tokenizer_ends_with_eou_eob(eou_model):
    tok = eou_model.tokenizer
    n = tok.vocab_size
    assert tok.ids_to_tokens([n - 2, n - 1]) == ["<EOU>", "<EOB>"]
    assert eou_model.eou_token == n - 2


def test_eou_streaming_ends_each_utterance(eou_model):
    """Each utterance of a multi-utterance clip gets one <EOU>, after its speech ends and soon after."""
    from evaluate import eou_times, stream

    rows = json.loads((ASSETS / "eou" / "manifest.json").read_text())
    eou_id = eou_model.eou_token
    good = total = 0
    texts, refs = [], []
    for r in rows:
        x, _ = sf.read(str(ASSETS / "eou" / r["audio"]), dtype="float32")
        ids, trace = stream(eou_model, x, att_context=(70, 1))
        times = eou_times(trace, eou_id)
        for u in r["utterances"]:
            total += 1
            good += any(u["speech_end"] <= t <= u["speech_end"] + 0.8 for t in times)
        inside = [t for t in times for u in r["utterances"] if u["speech_start"] < t < u["speech_end"]]
        assert not inside, (r["audio"], times)  # never ends a turn while someone is speaking
        texts.append(eou_model.tokenizer.ids_to_text([i for i in ids if i != eou_id]).replace("<EOU>", " "))
        refs.append(r["text"])
    assert good / total >= 0.8, (good, total)
    assert word_accuracy([" ".join(t.split()) for t in texts], refs) >= 0.8, list(zip(texts, refs))
