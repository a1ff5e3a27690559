"""Finding where a training step waits for the GPU: the operators that need a tensor's values on the host."""

from __future__ import annotations

import traceback
from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

READS = {"_local_scalar_dense", "nonzero", "is_nonzero", "masked_select"}  # .item(), bool(), torch.where(mask)


def _bool_index(name: str, args: tuple) -> bool:
    """``x[mask]`` or ``x[mask] = v``: the mask's True positions are needed on the host."""
    return name in ("index", "index_put_", "index_put") and any(
        t is not None and t.dtype == torch.bool for t in args[1])


def _to_host(name: str, args: tuple, kwargs: dict) -> bool:
    """A copy of a GPU tensor to the host (``.cpu()``, ``.tolist()``, ``.numpy()``)."""
    return (name == "_to_copy" and args[0].device.type != "cpu"
            and torch.device(kwargs.get("device") or args[0].device).type == "cpu")


def _call_site() -> str:
    """The innermost caller outside torch's internals (torch.optim counts as a caller)."""
    frames = [f for f in traceback.extract_stack() if f.filename != __file__]
    f = next((f for f in reversed(frames) if "/torch/" not in f.filename or "/torch/optim/" in f.filename), frames[-1])
    return f"{f.filename.split('site-packages/')[-1].split('/src/')[-1]}:{f.lineno} ({f.name})"


class HostReads(TorchDispatchMode):
    """``with HostReads() as r: ...``, then ``r.sites``: how often each call site read a tensor's values on
    the host inside the block. On a GPU each read waits until the GPU has run all the work queued before it
    (the host cannot run ahead); there only reads of GPU tensors count. On a CPU every read of the first kind
    counts, and copies to the host are invisible (a CPU tensor needs none)."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: Counter[str] = Counter()
        self._gpu = torch.cuda.is_available()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name, kwargs = func._overloadpacket.__name__, kwargs or {}
        read = name in READS or _bool_index(name, args)
        if (read and (not self._gpu or args[0].device.type != "cpu")) or _to_host(name, args, kwargs):
            self.sites[f"{name} in {_call_site()}"] += 1
        return func(*args, **kwargs)
