"""Weight-space interpolation between the model training started from and the fine-tuned one (WiSE-FT,
Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022): a few points on the line are often
better on unseen data than either end, and the end at 0 is the pretrained model itself."""

from __future__ import annotations

import torch


def interpolated(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * start + alpha * end`` for every floating-point tensor of two state dicts of one model;
    the others (BatchNorm's step counters) are ``end``'s. ``alpha`` 0 and 1 give the two ends exactly."""
    if alpha == 1:
        return dict(end)
    if alpha == 0:
        return {k: start[k] if v.is_floating_point() else v for k, v in end.items()}
    return {k: torch.lerp(start[k].to(v.device, v.dtype), v, alpha) if v.is_floating_point() else v
            for k, v in end.items()}
