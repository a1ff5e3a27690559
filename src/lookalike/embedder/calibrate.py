"""Calibration: the similarity above which a search result counts as the same item / class.

The threshold is chosen on one half of the labelled classes for a target precision of "same label"
decisions among each image's nearest neighbours, reported on the other, held-out half, and stored in
the embedder file, where ``lookalike search`` and ``lookalike duplicates`` find it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lookalike.data.listing import labelled_images
from lookalike.errors import LookalikeError
from lookalike.files import locked
from lookalike.embedder.file import embedder_from_payload, read_embedder_file, write_embedder_file
from lookalike.retrieval.knn import knn


def neighbour_pairs(vectors: np.ndarray, labels: np.ndarray, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Similarities of every image to its ``k`` nearest other images, and whether each pair shares a label."""
    x = torch.from_numpy(vectors)
    sims, idx = knn(x, x, k, exclude=torch.arange(len(x)), backend="auto")
    same = labels[idx.numpy()] == labels[:, None]
    return sims.numpy().ravel(), same.ravel()


def threshold_for_precision(scores: np.ndarray, same: np.ndarray, target: float) -> float:
    """The lowest similarity whose decisions "score >= t means same label" reach ``target`` precision."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    precision = np.cumsum(same[order]) / np.arange(1, len(order) + 1)
    # a threshold keeps every pair with an equal score (neighbour pairs come in twins): cut only after ties
    group_end = np.append(ranked[1:] < ranked[:-1], True)
    ok = np.flatnonzero((precision >= target) & group_end)
    if len(ok) == 0:
        raise LookalikeError(f"No threshold reaches precision {target}: lower --target-precision")
    return float(ranked[ok.max()])


def precision_recall(scores: np.ndarray, same: np.ndarray, threshold: float) -> tuple[float, float]:
    """Precision and recall of the decisions ``score >= threshold`` among the neighbour pairs."""
    decided = scores >= threshold
    precision = float(same[decided].mean()) if decided.any() else 1.0
    recall = float((same & decided).sum() / max(1, same.sum()))
    return precision, recall


def calibrate(embedder_path: str | Path, images: str | Path, target_precision: float = 0.95,
              k: int = 20, seed: int = 0) -> dict[str, Any]:
    """Choose, report and store the match threshold; returns what was stored."""
    items = labelled_images(images)
    if any(not it["label"] for it in items):
        raise LookalikeError("calibrate needs labelled images: sub-folders per item/class, or a label column")
    names, labels = np.unique([it["label"] for it in items], return_inverse=True)
    if len(names) < 4:
        raise LookalikeError("calibrate needs at least 4 labels (half choose the threshold, half check it)")
    with locked(embedder_path):  # the file is rewritten: another writer of it waits
        return _calibrate(embedder_path, items, names, labels, target_precision, k, seed)


def _calibrate(embedder_path: str | Path, items: list[dict[str, Any]], names: np.ndarray, labels: np.ndarray,
               target_precision: float, k: int, seed: int) -> dict[str, Any]:
    payload = read_embedder_file(embedder_path)
    vectors = embedder_from_payload(payload).embed([it["path"] for it in items]).numpy()
    held = np.isin(labels, np.random.default_rng(seed).permutation(len(names))[: len(names) // 2])
    fit = neighbour_pairs(vectors[~held], labels[~held], k)
    check = neighbour_pairs(vectors[held], labels[held], k)
    threshold = threshold_for_precision(*fit, target_precision)
    p_fit, r_fit = precision_recall(*fit, threshold)
    p_held, r_held = precision_recall(*check, threshold)
    result = {"threshold": threshold, "target_precision": target_precision, "neighbours": k,
              "fit": {"classes": int(len(np.unique(labels[~held]))),
                      "precision": p_fit, "recall": r_fit},
              "held_out": {"classes": int(len(np.unique(labels[held]))), "precision": p_held, "recall": r_held}}
    payload["calibration"] = result
    write_embedder_file(embedder_path, payload)
    return result
