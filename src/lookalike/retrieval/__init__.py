"""Retrieval: batched embedding extraction, exact kNN search and retrieval metrics."""

from lookalike.retrieval.embed import embed
from lookalike.retrieval.metrics import retrieval_metrics

__all__ = ["embed", "retrieval_metrics"]
