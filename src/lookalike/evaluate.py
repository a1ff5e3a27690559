"""Evaluation: load training checkpoints or embedder files, embed a split of the data (built as training builds
it), search it, report metrics (one row per embedder, side by side) and a picture."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lookalike.config import trusted_config
from lookalike.data.datamodule import datamodule_from_config
from lookalike.errors import LookalikeError
from lookalike.boxes.finder import BoxFinder, crop_queries, resolve_box_file
from lookalike.embedder.embed import embed_loader
from lookalike.embedder.source import load_source
from lookalike.models.embedder import Embedder
from lookalike.retrieval.grid import retrieval_grid
from lookalike.retrieval.metrics import Neighbors, clustering_nmi, metrics_from_neighbors, search
from lookalike.catalogue.local import build_local, comparison_picture, photo_features
from lookalike.data.images import load_rgb
from lookalike.data.table import ImageTable
from lookalike.verification.features import FeatureOptions, LocalFeatures
from lookalike.verification.appearance import Bounds
from lookalike.verification.ranking import rank
from lookalike.verification.votes import DescriptorVotes


def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Aligned lines: metric names, then each source's values (named when there are several; ``-`` where a row
    has no such metric: NMI of a verified row)."""
    keys = [k for k in rows[0]["metrics"] if k not in ("queries", "queries_without_relevant")]
    width = max(len(Path(r["checkpoint"]).name) for r in rows) if len(rows) > 1 else 0
    lines = [" " * width + "  ".join(f"{k:>11}" for k in keys)]
    for r in rows:
        name = f"{Path(r['checkpoint']).name:<{width}}" if width else ""
        lines.append(name + "  ".join(f"{r['metrics'][k]:>11.4f}" if k in r["metrics"] else f"{'-':>11}"
                                      for k in keys))
    return "\n".join(lines)


