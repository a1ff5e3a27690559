"""Exact k-nearest-neighbour search by inner product (cosine on unit vectors), in query chunks."""

from __future__ import annotations

import torch


def knn(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    exclude: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` gallery items for every query: (similarities, gallery indices), best first.

    ``exclude[i]`` is a gallery index that query ``i`` must not retrieve (itself, in the
    leave-one-out protocol) or -1. Queries go in chunks so that no full query x gallery
    matrix is ever held: memory is ``chunk_size x len(gallery)``.
    """
    k = min(k, len(gallery) - (1 if exclude is not None and bool((exclude >= 0).any()) else 0))
    if chunk_size is None:
        chunk_size = max(1, min(len(queries), (1 << 26) // max(1, len(gallery))))  # ~256 MB of float32
    sims, idx = [], []
    for start in range(0, len(queries), chunk_size):
        block = queries[start:start + chunk_size] @ gallery.T
        if exclude is not None:
            ex = exclude[start:start + chunk_size]
            rows = torch.nonzero(ex >= 0).squeeze(1)
            block[rows, ex[rows]] = float("-inf")
        s, i = block.topk(k, dim=1)
        sims.append(s)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)
