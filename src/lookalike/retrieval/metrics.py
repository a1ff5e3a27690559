"""Retrieval metrics: recall@k, precision@1, R-precision and MAP@R (Musgrave et al., 2020).

One function serves both protocols: rows that are both query and gallery retrieve every other
gallery row (leave-one-out; a query never retrieves itself, even among identical embeddings);
rows with separate roles give the query/gallery protocol. Queries with no relevant gallery item
are left out and counted.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from lookalike.retrieval.knn import knn

DEFAULT_KS = (1, 2, 4, 8)


def retrieval_metrics(
    embeddings: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    is_query: torch.Tensor | np.ndarray | None = None,
    is_gallery: torch.Tensor | np.ndarray | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Metrics of retrieving same-label gallery items for every query, by cosine similarity."""
    emb = torch.as_tensor(embeddings).float()
    labels = torch.as_tensor(labels).to(emb.device)
    n = len(labels)
    is_query = torch.ones(n, dtype=torch.bool) if is_query is None else torch.as_tensor(is_query, dtype=torch.bool)
    is_gallery = torch.ones(n, dtype=torch.bool) if is_gallery is None else torch.as_tensor(is_gallery, dtype=torch.bool)
    q_rows = torch.nonzero(is_query).squeeze(1).to(emb.device)
    g_rows = torch.nonzero(is_gallery).squeeze(1).to(emb.device)

    # position of each query in the gallery (-1 if it is not there) and its number of relevant items
    gallery_pos = torch.full((n,), -1, dtype=torch.long, device=emb.device)
    gallery_pos[g_rows] = torch.arange(len(g_rows), device=emb.device)
    exclude = gallery_pos[q_rows]
    g_labels = labels[g_rows]
    classes, g_counts = torch.unique(g_labels, return_counts=True)
    q_labels = labels[q_rows]
    where = torch.searchsorted(classes, q_labels).clamp(max=len(classes) - 1)
    relevant = torch.where(classes[where] == q_labels, g_counts[where], 0) - (exclude >= 0).long()
    valid = relevant > 0
    q_rows, exclude, q_labels, relevant = q_rows[valid], exclude[valid], q_labels[valid], relevant[valid]
    if len(q_rows) == 0:
        return {"queries": 0.0, "queries_without_relevant": float((~valid).sum())}

    k_max = int(max(max(ks), int(relevant.max())))
    _, nn = knn(emb[q_rows], emb[g_rows], k_max, exclude=exclude if bool((exclude >= 0).any()) else None)
    hits = (g_labels[nn] == q_labels[:, None]).float()  # [queries, k_max], best first
    ranks = torch.arange(1, hits.shape[1] + 1, device=emb.device)
    within_r = (ranks[None, :] <= relevant[:, None]).float()
    precision_at_i = hits.cumsum(1) / ranks[None, :]
    r = relevant.float()

    out = {f"recall@{k}": hits[:, :k].amax(1).mean().item() for k in ks}
    out["precision@1"] = hits[:, 0].mean().item()
    out["r_precision"] = ((hits * within_r).sum(1) / r).mean().item()
    out["map@r"] = ((precision_at_i * hits * within_r).sum(1) / r).mean().item()
    out["queries"] = float(len(q_rows))
    out["queries_without_relevant"] = float((~valid).sum())
    return out
