"""Batched embedding: over a DataLoader of ImageDataset batches (evaluation), or over image files (catalogues).
Both go through :meth:`Embedder.embed_batch`, as do single queries (:meth:`Embedder.embed`)."""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from lookalike.data.images import Box, ImageFiles
from lookalike.data.transforms import eval_resize, eval_transform
from lookalike.models.embedder import Embedder


def embed_loader(embedder: Embedder, loader: DataLoader, dtype: torch.dtype = torch.float32, pooled: bool = False,
                 progress: bool = True, desc: str = "embedding") -> dict[str, torch.Tensor]:
    """Embed every batch on the embedder's device: returns ``embeddings`` (on the CPU, ``dtype``), ``label``,
    ``index``, ``is_query`` and ``is_gallery`` in loader order. ``pooled``: the pooled backbone features."""
    embedder.eval()
    out: dict[str, list[torch.Tensor]] = {"embeddings": [], "label": [], "index": [], "is_query": [], "is_gallery": []}
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        out["embeddings"].append(embedder.embed_batch(batch["image"], pooled=pooled).to(dtype))
        for key in ("label", "index", "is_query", "is_gallery"):
            out[key].append(batch[key])
    return {k: torch.cat(v) for k, v in out.items()}


def default_device() -> torch.device:
    """The GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def image_files(embedder: Embedder, paths: Sequence[str], boxes: Sequence[Box | None] | None = None) -> ImageFiles:
    """The files (each cut to its box where ``boxes`` has one) as the embedder's evaluation transform sees them."""
    pre = embedder.preprocessing
    return ImageFiles(paths, eval_transform(pre), pre["input_size"][-1], eval_resize(pre), boxes)


def embed_files(
    embedder: Embedder, paths: Sequence[str], start: int = 0, batch_size: int = 64, num_workers: int | None = None,
    progress: bool = True, boxes: Sequence[Box | None] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """Embed ``paths[start:]`` (each cut to its box where ``boxes`` has one) batch by batch (decoding in
    ``num_workers`` processes, on the GPU if there is one): yields (positions of the readable files, their float32
    embeddings, errors of the others)."""
    device = default_device()
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format  # NHWC: faster GPU convolutions
    embedder = embedder.to(device, memory_format=fmt).eval()
    dataset = image_files(embedder, paths, boxes)
    workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
    loader = DataLoader(Subset(dataset, range(start, len(paths))), batch_size=batch_size, num_workers=workers,
                        pin_memory=device.type == "cuda")
    with tqdm(total=len(paths), initial=start, desc="embedding images", unit="img", disable=not progress) as bar:
        for batch in loader:
            ok = torch.tensor([not e for e in batch["error"]], dtype=torch.bool)
            vectors = embedder.embed_batch(batch["image"][ok]) if ok.any() else torch.empty(0, embedder.embedding_size)
            bar.update(len(ok))
            yield batch["position"][ok].numpy(), vectors.numpy(), [e for e in batch["error"] if e]
