"""Evaluation: load a training checkpoint, embed a split, search it, report metrics and a picture."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lookalike.config import hydra_main
from lookalike.data.datamodule import RetrievalDataModule
from lookalike.errors import LookalikeError
from lookalike.models.lit_embedder import LitEmbedder, build
from lookalike.retrieval import embed
from lookalike.retrieval.grid import retrieval_grid
from lookalike.retrieval.metrics import clustering_nmi, metrics_from_neighbors, search


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LitEmbedder:
    """Rebuild a trained LitEmbedder from a checkpoint of ``train.py`` (no download, no Hydra run)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LookalikeError(f"No checkpoint at '{path}' (train.py writes runs/<task>/<time>/checkpoints/best.ckpt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # pickle, zip and torch errors for foreign or corrupt files
        raise LookalikeError(f"'{path}' is not a readable PyTorch checkpoint ({e})") from e
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if "config" not in hp or "state_dict" not in ckpt:
        raise LookalikeError(f"'{path}' is not a lookalike training checkpoint (it has no training config)")
    config = copy.deepcopy(hp["config"])
    config["model"]["backbone"].update(pretrained=False, checkpoint=None)  # the weights come from the file
    module = LitEmbedder(config, hp["num_train_classes"])
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()


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
    data_cfg = cfg.data if cfg.get("data") else trained.data
    splits = build(data_cfg.source, "the data set (data=...)")
    dm = RetrievalDataModule(splits, module.embedder.preprocessing, val_classes=data_cfg.val_classes,
                             eval_batch_size=cfg.batch_size, num_workers=cfg.num_workers, seed=trained.seed,
                             on_bad_image=data_cfg.get("on_bad_image", "skip"))
    if cfg.split not in ("test", "val"):
        raise LookalikeError(f"split={cfg.split!r}: choose test or val")
    table = dm.test_table if cfg.split == "test" else dm.val_table

    device = _device(cfg.device)
    data = embed(module.embedder.to(device), dm.eval_dataloader(table), device=device,
                 dtype=torch.float16 if cfg.half_embeddings else torch.float32, desc=f"embedding {cfg.split}")
    nb = search(data["embeddings"].to(device), data["label"], data["is_query"], data["is_gallery"],
                max(cfg.ks), **cfg.index, **cfg.expansion)
    metrics = metrics_from_neighbors(nb, cfg.ks)
    if cfg.nmi:
        metrics["nmi"] = clustering_nmi(data["embeddings"], data["label"], seed=trained.seed)

    report = {"checkpoint": str(cfg.ckpt), "split": cfg.split, "set": table.describe(),
              "index": OmegaConf.to_container(cfg.index), "expansion": OmegaConf.to_container(cfg.expansion),
              "metrics": metrics}
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    if cfg.save_embeddings:
        save_embeddings(out, data, table.paths)
    if cfg.grid.queries > 0:
        retrieval_grid(table.paths, table.label_names(), nb, cfg.grid.queries, cfg.grid.k, seed=trained.seed).save(
            out / "retrieval_grid.png")
    print(f"\n{cfg.split} split ({table.describe()}), index {cfg.index.backend}/{cfg.index.factory}:\n"
          f"{format_metrics(metrics)}\n\nwritten to {out}: metrics.json"
          + (", embeddings.npy, labels.npy, items.csv" if cfg.save_embeddings else "")
          + (", retrieval_grid.png" if cfg.grid.queries > 0 else ""))
    return report


def main() -> None:
    """``lookalike evaluate ckpt=PATH [overrides]``."""
    hydra_main("eval", evaluate)
