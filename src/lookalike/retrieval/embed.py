"""Batched embedding extraction: over a DataLoader of ImageDataset batches, or over image files."""

from __future__ import annotations

import os
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from lookalike.data.images import load_rgb
from lookalike.data.transforms import eval_resize, eval_transform
from lookalike.errors import LookalikeError
from lookalike.models.embedder import Embedder


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


class ImageFiles(Dataset):
    """Image files through a transform; a file that cannot be read yields a zero image and its error."""

    def __init__(self, paths: Sequence[str], preprocessing: dict):
        self.paths, self.transform = list(paths), eval_transform(preprocessing)
        self.size, self.min_side = preprocessing["input_size"][-1], eval_resize(preprocessing)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        try:
            image = load_rgb(self.paths[i], min_side=self.min_side)
            return {"image": self.transform(image=image)["image"], "position": i, "error": ""}
        except LookalikeError as e:
            return {"image": torch.zeros(3, self.size, self.size, dtype=torch.uint8), "position": i, "error": str(e)}


@torch.inference_mode()
def embed_files(
    embedder: Embedder, paths: Sequence[str], start: int = 0, batch_size: int = 64, num_workers: int | None = None,
    progress: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """Embed ``paths[start:]`` batch by batch (decoding in ``num_workers`` processes, on the GPU if there
    is one): yields (positions of the readable files, their float32 embeddings, errors of the others)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format  # NHWC: faster GPU convolutions
    embedder = embedder.to(device, memory_format=fmt).eval()
    dataset = ImageFiles(paths, embedder.preprocessing)
    workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
    loader = DataLoader(Subset(dataset, range(start, len(paths))), batch_size=batch_size, num_workers=workers,
                        pin_memory=device.type == "cuda")
    with tqdm(total=len(paths), initial=start, desc="embedding images", unit="img", disable=not progress) as bar:
        for batch in loader:
            ok = torch.tensor([not e for e in batch["error"]], dtype=torch.bool)
            vectors = torch.empty(0, embedder.embedding_size)
            if ok.any():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    images = batch["image"][ok].to(device, non_blocking=True).contiguous(memory_format=fmt)
                    vectors = embedder(images).float().cpu()
            bar.update(len(ok))
            yield batch["position"][ok].numpy(), vectors.numpy(), [e for e in batch["error"] if e]
