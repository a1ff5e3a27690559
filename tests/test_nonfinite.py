"""Non-finite steps: skipped on the device by a fused optimizer, counted, read only when checked."""

from __future__ import annotations

import pytest
import torch

from lookalike.errors import LookalikeError
from lookalike.models.nonfinite import NonFiniteSteps


def _step(optimizer: torch.optim.Optimizer, weight: torch.nn.Parameter, guard: NonFiniteSteps, bad: bool,
          step: int) -> None:
    weight.grad = torch.full_like(weight, float("nan") if bad else 1.0)
    guard.flag(optimizer, step)
    optimizer.step()


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_fused_optimizer_skips_non_finite_steps_without_a_check(optimizer: str) -> None:
    weight = torch.nn.Parameter(torch.ones(4))
    opt = (torch.optim.AdamW([weight], lr=0.1, fused=True) if optimizer == "adamw"
           else torch.optim.SGD([weight], lr=0.1, momentum=0.9, fused=True))
    guard = NonFiniteSteps(limit=3)
    _step(opt, weight, guard, bad=False, step=1)
    before = weight.detach().clone(), {k: v.clone() for k, v in opt.state[weight].items()}
    for step in (2, 3):  # flagged on the device, never read on the host
        _step(opt, weight, guard, bad=True, step=step)
    assert torch.equal(weight, before[0]) and guard.skipped == 0
    assert all(torch.equal(v, before[1][k]) for k, v in opt.state[weight].items())  # moments and step count too
    _step(opt, weight, guard, bad=False, step=4)
    assert torch.isfinite(weight).all() and not torch.equal(weight, before[0])
    with pytest.warns(UserWarning, match=r"step 4: .* 2 step\(s\) skipped since the last check \(0 in a row now, 2 in all\)"):
        assert guard.check(4) is False  # the run of two ended, shorter than the limit of three
    assert guard.skipped == 2


def test_the_longest_run_between_checks_stops_the_run() -> None:
    weight = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([weight], lr=0.1, fused=True)
    guard = NonFiniteSteps(limit=3)
    for step, bad in enumerate([True, True, True, False, False], start=1):
        _step(opt, weight, guard, bad, step)
    with pytest.warns(UserWarning), pytest.raises(LookalikeError, match="not finite for 3 steps in a row"):
        guard.check(5)  # three in a row happened between two checks: still caught
    assert torch.isfinite(weight).all() and int(opt.state[weight]["step"]) == 2  # only the two good steps


def test_other_optimizers_are_checked_every_step_and_drop_the_gradients() -> None:
    weight = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([weight], lr=0.1, fused=False)
    guard = NonFiniteSteps(limit=5)
    with pytest.warns(UserWarning, match=r"step 1: .* \(1 in a row now, 1 in all\)"):
        _step(opt, weight, guard, bad=True, step=1)
    assert torch.equal(weight.detach(), torch.ones(4)) and weight.grad is None and guard.skipped == 1
