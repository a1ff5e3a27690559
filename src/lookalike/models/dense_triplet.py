"""Semi-hard triplet loss as dense masked operations over the PK batch: fixed shapes, no index tuples, no host
reads, so that a training step never waits for the GPU (and can be captured as a CUDA graph).

It equals pytorch-metric-learning's ``TripletMarginMiner(type_of_triplets="semihard")`` followed by
``TripletMarginLoss`` with their defaults (Euclidean distance of unit vectors, mean over the triplets whose loss
is above zero), in loss and in gradients: PML stays the reference (tests compare the two) and the route for every
other loss. PML builds variable-length index tuples (``nonzero`` and boolean indexing: six host reads a step);
here every (anchor, positive, negative) of the batch is one entry of a B x B x B mask (B = 256: 16.8 M entries,
67 MB of float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lookalike.errors import LookalikeError


class DenseSemiHardTripletLoss(nn.Module):
    """``loss(embeddings, labels)``: the mean of ``relu(d(a, p) - d(a, n) + margin)`` over the semi-hard triplets
    whose loss is above zero (``0 < d(a, n) - d(a, p) <= miner_margin``; ``miner_margin`` defaults to ``margin``),
    distances between the L2-normalised embeddings. Configs: ``loss=triplet_dense miner=none``.

    ``catalogue_weight``: with ``is_catalogue`` (which rows of the batch are catalogue pictures), triplets whose
    anchor and positive are a photo and a catalogue picture (what a search compares) weigh this much in the mean,
    the others (photo with photo, picture with picture) 1."""

    def __init__(self, margin: float = 0.2, miner_margin: float | None = None, catalogue_weight: float = 1.0):
        super().__init__()
        self.margin = margin
        self.miner_margin = margin if miner_margin is None else miner_margin
        self.catalogue_weight = catalogue_weight

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None,
                is_catalogue: torch.Tensor | None = None) -> torch.Tensor:
        if indices_tuple is not None:
            raise LookalikeError("loss=triplet_dense mines its own semi-hard triplets: set miner=none")
        x = F.normalize(embeddings, p=2, dim=1)
        d = torch.cdist(x, x, p=2)  # as PML's LpDistance
        same = labels[:, None] == labels[None, :]
        positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        ap, an = d[:, :, None], d[:, None, :]  # [anchor, positive, 1], [anchor, 1, negative]
        gap = an - ap
        mined = positive[:, :, None] & ~same[:, None, :] & (gap > 0) & (gap <= self.miner_margin)
        losses = F.relu(ap - an + self.margin)
        kept = mined & (losses > 0)
        if is_catalogue is None or self.catalogue_weight == 1.0:
            return torch.where(kept, losses, 0).sum() / kept.sum().clamp(min=1)
        cross = is_catalogue[:, None] != is_catalogue[None, :]  # [anchor, positive]: a photo and a picture
        weights = torch.where(cross, self.catalogue_weight, 1.0)[:, :, None] * kept
        return (weights * losses).sum() / weights.sum().clamp(min=1e-12)
