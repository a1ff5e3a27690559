"""Batched embedding extraction over a DataLoader of ImageDataset batches."""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm


@torch.inference_mode()
def embed(
    model: Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    desc: str = "embedding",
) -> dict[str, torch.Tensor]:
    """Embed every batch: returns ``embeddings`` (on the CPU, ``dtype``), ``label``, ``index``,
    ``is_query`` and ``is_gallery`` in loader order. Autocast (bf16) is used on CUDA."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out: dict[str, list[torch.Tensor]] = {"embeddings": [], "label": [], "index": [], "is_query": [], "is_gallery": []}
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images = batch["image"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            emb = model(images)
        out["embeddings"].append(emb.to("cpu", dtype))
        for key in ("label", "index", "is_query", "is_gallery"):
            out[key].append(batch[key])
    return {k: torch.cat(v) for k, v in out.items()}
