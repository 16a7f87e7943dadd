"""One tiny-model builder: the training recipe (tools/tiny_model/model.py) builds its models
with services/tiny_model.py, and what it builds is exactly the architecture of the trained
models in tests/assets — their weights load into it strictly and it computes the same output."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import ASSETS

sys.path.insert(0, str(ASSETS.parent.parent / "tools" / "tiny_model"))


@pytest.mark.parametrize("asset,eou", [("tiny_rnnt.nemo", False), ("tiny_eou.nemo", True)])
def test_the_recipe_builds_the_trained_models_architecture(tmp_path, asset, eou):
    if not (ASSETS / asset).exists():
        pytest.skip(f"tests/assets/{asset} is not there")
    from nemo.collections.asr.models import ASRModel

    import model as recipe  # tools/tiny_model/model.py
    from services import tiny_model

    trained = ASRModel.restore_from(str(ASSETS / asset), map_location="cpu").eval()
    (tmp_path / "tokenizer.model").write_bytes(trained.tokenizer.tokenizer.serialized_model_proto())
    tiny_model._write_vocab(tmp_path)

    built = recipe.build_model(tmp_path, eou=eou)
    assert type(built) is type(trained)
    built.load_state_dict(trained.state_dict(), strict=True)  # every weight, every shape
    built.eval()
    torch.manual_seed(0)
    audio = torch.randn(1, 16000) * 0.1
    length = torch.tensor([16000])

    def encode(model):
        features, frames = model.preprocessor(input_signal=audio, length=length)
        return model.encoder(audio_signal=features, length=frames)

    with torch.no_grad():
        ours, theirs = encode(built), encode(trained)
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=0)
    assert built.cfg.encoder.att_context_size == [list(c) for c in trained.cfg.encoder.att_context_size]
