"""Retrieval metrics: recall@k, precision@1, R-precision and MAP@R (Musgrave et al., 2020), NMI; where several
gallery pictures share a label, product-level recall@k too (the list collapsed to one entry per label).

One protocol mechanism serves both standard set-ups: rows that are both query and gallery
retrieve every other gallery row (leave-one-out; a query never retrieves itself, even among
identical embeddings); rows with separate roles give the query/gallery protocol. Queries with no
relevant gallery item are left out and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from lookalike.retrieval.clustering import spherical_kmeans
from lookalike.retrieval.expansion import database_augmentation, query_expansion
from lookalike.retrieval.knn import knn

DEFAULT_KS = (1, 2, 4, 8)
MAX_PRODUCT_DEPTH = 1024  # most pictures searched per query for product-level recall (beyond: counted a miss)


@dataclass
class Neighbors:
    """The search result of every valid query, as row numbers of the evaluated table."""

    queries: torch.Tensor  # [q] rows of the queries that have at least one relevant item
    retrieved: torch.Tensor  # [q, k] rows of the retrieved gallery items, best first
    similarities: torch.Tensor  # [q, k]
    hits: torch.Tensor  # [q, k] bool: retrieved item has the query's label
    relevant: torch.Tensor  # [q] number of relevant gallery items
    skipped: int  # queries without any relevant gallery item
    labels: torch.Tensor | None = None  # [q, k] labels of the retrieved items
    shared_labels: bool = False  # several gallery items share a label: product-level metrics apply


def search(
    embeddings: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    is_query: torch.Tensor | np.ndarray | None = None,
    is_gallery: torch.Tensor | np.ndarray | None = None,
    k: int = max(DEFAULT_KS),
    backend: str = "torch",
    factory: str = "Flat",
    search_params: str = "",
    precision: str = "auto",
    qe_k: int = 0,
    dba_k: int = 0,
    alpha: float = 3.0,
) -> Neighbors:
    """Retrieve, for every query, ``max(k, R)`` gallery items (R: its number of relevant items).

    ``dba_k`` / ``qe_k`` > 0 apply database-side augmentation to the gallery and alpha query expansion to
    the queries first (``lookalike.retrieval.expansion``). Under leave-one-out, DBA lets each query
    contribute to its neighbours' gallery vectors, which flatters it; judge DBA on query/gallery splits."""
    emb = torch.as_tensor(embeddings).float()
    dev = emb.device
    labels = torch.as_tensor(labels).to(dev)
    n = len(labels)
    is_query = torch.ones(n, dtype=torch.bool) if is_query is None else torch.as_tensor(is_query, dtype=torch.bool)
    is_gallery = torch.ones(n, dtype=torch.bool) if is_gallery is None else torch.as_tensor(is_gallery, dtype=torch.bool)
    q_rows = torch.nonzero(is_query).squeeze(1).to(dev)
    g_rows = torch.nonzero(is_gallery).squeeze(1).to(dev)

    gallery_pos = torch.full((n,), -1, dtype=torch.long, device=dev)  # a query's own place in the gallery
    gallery_pos[g_rows] = torch.arange(len(g_rows), device=dev)
    exclude = gallery_pos[q_rows]
    g_labels = labels[g_rows]
    classes, counts = torch.unique(g_labels, return_counts=True)
    q_labels = labels[q_rows]
    where = torch.searchsorted(classes, q_labels).clamp(max=max(0, len(classes) - 1))
    relevant = torch.where(classes[where] == q_labels, counts[where], 0) - (exclude >= 0).long()
    valid = relevant > 0
    q_rows, exclude, q_labels, relevant = q_rows[valid], exclude[valid], q_labels[valid], relevant[valid]
    k_max = int(max(k, int(relevant.max()) if len(relevant) else 0))
    shared = bool(len(counts) and int(counts.max()) > 1)
    if shared:  # product-level recall@k needs up to k products' worth of pictures
        k_max = max(k_max, min(len(g_rows), k * int(counts.max()), MAX_PRODUCT_DEPTH))
    index = dict(backend=backend, factory=factory, search_params=search_params, precision=precision)
    queries, gallery = emb[q_rows], emb[g_rows]
    if dba_k:
        gallery = database_augmentation(gallery, dba_k, alpha, **index)
    if qe_k:
        queries = query_expansion(queries, gallery, qe_k, alpha, exclude=exclude, **index)
    sims, nn = knn(queries, gallery, k_max, exclude=exclude, **index)
    nn = nn.to(dev)
    return Neighbors(q_rows, g_rows[nn], sims, g_labels[nn] == q_labels[:, None], relevant, int((~valid).sum()),
                     g_labels[nn], shared)


