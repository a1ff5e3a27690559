"""Skipping optimizer steps whose loss or gradients are not finite, without a wait for the GPU per step."""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_warn
import torch

from lookalike.errors import LookalikeError


def nonfinite_flag(tensors: list[torch.Tensor]) -> torch.Tensor:
    """1.0 if some value is inf or NaN, else 0.0, as a float32 scalar on the tensors' device: the largest
    |value| is inf or NaN exactly when some value is (a few fused kernels, no wait for the GPU)."""
    return (~torch.isfinite(torch.nn.utils.get_total_norm(tensors, float("inf")))).float()


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer's fused kernel skips the update itself given a ``found_inf`` flag (torch's
    AdamW / Adam / SGD with ``fused=True``, as torch's GradScaler uses them)."""
    return bool(optimizer.defaults.get("fused")) and getattr(optimizer, "_step_supports_amp_scaling", False)


class NonFiniteSteps:
    """Skips optimizer steps with a non-finite gradient, counts them, and stops a run after ``limit`` in a row.

    The counts (skipped in all, the current run of skipped steps, the longest run since the last check) live
    on the gradients' device. With a fused optimizer the skip happens there too (the flag goes to the fused
    kernel as ``found_inf``, which also leaves the step counter unchanged) and the host reads the counts
    only in :meth:`check`; other optimizers need the host to decide each step, so ``flag`` checks at once.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.skipped = 0  # skipped steps in all, as of the last check
        self._counts: torch.Tensor | None = None

    def flag(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Before ``optimizer.step()``: flag (and count) the step if a gradient is not finite."""
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            optimizer.__dict__.pop("found_inf", None)
            return
        bad = nonfinite_flag(grads)
        total, run, longest = self._counts if self._counts is not None else torch.zeros(3, device=bad.device)
        run = (run + 1) * bad
        self._counts = torch.stack([total + bad, run, torch.maximum(longest, run)])
        if skips_on_device(optimizer):
            optimizer.found_inf = bad
        elif self.check(step):
            optimizer.zero_grad(set_to_none=True)

    def check(self, step: int) -> bool:
        """Read the counts (one wait for the GPU): warn about steps skipped since the last check, raise once
        ``limit`` were skipped in a row. Returns whether the latest step was skipped."""
        if self._counts is None:
            return False
        total, run, longest = (int(v) for v in self._counts.tolist())
        self._counts[2] = run
        if total > self.skipped:
            rank_zero_warn(f"step {step}: non-finite loss or gradients, {total - self.skipped} step(s) skipped "
                           f"since the last check ({run} in a row now, {total} in all)")
            self.skipped = total
        if longest >= self.limit:
            raise LookalikeError(
                f"The loss or its gradients were not finite for {longest} steps in a row (by step {step}); the "
                f"run stops, its last checkpoint is the last good one. Lower optim.lr.*, check the data, or "
                f"raise optim.max_nonfinite_steps")
        return run > 0
