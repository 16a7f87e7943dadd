"""Vectorised RNNT loss in plain PyTorch, for training tiny models on CPU.

NeMo's CPU RNNT loss (numba) runs a Python-level loop and takes seconds per batch. This computes the
same negative log-likelihood with the forward algorithm over the T x (U+1) lattice, one anti-diagonal
(t + u = d) at a time: T + U vectorised steps, and autograd gives the gradients. Used for training only;
the saved .nemo keeps NeMo's own loss config. tests/test_rnnt_loss.py checks value and gradients against
NeMo's loss.
"""
from __future__ import annotations

import torch

_NEG = -1e30  # finite "-inf": keeps logaddexp and its gradient NaN-free in unreachable cells


def rnnt_loss(logits: torch.Tensor, targets: torch.Tensor, logit_lengths: torch.Tensor,
              target_lengths: torch.Tensor, blank: int, reduction: str = "mean_batch") -> torch.Tensor:
    """RNNT negative log-likelihood.

    logits: (B, T, U+1, V) joint output (raw or already log-softmaxed; log_softmax is idempotent).
    targets: (B, U) int labels; logit_lengths: (B,) valid T; target_lengths: (B,) valid U.
    reduction: "none" (per-utterance), "sum", "mean_batch" (NeMo's default: mean of per-utterance losses).
    """
    B, T, U1, V = logits.shape
    U = U1 - 1
    lp = logits.log_softmax(dim=-1)
    blank_lp = lp[..., blank]  # (B, T, U+1)
    if U > 0:
        idx = targets[:, None, :U, None].expand(B, T, U, 1).long()
        emit_lp = lp[:, :, :U, :].gather(3, idx).squeeze(3)  # (B, T, U)
    else:
        emit_lp = lp.new_zeros(B, T, 0)

    # Skew to diagonals: skew[:, d, t] = x[:, t, d - t] (or _NEG where d - t is out of range).
    D = T + U
    t_idx = torch.arange(T)
    u_of = torch.arange(D)[:, None] - t_idx[None, :]  # (D, T)

    def skew(x: torch.Tensor, width: int) -> torch.Tensor:
        ok = (u_of >= 0) & (u_of < width)
        g = x.gather(2, u_of.clamp(0, max(width - 1, 0)).T[None].expand(B, T, D))  # (B, T, D)
        return g.transpose(1, 2).masked_fill(~ok[None], _NEG)

    blank_sk = skew(blank_lp, U + 1)  # (B, D, T)
    emit_sk = skew(emit_lp, U) if U > 0 else blank_lp.new_full((B, D, T), _NEG)

    first = blank_lp.new_full((B, T), _NEG)
    first = torch.cat([blank_lp.new_zeros(B, 1), first[:, 1:]], dim=1)  # alpha[0, 0] = 0
    diags = [first]
    pad = blank_lp.new_full((B, 1), _NEG)
    for d in range(1, D):
        prev = diags[-1]
        from_above = torch.cat([pad, (prev + blank_sk[:, d - 1])[:, :-1]], dim=1)  # (t-1, u) --blank-->
        from_left = prev + emit_sk[:, d - 1]  # (t, u-1) --emit-->
        cur = torch.logaddexp(from_above, from_left)
        valid = (u_of[d] >= 0) & (u_of[d] <= U)
        diags.append(cur.masked_fill(~valid[None], _NEG))
    alpha = torch.stack(diags, dim=1)  # (B, D, T)

    t_last = (logit_lengths - 1).long()
    d_last = t_last + target_lengths.long()
    b = torch.arange(B)
    ll = alpha[b, d_last, t_last] + blank_lp[b, t_last, target_lengths.long()]
    nll = -ll
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return nll.mean()
