"""Retrieval on embeddings, as pure functions on tensors and arrays: kNN search (FAISS / torch), the FAISS index
store, metrics, clustering, query expansion and the retrieval-grid picture."""

from lookalike.retrieval.metrics import retrieval_metrics

__all__ = ["retrieval_metrics"]
