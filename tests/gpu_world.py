"""CPU stand-ins for contracts of the GPU world that no test here can run on a GPU.

- `graph_decoder(adapter)`: NeMo's CUDA-graph label-looping decoder (`cuda_graphs_impl`) on CPU,
  in NeMo's own "no_graphs" mode: the same Python, the same preallocated state, the same
  returns — hypotheses and decoding state padded to the largest batch the decoder has seen —
  only the graph capture is skipped. NeMo takes that path only when the encoder output is on
  CUDA; this forces it.
- `HostTensorCheck`: a torch-function mode that raises wherever a step mixes a tensor made on the
  host (from numpy, a Python list, a `.cpu()` copy) with the model's tensors — an op that would
  raise "Expected all tensors to be on the same device" on CUDA — unless the host tensor was
  moved with `.to(device)` first. 0-dim tensors and index tensors of `t[idx]` and `t[idx] = v`
  mix freely on CUDA and are allowed here too.
"""

from __future__ import annotations

import weakref

import torch
from torch.overrides import TorchFunctionMode


def graph_decoder(computer) -> None:
    """Make `computer` (NeMo's GreedyBatchedRNNTLabelLoopingComputer) decode through its CUDA-graph path."""
    computer.force_cuda_graphs_mode("no_graphs")
    base = type(computer)

    class GraphPathOnCPU(base):
        def __call__(self, x, out_len, prev_batched_state=None, multi_biasing_ids=None):
            return self.cuda_graphs_impl(encoder_output=x, encoder_output_length=out_len,
                                         prev_batched_state=prev_batched_state, multi_biasing_ids=multi_biasing_ids)

    computer.__class__ = GraphPathOnCPU


_DOWNLOADS = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.item}
_UPLOADS = {torch.Tensor.to, torch.Tensor.cuda}
_FREE = {torch.Tensor.size, torch.Tensor.dim, torch.Tensor.__len__,
         torch.Tensor.numel, torch.Tensor.__repr__, torch.Tensor.__format__}


class HostTensorCheck(TorchFunctionMode):
    """Raise on an op that mixes host tensors with device tensors (see the module docstring).

    Device tensors: the given modules' parameters and buffers, the given state tensors, whatever
    a factory makes with an explicit `device=`, `.to(device)` results, and every result of an op
    with a device input — except downloads (`.cpu()`, `.numpy()`). Everything else (numpy views,
    factories without a device) lives on the host. On CPU `.to(cpu)` cannot tell an upload from
    a download, so the code under test must download with `.cpu()`.
    """

    def __init__(self, modules=(), tensors=()):
        super().__init__()
        self._device: dict[int, weakref.ref] = {}  # id → tensor (by identity: tensors compare by value)
        for module in modules:
            for t in (*module.parameters(), *module.buffers()):
                self._add(t)
        for t in tensors:
            self._add(t)
        self.ops = 0  # ops checked

    def _add(self, t: torch.Tensor) -> None:
        self._device[id(t)] = weakref.ref(t)

    def _on_device(self, t) -> bool:
        ref = self._device.get(id(t))
        return ref is not None and ref() is t

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _DOWNLOADS or func in _FREE:
            return out
        if func is torch.Tensor.__setitem__:  # t[idx] = v: idx may live on the host; v may not
            args = (args[0], *args[2:])
        tensors = [a for a in _flatten((args, kwargs)) if isinstance(a, torch.Tensor)]
        if func is torch.Tensor.__getitem__:  # indices may live on the host, as on CUDA
            if self._on_device(args[0]):
                self._mark(out)
            return out
        if func in _UPLOADS:
            target = args[1] if len(args) > 1 else kwargs.get("device")
            if isinstance(target, (str, torch.device)) or (tensors and self._on_device(tensors[0])):
                self._mark(out)
            return out
        self.ops += 1
        placed = [self._on_device(t) for t in tensors if t.dim() > 0]
        if any(placed) and not all(placed):
            name = getattr(func, "__name__", str(func))
            raise RuntimeError(f"{name} mixes host and device tensors: it would fail on CUDA")
        if any(placed) or kwargs.get("device") is not None:
            self._mark(out)
        return out

    def _mark(self, out) -> None:
        for t in _flatten(out):
            if isinstance(t, torch.Tensor):
                self._add(t)
def _flatten(obj):
    if isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _flatten(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _flatten(x)
    else:
        yield obj
