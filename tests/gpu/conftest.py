"""tests/gpu: what only a GPU can show, run by `make gpu-check` (scripts/gpu_check.py).

Collected only with `-m gpu` (tests/conftest.py keeps them out of the CPU run's collection) and
skipped without CUDA. `NVASR_GPU_CHECK_DEVICE` picks the device (default cuda); the check's dry
mode on the CPU (`--device cpu --small`, tests/test_gpu_check.py in CI) sets it to cpu and
`NVASR_GPU_CHECK_SMALL=1`, which swaps the full-size random models for `random:tiny` and the
batch sizes 32 → 8 → 1 → 48 for 3 → 2 → 1 → 4, so the same code paths run in seconds.
"""

from __future__ import annotations

import os

import pytest
import torch

DEVICE = os.environ.get("NVASR_GPU_CHECK_DEVICE", "cuda")
SMALL = os.environ.get("NVASR_GPU_CHECK_SMALL") == "1"
BATCHES = (3, 2, 1, 4) if SMALL else (32, 8, 1, 48)
# worker → the random: spec of its production model's shape (services/random_models.py)
FULL_SIZE = {"nemotron": "random:tiny" if SMALL else "random:nemotron-0.6b",
             "parakeet-realtime": "random:tiny" if SMALL else "random:parakeet-eou-120m"}


@pytest.fixture(autouse=True)
def needs_the_device():
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("no CUDA device here (tests/gpu run on a GPU; `make gpu-check DEVICE=cpu` is the dry mode)")


@pytest.fixture(autouse=True, scope="session")
def one_thread_on_cpu():
    """On the shared CPU of the dry mode a second intra-op thread only spins."""
    if DEVICE == "cpu":
        torch.set_num_threads(1)
    yield
