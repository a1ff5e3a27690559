"""Evaluation: load a training checkpoint, embed a split of its data (built as training builds it), search it,
report metrics and a picture."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lookalike.data.datamodule import datamodule_from_config
from lookalike.errors import LookalikeError
from lookalike.inference.embed import embed_loader
from lookalike.models.lit_embedder import load_checkpoint
from lookalike.retrieval.grid import retrieval_grid
from lookalike.retrieval.metrics import clustering_nmi, metrics_from_neighbors, search


def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)


def format_metrics(metrics: dict[str, float]) -> str:
    """Two aligned lines: metric names and values."""
    keys = [k for k in metrics if k not in ("queries", "queries_without_relevant")]
    return "  ".join(f"{k:>11}" for k in keys) + "\n" + "  ".join(f"{metrics[k]:>11.4f}" for k in keys)


def save_embeddings(folder: Path, data: dict[str, torch.Tensor], paths: list[str]) -> None:
    """``embeddings.npy``, ``labels.npy`` and ``items.csv`` (row, path, label, is_query, is_gallery)."""
    np.save(folder / "embeddings.npy", data["embeddings"].numpy())
    np.save(folder / "labels.npy", data["label"].numpy())
    with open(folder / "items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "path", "label", "is_query", "is_gallery"])
        for i in range(len(paths)):
            w.writerow([i, paths[i], int(data["label"][i]), int(data["is_query"][i]), int(data["is_gallery"][i])])


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Embed the chosen split of ``cfg.data`` (or the checkpoint's data) and report retrieval metrics."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    module = load_checkpoint(cfg.ckpt)
    trained = OmegaConf.create(module.hparams["config"])
    dm = datamodule_from_config(cfg.data if cfg.get("data") else trained.data, trained.seed, cfg.paths.cache_dir,
                                module.embedder.preprocessing, eval_batch_size=cfg.batch_size,
                                num_workers=cfg.num_workers)
    if cfg.split not in ("test", "val"):
        raise LookalikeError(f"split={cfg.split!r}: choose test or val")
    table = dm.test_table if cfg.split == "test" else dm.val_table

    device = _device(cfg.device)
    data = embed_loader(module.embedder.to(device), dm.eval_dataloader(table),
                        dtype=torch.float16 if cfg.half_embeddings else torch.float32, desc=f"embedding {cfg.split}")
    nb = search(data["embeddings"].to(device), data["label"], data["is_query"], data["is_gallery"],
                max(cfg.ks), **cfg.knn, **cfg.expansion)
    metrics = metrics_from_neighbors(nb, cfg.ks)
    if cfg.nmi:
        metrics["nmi"] = clustering_nmi(data["embeddings"], data["label"], seed=trained.seed)

    report = {"checkpoint": str(cfg.ckpt), "split": cfg.split, "set": table.describe(),
              "index": OmegaConf.to_container(cfg.knn), "expansion": OmegaConf.to_container(cfg.expansion),
              "metrics": metrics}
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    if cfg.save_embeddings:
        save_embeddings(out, data, table.paths)
    if cfg.grid.queries > 0:
        retrieval_grid(table.paths, table.label_names(), nb, cfg.grid.queries, cfg.grid.k, seed=trained.seed).save(
            out / "retrieval_grid.png")
    print(f"\n{cfg.split} split ({table.describe()}), index {cfg.knn.backend}/{cfg.knn.factory}:\n"
          f"{format_metrics(metrics)}\n\nwritten to {out}: metrics.json"
          + (", embeddings.npy, labels.npy, items.csv" if cfg.save_embeddings else "")
          + (", retrieval_grid.png" if cfg.grid.queries > 0 else ""))
    return report
