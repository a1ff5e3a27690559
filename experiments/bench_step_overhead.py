"""Benchmark: the per-step bookkeeping around a training step, per tensor against fused (foreach) kernels.

On the H100 the training process, not the loader, limits lookalike's throughput (results/throughput.md):
every kernel launch costs host time, and the host is shared with the loader workers. This script counts the
kernel-launching operator calls and host waits and times, on the model's gradients and weights:

- EMA update: Lightning's ``EMAWeightAveraging`` (torch ``AveragedModel`` with a per-tensor ``avg_fn``)
  against ``callbacks=ema`` (``AveragedModel`` with ``get_ema_multi_avg_fn``: ``torch._foreach_lerp_``);
- non-finite gradient check: ``isfinite(g).all()`` per tensor against ``get_total_norm(grads, inf)``.

    python experiments/bench_step_overhead.py --model resnet50 --out experiments/results/throughput.md
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import timm
import torch
from hydra.utils import instantiate
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from bench_retrieval import machine, report
from lookalike.config import compose
from lookalike.models.lit_embedder import all_finite


NO_KERNEL = {"aten::detach", "aten::to", "aten::view", "aten::alias", "aten::is_nonzero", "aten::item"}
HOST_WAIT = {"aten::is_nonzero", "aten::item"}  # a Python bool/float of a GPU tensor waits for the GPU


def measure(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[int, int, float]:
    """(kernel-launching operator calls and host waits in one run of ``fn``, mean ms over ``repeats`` runs)."""
    fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    top = [e.name for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None]
    launches, waits = sum(n not in NO_KERNEL for n in top), sum(n in HOST_WAIT for n in top)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return launches, waits, (time.perf_counter() - t0) / repeats * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", help="append a Markdown section with the results to this file")
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = timm.create_model(a.model, pretrained=False, num_classes=0).to(device)
    model(torch.randn(2, 3, 64, 64, device=device)).sum().backward()
    grads = [q.grad for q in model.parameters() if q.grad is not None]

    ema = instantiate(compose("train", ["callbacks=ema"]).callbacks.ema)
    per_tensor = AveragedModel(model, use_buffers=True, avg_fn=get_ema_avg_fn(0.99))
    fused = AveragedModel(model, use_buffers=True, **ema._kwargs)
    rows = [
        ("EMA update", "per tensor (EMAWeightAveraging)", lambda: per_tensor.update_parameters(model)),
        ("EMA update", "fused (callbacks=ema)", lambda: fused.update_parameters(model)),
        ("non-finite check", "per tensor (isfinite(g).all())",
         lambda: bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())),
        ("non-finite check", "fused (get_total_norm(grads, inf))", lambda: all_finite(grads)),
    ]
    params = sum(1 for _ in model.parameters())
    buffers = sum(1 for _ in model.buffers())
    lines = [f"\n## Per-step bookkeeping: per tensor against fused kernels ({a.model}, {device.type})\n",
             f"Machine: {machine()}  ",
             f"Command: `python experiments/bench_step_overhead.py --model {a.model} --repeats {a.repeats}`  ",
             f"{params} weight tensors, {buffers} buffers; top-level operator calls that launch a kernel on a "
             "GPU, and host waits (a Python bool of a tensor), counted by the PyTorch profiler; time averaged "
             "over repeats.\n",
             "| what | how | kernel launches | host waits | ms per step |", "|---|---|---:|---:|---:|"]
    for what, how, fn in rows:
        launches, waits, ms = measure(fn, device, a.repeats)
        lines.append(f"| {what} | {how} | {launches:,} | {waits} | {ms:.2f} |")
        print(lines[-1], flush=True)
    report(lines, a.out)


if __name__ == "__main__":
    main()
