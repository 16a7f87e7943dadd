"""Device-independent cost of a step: tensor ops dispatched, host syncs, Python calls.

On a GPU every dispatched op is (about) one kernel launch of ~5 us host time and every
`aten._local_scalar_dense` (`.item()`, `bool(tensor)`) a sync, so counts per added session
say how a step scales long before a GPU is at hand; counts are asserted in tests, times never.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        return func(*args, **(kwargs or {}))


def count(run: Callable[[], object]) -> dict:
    """{'ops', 'syncs', 'calls'} of one call of `run` (calls: Python and C function calls)."""
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    ops = _Ops()
    with ops:
        sys.setprofile(profile)
        try:
            run()
        finally:
            sys.setprofile(None)
    return {"ops": ops.ops, "syncs": ops.syncs, "calls": calls}


def per_added(low: dict, high: dict, n_low: int, n_high: int) -> dict:
    """Marginal cost per added session between two counts."""
    return {k: (high[k] - low[k]) / (n_high - n_low) for k in low}
