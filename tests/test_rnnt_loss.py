"""The vectorised PyTorch RNNT loss used to train the tiny models must equal NeMo's own RNNT loss.

Small sizes keep NeMo's CPU (numba) loss quick. Compares per-utterance values and the gradients with
respect to the joint logits, with ragged time and label lengths in one batch.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "tiny_model"))
from rnnt_loss import rnnt_loss  # noqa: E402


@pytest.fixture(scope="module")
def nemo_loss_cls():
    from nemo.collections.asr.losses.rnnt import RNNTLoss
    return RNNTLoss


@pytest.mark.parametrize("seed,B,T,U,V", [(0, 3, 12, 5, 8), (1, 4, 20, 7, 11), (2, 1, 6, 0, 5)])
def test_matches_nemo_value_and_grad(nemo_loss_cls, seed, B, T, U, V):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, U + 1, V, generator=g)
    targets = torch.randint(0, V - 1, (B, max(U, 1)), generator=g)[:, :U] if U else torch.zeros(B, 0, dtype=torch.long)
    t_len = torch.tensor([T - (i % 3) for i in range(B)])
    u_len = torch.tensor([max(U - (i % 2), 0) for i in range(B)])
    blank = V - 1

    x_ref = logits.clone().requires_grad_(True)
    ref_loss = nemo_loss_cls(num_classes=blank, reduction=None)(
        log_probs=x_ref.log_softmax(-1), targets=targets, input_lengths=t_len, target_lengths=u_len)
    ref_loss.sum().backward()

    x = logits.clone().requires_grad_(True)
    ours = rnnt_loss(x, targets, t_len, u_len, blank=blank, reduction="none")
    ours.sum().backward()

    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, ref_loss.float(), atol=1e-4, rtol=1e-5), (ours, ref_loss)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5), (x.grad - x_ref.grad).abs().max()


def test_mean_batch_reduction_and_trivial_case():
    # One frame, no labels: the only path is a single blank, loss = -log p(blank).
    logits = torch.tensor([[[[0.0, 1.0, 2.0]]]])
    loss = rnnt_loss(logits, torch.zeros(1, 0, dtype=torch.long), torch.tensor([1]), torch.tensor([0]), blank=2)
    assert torch.allclose(loss, -logits.log_softmax(-1)[0, 0, 0, 2])
    per = rnnt_loss(torch.randn(2, 5, 3, 4), torch.tensor([[1, 2], [0, 1]]), torch.tensor([5, 4]),
                    torch.tensor([2, 1]), blank=3, reduction="none")
    assert per.shape == (2,) and (per > 0).all()