def save_embeddings(folder: Path, data: dict[str, torch.Tensor], paths: list[str], suffix: str = "") -> None:
    """``embeddings.npy``, ``labels.npy`` and ``items.csv`` (row, path, label, is_query, is_gallery), each name
    with ``suffix`` before its extension."""
    np.save(folder / f"embeddings{suffix}.npy", data["embeddings"].numpy())
    np.save(folder / f"labels{suffix}.npy", data["label"].numpy())
    with open(folder / f"items{suffix}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "path", "label", "is_query", "is_gallery"])
        for i in range(len(paths)):
            w.writerow([i, paths[i], int(data["label"][i]), int(data["is_query"][i]), int(data["is_gallery"][i])])


def _training_config(sources: list[tuple[str, Embedder, dict[str, Any]]]) -> tuple[str, dict[str, Any]] | None:
    """The first source that has a training config, and that config (a pretrained embedder file has none)."""
    return next(((name, prov["training_config"]) for name, _, prov in sources if prov.get("training_config")), None)


def _cropped(cfg: DictConfig, first: str) -> dict[str, Any] | None:
    """``crop=auto``: the box file to cut the query photos with (``boxes``, else box.pt beside the first source)."""
    crop = cfg.get("crop") or "none"
    if crop not in ("none", "auto"):
        raise LookalikeError(f"crop={crop}: choose auto (the box model's box) or none (whole photos)")
    if crop == "none":
        return None
    return {"boxes": str(resolve_box_file(cfg.get("boxes"), first, required=True))}


@dataclass
class GalleryFeatures:
    """The gallery's local features by table row, their vote index and the threshold calibrated on them; the query
    photos' features as they are first asked for (every source of an evaluation verifies the same photos)."""

    by_row: dict[int, LocalFeatures]
    votes: DescriptorVotes
    meta: dict[str, Any]  # their ``local`` meta: how photos are found and coded alike
    threshold: int
    bounds: Bounds
    photos: dict[int, LocalFeatures] = field(default_factory=dict)

    @classmethod
    def of(cls, table: ImageTable, workers: int | None = None) -> GalleryFeatures:
        rows = [int(r) for r in np.flatnonzero(table.is_gallery)]
        features, votes, meta = build_local(rows, [table.paths[r] for r in rows], FeatureOptions(), workers=workers)
        return cls(dict(zip(rows, features)), votes, meta, int(meta["threshold"]), Bounds.of(meta["appearance"]))

    def photo(self, row: int, path: str) -> LocalFeatures:
        """The features of the table's photo ``row`` with its pixels (the aligned comparison's), found once."""
        if row not in self.photos:
            self.photos[row] = photo_features([load_rgb(path)], self.meta)[0]
        return self.photos[row]


def verified_neighbors(nb: Neighbors, table: ImageTable, embeddings: torch.Tensor, gallery: GalleryFeatures,
                       count: int) -> Neighbors:
    """``nb`` with each query's ``count`` first results and the ``count`` most voted gallery pictures verified
    against its whole photo and put in verified order (as ``lookalike search`` does), the rest after them."""
    emb, width, queries = embeddings.float(), nb.retrieved.shape[1], nb.queries.cpu()
    retrieved, sims = [], []
    for query, found in zip(queries.tolist(), nb.retrieved.tolist()):
        photo = gallery.photo(query, table.paths[query])
        candidates = found[:count]
        voted = [r for r, _ in gallery.votes.candidates(photo, count + 1) if r != query and r not in candidates]
        candidates += voted[:count]
        pictures = [gallery.by_row[r] for r in candidates]
        ranked = rank([photo], pictures, (emb[candidates] @ emb[query]).tolist(), gallery.threshold,
                      lambda j: comparison_picture(table.paths[candidates[j]], pictures[j].size), bounds=gallery.bounds)
        order = [candidates[i] for i in ranked.order]
        checked = set(order)
        ranked = (order + [r for r in found if r not in checked])[:width]
        retrieved.append(ranked)
        sims.append((emb[ranked] @ emb[query]).tolist())
    rows = torch.tensor(retrieved, dtype=torch.long).reshape(nb.retrieved.shape)
    labels = torch.as_tensor(table.labels)[rows]
    query_labels = torch.as_tensor(table.labels)[queries]
    return Neighbors(queries, rows, torch.tensor(sims).reshape(nb.similarities.shape),
                     labels == query_labels[:, None], nb.relevant.cpu(), nb.skipped, labels, nb.shared_labels)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Embed the chosen split of ``cfg.data`` (else of the data the first trained source was trained on) with
    each source of ``cfg.ckpt`` (a training checkpoint or an embedder file, or a list of them), search it and
    report retrieval metrics, one row per source on the same data."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [str(c) for c in cfg.ckpt] if OmegaConf.is_list(cfg.ckpt) else [str(cfg.ckpt)]
    if not names:
        raise LookalikeError("ckpt=[]: name a checkpoint or an embedder file (or several)")
    sources = [(name, *load_source(name)) for name in names]
    found = _training_config(sources)
    trained = None if found is None else found[1]
    if cfg.get("data"):
        data_cfg = cfg.data
    elif found is not None:  # the data set is built from a file's config: only from what lookalike may build
        data_cfg = OmegaConf.create(trusted_config(*reversed(found))).data
    else:
        raise LookalikeError("No data to evaluate on: these embedders were not trained by lookalike (they carry no "
                             "training config); give it, e.g. data=image_folder data.root=/path/to/photos")
    seed = trained["seed"] if trained is not None else cfg.seed
    dm = datamodule_from_config(data_cfg, seed, cfg.paths.cache_dir, sources[0][1].preprocessing,
                                eval_batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    if cfg.split not in ("test", "val"):
        raise LookalikeError(f"split={cfg.split!r}: choose test or val")
    table = dm.test_table if cfg.split == "test" else dm.val_table
    crop = _cropped(cfg, names[0])
    if crop:
        table, crop["cropped"] = crop_queries(table, BoxFinder.load(crop["boxes"]))
        crop["queries"] = int(table.is_query.sum())

    device = _device(cfg.device)
    rows, gallery = [], None
    for i, (name, embedder, _) in enumerate(sources):
        suffix = "" if len(sources) == 1 else f"_{i}"
        dm.preprocessing = embedder.preprocessing  # each embedder's own image size and normalisation
        data = embed_loader(embedder.to(device), dm.eval_dataloader(table),
                            dtype=torch.float16 if cfg.half_embeddings else torch.float32,
                            desc=f"embedding {cfg.split}")
        nb = search(data["embeddings"].to(device), data["label"], data["is_query"], data["is_gallery"],
                    max(cfg.ks), **cfg.knn, **cfg.expansion)
        metrics = metrics_from_neighbors(nb, cfg.ks)
        if cfg.nmi:
            metrics["nmi"] = clustering_nmi(data["embeddings"], data["label"], seed=seed)
        rows.append({"checkpoint": name, "metrics": metrics})
        if cfg.verify:  # the same search with verified matching, side by side
            gallery = gallery or GalleryFeatures.of(table, cfg.num_workers or None)
            checked = verified_neighbors(nb, table, data["embeddings"].cpu(), gallery, cfg.verify)
            rows.append({"checkpoint": f"{name} + verified", "metrics": metrics_from_neighbors(checked, cfg.ks),
                         "verified": {"candidates": cfg.verify, "threshold": gallery.threshold}})
        if cfg.save_embeddings:
            save_embeddings(out, data, table.paths, suffix)
        if cfg.grid.queries > 0:
            retrieval_grid(table.paths, table.label_names(), nb, cfg.grid.queries, cfg.grid.k, seed=seed).save(
                out / f"retrieval_grid{suffix}.png")

    report = {**rows[0], "split": cfg.split, "set": table.describe(), "index": OmegaConf.to_container(cfg.knn),
              "expansion": OmegaConf.to_container(cfg.expansion), "crop": crop, "rows": rows}
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    files = ["metrics.json", *(["embeddings.npy", "labels.npy", "items.csv"] if cfg.save_embeddings else []),
             *(["retrieval_grid.png"] if cfg.grid.queries > 0 else [])]
    if len(sources) > 1:
        files = [files[0], *(f.replace(".", "_N.", 1) for f in files[1:])]
    cropped = f", {crop['cropped']} of {crop['queries']} queries cut to the box found" if crop else ""
    print(f"\n{cfg.split} split ({table.describe()}{cropped}), index {cfg.knn.backend}/{cfg.knn.factory}:\n"
          f"{format_rows(rows)}\n\nwritten to {out}: {', '.join(files)}"
          + ("  (N: the embedder's place in ckpt=[...], from 0)" if len(sources) > 1 else ""))
    return report
