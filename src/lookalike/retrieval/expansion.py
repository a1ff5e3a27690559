"""Retrieval-side post-processing, no training: alpha query expansion (alpha-QE) and database-side
augmentation (DBA), as in Radenović, Tolias and Chum, "Fine-tuning CNN image retrieval with no human
annotation" (2018). Each vector is replaced by the normalised sum of itself and its ``k`` nearest
gallery items weighted by similarity**alpha."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lookalike.retrieval.knn import knn


def expand(base: torch.Tensor, neighbours: torch.Tensor, sims: torch.Tensor, alpha: float) -> torch.Tensor:
    """Each vector of ``base`` [n, d] plus its ``neighbours`` [n, k, d] weighted by ``sims`` [n, k] ** alpha."""
    weights = sims.clamp(min=0) ** alpha
    return F.normalize(base + (weights[..., None] * neighbours).sum(1), dim=-1)


def _expand(base: torch.Tensor, gallery: torch.Tensor, sims: torch.Tensor, ids: torch.Tensor,
            alpha: float) -> torch.Tensor:
    return expand(base, gallery[ids.to(gallery.device)], sims, alpha)


def query_expansion(queries: torch.Tensor, gallery: torch.Tensor, k: int, alpha: float = 3.0,
                    exclude: torch.Tensor | None = None, **search: Any) -> torch.Tensor:
    """alpha-QE: each query plus its ``k`` best gallery results (``exclude``: as in ``knn``)."""
    sims, ids = knn(queries, gallery, k, exclude=exclude, **search)
    return _expand(queries, gallery, sims.to(queries.device), ids, alpha)


def database_augmentation(gallery: torch.Tensor, k: int, alpha: float = 3.0, **search: Any) -> torch.Tensor:
    """DBA: each gallery item plus its ``k`` nearest other gallery items."""
    sims, ids = knn(gallery, gallery, k, exclude=torch.arange(len(gallery), device=gallery.device), **search)
    return _expand(gallery, gallery, sims.to(gallery.device), ids, alpha)