def product_ranks(nb: Neighbors) -> torch.Tensor:
    """Each query's rank of the first relevant item when the retrieved list is collapsed to one entry per label
    (a product's first picture), or 0 where none was retrieved."""
    labels = nb.labels
    order = labels.sort(dim=1, stable=True)
    first = torch.ones_like(labels, dtype=torch.bool)
    first[:, 1:] = order.values[:, 1:] != order.values[:, :-1]
    is_first = torch.zeros_like(first).scatter_(1, order.indices, first)  # a label's first place in the list
    distinct = is_first.long().cumsum(1)
    found = nb.hits.any(1)
    return torch.where(found, distinct.gather(1, nb.hits.long().argmax(1, keepdim=True)).squeeze(1), 0)


def per_query_metrics(nb: Neighbors, ks: Sequence[int] = DEFAULT_KS) -> dict[str, torch.Tensor]:
    """Each valid query's recall@k (and product-level recall@k), precision@1, R-precision and AP@R, as float64
    tensors of one value per row of ``nb.queries``."""
    hits = nb.hits.double()
    ranks = torch.arange(1, hits.shape[1] + 1, device=hits.device, dtype=torch.float64)
    r = nb.relevant.double()
    within_r = ranks[None, :] <= r[:, None]
    precision_at_i = hits.cumsum(1) / ranks[None, :]
    out = {f"recall@{k}": hits[:, :k].amax(1) for k in ks}
    if nb.shared_labels and nb.labels is not None:
        ranks_p = product_ranks(nb)
        out |= {f"product_recall@{k}": ((ranks_p >= 1) & (ranks_p <= k)).double() for k in ks}
    out["precision@1"] = hits[:, 0]
    out["r_precision"] = (hits * within_r).sum(1) / r
    out["map@r"] = (precision_at_i * hits * within_r).sum(1) / r
    return out


def metrics_from_neighbors(nb: Neighbors, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """recall@k, precision@1, R-precision and MAP@R averaged over the valid queries."""
    out = {"queries": float(len(nb.queries)), "queries_without_relevant": float(nb.skipped)}
    if len(nb.queries) == 0:
        return out
    return out | {name: values.mean().item() for name, values in per_query_metrics(nb, ks).items()}


def retrieval_metrics(
    embeddings: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    is_query: torch.Tensor | np.ndarray | None = None,
    is_gallery: torch.Tensor | np.ndarray | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    backend: str = "torch",
    factory: str = "Flat",
    search_params: str = "",
    precision: str = "auto",
    **expansion: Any,
) -> dict[str, float]:
    """Metrics of retrieving same-label gallery items for every query, by cosine similarity
    (``expansion``: ``qe_k``, ``dba_k``, ``alpha`` of ``search``)."""
    nb = search(embeddings, labels, is_query, is_gallery, max(ks), backend, factory, search_params, precision,
                **expansion)
    return metrics_from_neighbors(nb, ks)


def normalized_mutual_information(assigned: np.ndarray, labels: np.ndarray) -> float:
    """NMI (arithmetic-mean normalisation) of two labellings."""
    _, a = np.unique(assigned, return_inverse=True)
    _, b = np.unique(labels, return_inverse=True)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    joint /= joint.sum()
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = (joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum()
    ha, hb = -(pa * np.log(pa)).sum(), -(pb * np.log(pb)).sum()
    return float(2 * mi / (ha + hb)) if ha + hb > 0 else 1.0


def clustering_nmi(embeddings: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, seed: int = 0) -> float:
    """NMI between the classes and a FAISS k-means of the embeddings into as many clusters."""
    y = torch.as_tensor(labels).cpu().numpy()
    x = torch.as_tensor(embeddings).float().cpu().numpy()
    return normalized_mutual_information(spherical_kmeans(x, len(np.unique(y)), niter=20, seed=seed), y)
