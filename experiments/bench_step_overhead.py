"""Benchmark: the per-step bookkeeping around a training step, per tensor against fused (foreach) kernels.

On the H100 the training process, not the loader, limits lookalike's throughput (results/throughput.md):
every kernel launch costs host time, and the host is shared with the loader workers. This script counts the
kernel-launching operator calls and host waits and times, on the model's gradients and weights:

- EMA update: Lightning's ``EMAWeightAveraging`` (torch ``AveragedModel`` with a per-tensor ``avg_fn``),
  ``AveragedModel`` with ``get_ema_multi_avg_fn`` (``torch._foreach_lerp_``), and ``callbacks=ema``
  (lookalike's ``FusedEMA``: the same lerp without ``AveragedModel``'s reads of its update count);
- non-finite gradient check: ``isfinite(g).all()`` per tensor, ``get_total_norm(grads, inf)`` read on the
  host, and lookalike's ``NonFiniteSteps.flag`` (the flag stays on the device for the fused optimizer);

and, with ``--census``, the host waits of whole ``train.py`` training steps: every operator that needs a
GPU tensor's values on the host, by call site (``lookalike.profiling.HostReads``; on a CPU, every ``.item()``,
``bool()`` and boolean index, but no copies to the host).

    python experiments/bench_step_overhead.py --model resnet50 --out experiments/results/throughput.md
    python experiments/bench_step_overhead.py --census --model resnet18 --out experiments/results/throughput.md
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from typing import Any, Callable

import lightning as L
import timm
import torch
from hydra.utils import instantiate
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn

from common import machine, report
from lookalike.config import compose
from lookalike.profiling import HostReads


NO_KERNEL = {"aten::detach", "aten::to", "aten::view", "aten::alias", "aten::is_nonzero", "aten::item",
             "aten::_local_scalar_dense"}


def measure(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[int, int, float]:
    """(kernel-launching operator calls and host reads in one run of ``fn``, mean ms over ``repeats`` runs)."""
    fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    launches = sum(e.name.startswith("aten::") and e.cpu_parent is None and e.name not in NO_KERNEL
                   for e in prof.events())
    with HostReads() as reads:
        fn()
    waits = reads.sites.total()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return launches, waits, (time.perf_counter() - t0) / repeats * 1e3


class HostWaitCensus(L.Callback):
    """Counts host waits from the start of training step ``start`` for ``steps`` steps (in ``result``)."""

    result: Counter[str] | None = None

    def __init__(self, start: int, steps: int):
        self.start, self.steps, self.mode = start, steps, HostReads()

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.start:
            self.mode.__enter__()
        elif trainer.global_step == self.start + self.steps:
            self.mode.__exit__(None, None, None)
            HostWaitCensus.result = self.mode.sites


def census(model: str, steps: int, extra: list[str]) -> list[str]:
    """Host waits per step of ``train.py`` (synthetic 64 px products, one epoch without validation, the
    default loss, miner, EMA and non-finite check), counted over ``steps`` steps after 5."""
    from lookalike.train import run

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"model.backbone.name={model}", "model.backbone.pretrained=false", "model.image_size=64",
                     f"data.root={tmp}/data", "data.source.num_train_products=200", "data.source.num_test_products=5",
                     "data.source.photos_per_product=4", "data.source.image_size=64", "data.batch_size=32",
                     "data.num_workers=1", f"trainer.accelerator={device}", "trainer.max_epochs=1",
                     f"+trainer.max_steps={5 + steps + 1}", "+trainer.limit_val_batches=0", "eval.baseline=false",
                     "eval.before=false", "logger=none", f"paths.output_dir={tmp}/run",
                     "+callbacks.census._target_=bench_step_overhead.HostWaitCensus", "+callbacks.census.start=5",
                     f"+callbacks.census.steps={steps}", *extra]
        run(compose("train", overrides))
    from bench_step_overhead import HostWaitCensus as hydras  # the class Hydra imported (not __main__'s)

    sites = hydras.result or Counter()
    lines = [f"\n## Host waits per training step: `train.py` ({model}, {device})\n",
             f"Machine: {machine()}  ",
             f"Command: `python experiments/bench_step_overhead.py --census --model {model} --census-steps {steps}"
             + (f" --overrides {' '.join(extra)}" if extra else "") + "`  ",
             f"Steps 6-{5 + steps} of a run (logging every 5 steps), operators that need a tensor's values on the "
             "host, by call site; per step.\n",
             "| call site | per step |", "|---|---:|"]
    lines += [f"| `{site}` | {n / steps:.1f} |" for site, n in sites.most_common()]
    lines.append(f"| **all** | **{sum(sites.values()) / steps:.1f}** |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--census", action="store_true", help="count the host waits of train.py's steps instead")
    p.add_argument("--census-steps", type=int, default=10)
    p.add_argument("--overrides", nargs="*", default=[], help="train.py overrides for the census run")
    p.add_argument("--out", help="append a Markdown section with the results to this file")
    a = p.parse_args()
    if a.census:
        report(census(a.model, a.census_steps, a.overrides), a.out)
        return
    from lookalike.models.ema import FusedEMA
    from lookalike.models.nonfinite import NonFiniteSteps, nonfinite_flag

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = timm.create_model(a.model, pretrained=False, num_classes=0).to(device)
    model(torch.randn(2, 3, 64, 64, device=device)).sum().backward()
    grads = [q.grad for q in model.parameters() if q.grad is not None]

    ema = instantiate(compose("train", ["callbacks=ema"]).callbacks.ema)
    assert isinstance(ema, FusedEMA)
    ema._average_model = AveragedModel(model, use_buffers=True)  # what WeightAveraging.setup makes
    per_tensor = AveragedModel(model, use_buffers=True, avg_fn=get_ema_avg_fn(0.99))
    foreach = AveragedModel(model, use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(0.99))
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    guard = NonFiniteSteps(limit=20)
    rows = [
        ("EMA update", "per tensor (Lightning's EMAWeightAveraging)", lambda: per_tensor.update_parameters(model)),
        ("EMA update", "foreach (AveragedModel + get_ema_multi_avg_fn)", lambda: foreach.update_parameters(model)),
        ("EMA update", "**FusedEMA (callbacks=ema)**", lambda: ema.update(model)),
        ("non-finite check", "per tensor (isfinite(g).all())",
         lambda: bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())),
        ("non-finite check", "fused, read on the host (get_total_norm(grads, inf))",
         lambda: bool(nonfinite_flag(grads))),
        ("non-finite check", "**flag on the device (NonFiniteSteps + fused AdamW)**", lambda: guard.flag(optimizer, 1)),
    ]
    params = sum(1 for _ in model.parameters())
    buffers = sum(1 for _ in model.buffers())
    lines = [f"\n## Per-step bookkeeping: per tensor against fused kernels ({a.model}, {device.type})\n",
             f"Machine: {machine()}  ",
             f"Command: `python experiments/bench_step_overhead.py --model {a.model} --repeats {a.repeats}`  ",
             f"{params} weight tensors, {buffers} buffers; top-level operator calls that launch a kernel on a "
             "GPU (PyTorch profiler), host waits (`lookalike.profiling.HostReads`: reads of a tensor's values on "
             "the host); time averaged over repeats.\n",
             "| what | how | kernel launches | host waits | ms per step |", "|---|---|---:|---:|---:|"]
    for what, how, fn in rows:
        launches, waits, ms = measure(fn, device, a.repeats)
        lines.append(f"| {what} | {how} | {launches:,} | {waits} | {ms:.2f} |")
        print(lines[-1], flush=True)
    report(lines, a.out)


if __name__ == "__main__":
    main()
