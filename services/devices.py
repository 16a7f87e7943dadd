"""The one place a device flag becomes a `torch.device`: `auto`, `cpu`, `cuda`, `cuda:N`.

NeMo's `setup_device` takes a device *type* (`cuda|cpu|mps`) plus a separate id, and quietly
serves GPU 0 when the id does not exist; every loader here gets its (type, id) from
`nemo_device_args`, so `cuda:1` means GPU 1 or a refusal at start-up, never GPU 0.
"""

from __future__ import annotations

import re
from typing import Union

from .refusal import StartupRefusal

DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def parse_device(spec: Union[str, "torch.device"]) -> "torch.device":  # noqa: F821
    """`spec` as a torch.device that exists on this machine, or a StartupRefusal saying why not.

    `auto` is the first GPU when torch sees one, else the CPU; `cuda` is `cuda:0`."""
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    match = DEVICE_SPEC.match(str(spec).strip().lower())
    if not match or (match.group(1) != "cuda" and match.group(2) is not None):
        raise StartupRefusal(f"unknown device {spec!r}: expected auto, cpu, cuda or cuda:N")
    kind, index = match.group(1), int(match.group(2) or 0)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise StartupRefusal(f"device {spec!r} asked for, but torch sees no CUDA GPU here (use --device cpu)")
    count = torch.cuda.device_count()
    if index >= count:
        raise StartupRefusal(f"device {spec!r} asked for, but this machine has {count} CUDA GPU(s): cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


def nemo_device_args(device: Union[str, "torch.device"]) -> tuple[str, int]:  # noqa: F821
    """(type, id) for NeMo's `setup_device`-style constructors (`device=`, `device_id=`)."""
    parsed = parse_device(device)
    return parsed.type, (parsed.index or 0) if parsed.type == "cuda" else -1


def default_dtype(device: Union[str, "torch.device"], amp: bool = False) -> str:  # noqa: F821
    """bfloat16 weights on a GPU (float32 under bfloat16 autocast with `amp`), float32 on the CPU."""
    return "bfloat16" if parse_device(device).type == "cuda" and not amp else "float32"


def use_device(device: Union[str, "torch.device"]) -> None:  # noqa: F821
    """Make `device` the calling thread's current CUDA device (a no-op on the CPU).

    CUDA's current device is per thread, and NeMo's CUDA-graph decoder makes its streams on the
    current device (`torch.cuda.Stream()`): the inference thread of a `cuda:1` worker must say so."""
    import torch

    parsed = parse_device(device)
    if parsed.type == "cuda":
        torch.cuda.set_device(parsed)


def intra_op_threads(device: Union[str, "torch.device"], requested: int = 0) -> int:  # noqa: F821
    """Torch intra-op threads for a worker's model thread: `requested`, or with 0 (auto) all
    cores but one on a CPU and 0 (leave torch's own) on a GPU.

    A CPU worker's model step shares the machine with its event loop (WebSocket reads, parsing,
    sends, the next finalize): torch taking every core makes the two fight. Auto leaves one core
    to the loop (measured on 2 cores with clients streaming: a finalize's step p50 22.0 → 14.9 ms,
    TTFS p50 225 → 217 ms; benchmarks/ttfs.py). On a GPU the host does little math: torch's own."""
    import os

    if requested > 0:
        return requested
    if parse_device(device).type != "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def use_threads(count: int) -> int:
    """Set torch's intra-op threads (0 leaves them); returns what the calling thread now uses.

    Call it on the model thread: with OpenMP the count is read per thread."""
    import torch

    if count > 0:
        torch.set_num_threads(count)
    return torch.get_num_threads()
