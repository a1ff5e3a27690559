"""Retrieval metrics against a brute-force reference and pytorch-metric-learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from lookalike.retrieval.knn import knn
from lookalike.retrieval.metrics import clustering_nmi, normalized_mutual_information, retrieval_metrics


def brute_force(emb: np.ndarray, labels: np.ndarray, q: np.ndarray, g: np.ndarray, ks) -> dict:
    """The definitions, one query at a time (stable order among equal similarities)."""
    out = {f"recall@{k}": [] for k in ks} | {"precision@1": [], "r_precision": [], "map@r": []}
    for i in np.flatnonzero(q):
        cand = [j for j in np.flatnonzero(g) if j != i]
        sims = emb[cand] @ emb[i]
        order = [cand[j] for j in np.argsort(-sims, kind="stable")]
        rel = labels[order] == labels[i]
        r = int(rel.sum())
        if r == 0:
            continue
        for k in ks:
            out[f"recall@{k}"].append(rel[:k].any())
        out["precision@1"].append(rel[0])
        out["r_precision"].append(rel[:r].mean())
        prec = np.cumsum(rel[:r]) / np.arange(1, r + 1)
        out["map@r"].append((prec * rel[:r]).sum() / r)
    return {k: float(np.mean(v)) for k, v in out.items()}


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 12, 200)
    emb = rng.normal(size=(200, 8)) + labels[:, None] * 0.3
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb.astype(np.float32), labels


def test_leave_one_out_matches_brute_force_and_pml(data) -> None:
    emb, labels = data
    ks = (1, 2, 4, 8)
    ours = retrieval_metrics(emb, labels, ks=ks)
    ref = brute_force(emb, labels, np.ones(200, bool), np.ones(200, bool), ks)
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=1e-6), k
    pml = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                             k="max_bin_count").get_accuracy(emb, labels)
    assert ours["precision@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)


def test_query_gallery_protocol_matches_brute_force(data) -> None:
    emb, labels = data
    q = np.arange(200) % 3 == 0
    ours = retrieval_metrics(emb, labels, q, ~q, ks=(1, 4))
    ref = brute_force(emb, labels, q, ~q, (1, 4))
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=1e-6), k


def test_identical_embeddings_never_retrieve_themselves() -> None:
    emb = np.ones((4, 3), np.float32) / np.sqrt(3)
    labels = np.array([0, 1, 2, 0])
    m = retrieval_metrics(emb, labels, ks=(1,))
    # 0 and 3 each have one relevant item; 1 and 2 have none and are left out and counted
    assert m["queries"] == 2 and m["queries_without_relevant"] == 2
    _, idx = knn(torch.tensor(emb), torch.tensor(emb), 3, exclude=torch.arange(4))
    assert all(i not in row for i, row in enumerate(idx.tolist()))


def test_perfect_and_chunked_search() -> None:
    labels = np.repeat(np.arange(5), 4)
    emb = np.eye(5, dtype=np.float32)[labels]
    assert retrieval_metrics(emb, labels)["map@r"] == pytest.approx(1.0)
    x = torch.nn.functional.normalize(torch.randn(50, 6), dim=1)
    s1, i1 = knn(x, x, 5)
    s2, i2 = knn(x, x, 5, chunk_size=7)
    assert torch.equal(i1, i2) and torch.allclose(s1, s2)


def test_query_gallery_matches_pml(data) -> None:
    emb, labels = data
    q = np.arange(200) % 4 == 0
    ours = retrieval_metrics(emb, labels, q, ~q)
    pml = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                             k="max_bin_count").get_accuracy(emb[q], labels[q], emb[~q], labels[~q], False)
    assert ours["precision@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)


def test_every_backend_gives_the_same_metrics_with_ties(data) -> None:
    emb, labels = data
    emb = emb.copy()
    emb[labels == 3] = emb[labels == 3][0]  # identical embeddings: ties, and queries equal to others
    emb[labels == 5] = emb[labels == 7][0]  # ties across classes
    ref = brute_force(emb, labels, np.ones(200, bool), np.ones(200, bool), (1, 2, 4))
    for backend in ("torch", "faiss"):
        ours = retrieval_metrics(emb, labels, ks=(1, 2, 4), backend=backend)
        # among equal similarities the order is arbitrary; metrics may differ only there
        assert ours["recall@4"] == pytest.approx(ref["recall@4"], abs=0.02), backend
        assert ours["map@r"] == pytest.approx(ref["map@r"], abs=0.02), backend
    approx = retrieval_metrics(emb, labels, backend="faiss", factory="HNSW32", search_params="efSearch=256")
    assert approx["map@r"] == pytest.approx(ref["map@r"], abs=0.03)


def test_nmi_matches_scikit_learn_and_clusters() -> None:
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 6, 500), rng.integers(0, 4, 500)
    assert normalized_mutual_information(a, b) == pytest.approx(normalized_mutual_info_score(b, a), abs=1e-9)
    labels = np.repeat(np.arange(5), 40)
    centers = np.eye(16, dtype=np.float32)[:5]
    x = centers[labels] + rng.normal(0, 0.05, (200, 16)).astype(np.float32)
    assert clustering_nmi(x, labels) > 0.95


def _expanded(emb: np.ndarray, base_rows: np.ndarray, gallery_rows: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """alpha-QE / DBA by the definition: each base row plus its k most similar other gallery rows, weighted
    by similarity**alpha, normalised."""
    out = []
    for i in base_rows:
        cand = np.array([j for j in gallery_rows if j != i])
        sims = emb[cand] @ emb[i]
        top = np.argsort(-sims, kind="stable")[:k]
        v = emb[i] + ((np.clip(sims[top], 0, None) ** alpha)[:, None] * emb[cand[top]]).sum(0)
        out.append(v / np.linalg.norm(v))
    return np.array(out, np.float32)


def test_query_expansion_and_database_augmentation_follow_their_definitions(data) -> None:
    from lookalike.retrieval.expansion import database_augmentation, query_expansion

    emb, labels = data
    rows = np.arange(len(emb))
    qe = query_expansion(torch.from_numpy(emb), torch.from_numpy(emb), 3, 3.0, exclude=torch.from_numpy(rows))
    np.testing.assert_allclose(qe.numpy(), _expanded(emb, rows, rows, 3, 3.0), atol=1e-5)
    dba = database_augmentation(torch.from_numpy(emb), 2, 1.0, backend="faiss")
    np.testing.assert_allclose(dba.numpy(), _expanded(emb, rows, rows, 2, 1.0), atol=1e-5)

    q, g = rows < 50, rows >= 50  # query/gallery protocol: QE searches again with the expanded queries
    with_qe = retrieval_metrics(emb, labels, q, g, (1, 4), qe_k=3)
    manual = np.concatenate([_expanded(emb, rows[q], rows[g], 3, 3.0), emb[g]])
    assert with_qe == pytest.approx(retrieval_metrics(manual, np.concatenate([labels[q], labels[g]]),
                                                      np.arange(len(manual)) < 50, np.arange(len(manual)) >= 50,
                                                      (1, 4)), abs=1e-6)
    assert with_qe != pytest.approx(retrieval_metrics(emb, labels, q, g, (1, 4)), abs=1e-6)


def test_a_search_without_queries_answers_nothing_instead_of_failing() -> None:
    gallery = torch.nn.functional.normalize(torch.randn(10, 4), dim=-1)
    for backend in ("torch", "faiss"):
        sims, ids = knn(gallery[:0], gallery, 3, backend=backend)
        assert sims.shape == (0, 0) and ids.shape == (0, 0)
    assert retrieval_metrics(gallery, torch.arange(10), is_query=torch.zeros(10, dtype=torch.bool)) == {
        "queries": 0.0, "queries_without_relevant": 0.0}


def test_product_level_recall_collapses_pictures_of_one_product() -> None:
    # query (label 0) nearest to three pictures of product 1, then a picture of its own product 0
    gallery = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.98, 0.2], [0.9, 0.43], [0.0, 1.0], [0.1, 0.99]])
    emb = torch.nn.functional.normalize(torch.cat([torch.tensor([[1.0, 0.0]]), gallery]), dim=1)
    labels = torch.tensor([0, 1, 1, 1, 0, 2, 2])
    is_query = torch.tensor([True] + [False] * 6)
    m = retrieval_metrics(emb, labels, is_query, ~is_query, ks=(1, 2, 4))
    assert m["recall@2"] == 0.0 and m["recall@4"] == 1.0
    assert m["product_recall@1"] == 0.0 and m["product_recall@2"] == 1.0
    single = retrieval_metrics(emb[[0, 1, 4, 5]], torch.tensor([0, 1, 0, 2]), is_query[:4], ~is_query[:4])
    assert "product_recall@1" not in single  # one picture per product: picture and product level are the same
