"""Weight-space interpolation between the model training started from and the fine-tuned one (WiSE-FT,
Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022): a few points on the line are often
better on unseen data than either end, and the end at 0 is the pretrained model itself."""

from __future__ import annotations

import math

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


def choose_alpha(per_query: dict[float, torch.Tensor], classes: torch.Tensor,
                 within_se: float = 1.0) -> tuple[float, float]:
    """The alpha to export and the best one, from each alpha's validation metric per query (the same queries in
    the same order; ``classes``: each query's label): the alpha with the best mean, unless a larger one (nearer
    the fine-tuned end) is within ``within_se`` standard errors of it. The error is that of the mean difference
    clustered by class (Liang & Zeger, 1986: classes, not images, are what a validation set samples; with classes
    of one size, the standard error of the per-class differences), so the rule is the one-standard-error rule of
    Breiman et al. (1984) over classes: a lead a few validation classes cannot tell from chance does not turn the
    export away from the fine-tuned model; a lead larger than the classes' spread does. ``within_se`` 0, or
    fewer than two classes: the best mean alone. A larger alpha that scores below the start (alpha 0, where it is
    among the candidates) is never taken by the rule: when validation cannot tell the candidates apart, the export
    is not one that measured worse than the model training started from."""
    means = {a: float(v.mean()) for a, v in per_query.items()}
    best = max(means, key=lambda a: (means[a], a))
    groups = torch.unique(classes, return_inverse=True)[1]
    count = int(groups.max()) + 1 if len(groups) else 0
    if within_se <= 0 or count < 2:
        return best, best
    floor = means.get(0.0, -math.inf)
    for alpha in sorted((a for a in per_query if a > best and means[a] >= floor), reverse=True):
        diff = (per_query[alpha] - per_query[best]).double()
        sums = torch.zeros(count, dtype=diff.dtype).index_add_(0, groups.cpu(), (diff - diff.mean()).cpu())
        error = float((sums.square().sum() * count / (count - 1)).sqrt()) / len(diff)
        if means[best] - means[alpha] <= within_se * error:
            return alpha, best
    return best, best
