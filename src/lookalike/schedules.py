"""Learning-rate schedules with linear warm-up, stepped every optimizer step.

Configs target them with ``_partial_: true``; the LightningModule passes the optimizer and the
total number of steps.
"""

from __future__ import annotations

import math
from typing import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _warmup(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05,
                  min_lr_ratio: float = 0.01) -> LambdaLR:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to ``min_lr_ratio``."""
    warmup = int(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        progress = min(1.0, max(0.0, (step - warmup) / max(1, total_steps - warmup)))
        cosine = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return _warmup(step, warmup) * cosine

    return LambdaLR(optimizer, factor)


def warmup_step(optimizer: Optimizer, total_steps: int, milestones: Sequence[float] = (0.6, 0.85),
                gamma: float = 0.1, warmup_fraction: float = 0.05) -> LambdaLR:
    """Linear warm-up, then the rate times ``gamma`` at each milestone (fractions of all steps)."""
    warmup = int(warmup_fraction * total_steps)
    bounds = [int(m * total_steps) for m in milestones]

    def factor(step: int) -> float:
        return _warmup(step, warmup) * gamma ** sum(step >= b for b in bounds)

    return LambdaLR(optimizer, factor)
