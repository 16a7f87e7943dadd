"""The committed tiny multitalker ASR (tests/assets/tiny_multitalker.nemo): a real NeMo
EncDecMultiTalkerRNNTBPEModel streamed 160 ms at a time ([70,1]) as the worker streams a row, on
held-out conversations in tests/assets/conversations/ (sentences and, for test_voices_*, voices never
in training). Its speaker targets must steer it: with the true targets it writes the target speaker's
turn; with the targets zeroed or pointed at the other voice it writes something else.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "multitalker"))
from conversations import labels_array  # noqa: E402
from cpwer import edit_distance  # noqa: E402
from evaluate_multitalker import load_asr, stream_row  # noqa: E402
from turns import crop_audio, crop_frames, targets, turns_of  # noqa: E402

ASSETS = ROOT / "tests" / "assets"
CONVERSATIONS = ("test_00001.wav", "test_00003.wav", "test_00010.wav")  # held-out sentences, training voices
# The card's streaming oracle-target WER on the 298 held-out-sentence turns is 15.5 %; three
# conversations scatter, so the bound has a margin.
ORACLE_WER_CARD = 15.5
ORACLE_WER_BOUND = ORACLE_WER_CARD + 10.0


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_asr(ASSETS / "tiny_multitalker.nemo")


@pytest.fixture(scope="module")
def turns():
    """(reference text, crop audio, spk targets, bg targets) of every turn of the held-out conversations."""
    rows = {json.loads(x)["audio_filepath"]: json.loads(x)
            for x in (ASSETS / "conversations" / "manifest.jsonl").read_text().splitlines()}
    out = []
    for name in CONVERSATIONS:
        row = rows[name]
        x, _ = sf.read(ASSETS / "conversations" / name, dtype="float32")
        y = labels_array(row)
        for t in turns_of(row, 0):
            a, b = crop_frames(t, len(y), None)
            out.append((t.text, crop_audio(x, a, b), *targets(y, t.speaker, a, b - a)))
    return out


@pytest.fixture(scope="module")
def oracle_hyps(model, turns):
    return [stream_row(model, audio, spk, bg) for _, audio, spk, bg in turns]


def errors(ref: str, hyp: str) -> int:
    return edit_distance(ref.split(), hyp.split())


def test_committed_model_is_a_small_multitalker_model(model):
    assert (ASSETS / "tiny_multitalker.nemo").stat().st_size <= 10_000_000
    assert type(model).__name__ == "EncDecMultiTalkerRNNTBPEModel"
    assert model.add_bg_spk_kernel and list(model.spk_kernels) == ["0", "1", "2", "3"]  # before every encoder layer


def test_held_out_turns_with_oracle_targets(turns, oracle_hyps):
    """Every turn of three held-out conversations, each a fresh 160 ms stream with the true targets."""
    words = sum(len(ref.split()) for ref, *_ in turns)
    wer = 100.0 * sum(errors(ref, h) for (ref, *_), h in zip(turns, oracle_hyps)) / words
    assert words > 60
    print(f"oracle WER {wer:.1f} % over {words} words")
    assert wer <= ORACLE_WER_BOUND, wer


def test_targets_steer_the_transcript(model, turns, oracle_hyps):
    """Where both voices sound in a crop, the targets decide whose words come out: zeroed targets or the
    other voice's targets give more errors against the target speaker's text than the real ones."""
    both = [(k, t) for k, t in enumerate(turns) if (t[2] * t[3]).sum() > 0]
    assert len(both) >= 4
    real = zeroed = swapped = 0
    changed = False
    for k, (ref, audio, spk, bg) in both:
        z = stream_row(model, audio, np.zeros_like(spk), np.zeros_like(bg))
        o = stream_row(model, audio, bg, spk)
        real += errors(ref, oracle_hyps[k])
        zeroed += errors(ref, z)
        swapped += errors(ref, o)
        changed = changed or z != oracle_hyps[k]
    print("errors real/zeroed/swapped", real, zeroed, swapped)
    assert changed
    assert real < zeroed and real < swapped, (real, zeroed, swapped)
