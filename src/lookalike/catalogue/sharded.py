"""Embedding a large catalogue on several devices or machines: Lightning's predict loop under DDP.

Each process embeds its share of the files (Lightning's distributed sampler), writes its shard (positions,
vectors, errors) into a folder all processes can reach, and waits for the others; every process then
reads every shard back in file order, dropping the repeats the sampler pads with. So the result is the one
process's, embedded faster: `lookalike index build --devices N [--num-nodes M]`. Every process gets the result
(the local features are then shared alike: :class:`Share`); only rank 0 writes the catalogue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from lookalike.data.images import Box
from lookalike.errors import LookalikeError
from lookalike.files import claim_folder, release_folder
from lookalike.embedder.embed import image_files
from lookalike.models.embedder import Embedder


SHARDS_MARKER = "lookalike-shards"  # in <out>.shards/: the folder is lookalike's own, to remove when done


@dataclass(frozen=True)
class Share:
    """This process's part of work that several processes share (DDP's rank among ``count``; one process alone:
    0 of 1): parts ``n`` with ``n % count == rank`` are its own, and the first process gathers them."""

    rank: int = 0
    count: int = 1

    @classmethod
    def current(cls) -> Share:
        """This process's share of the DDP group it is in (after :func:`embed_sharded`), else the whole."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return cls(torch.distributed.get_rank(), torch.distributed.get_world_size())
        return cls()

    @property
    def leads(self) -> bool:
        """Whether this process gathers the parts and writes the result."""
        return self.rank == 0

    def owns(self, part: int) -> bool:
        return part % self.count == self.rank

    def wait(self) -> None:
        """Wait until every process of the group gets here."""
        if self.count > 1:
            torch.distributed.barrier()


@dataclass(frozen=True)
class Processes:
    """Where to embed: ``devices`` per machine on ``num_nodes`` machines (Lightning's names), the shards in
    ``folder``."""

    devices: int
    folder: Path
    num_nodes: int = 1
    accelerator: str = "auto"

    def __post_init__(self) -> None:
        if self.devices < 1 or self.num_nodes < 1:
            raise LookalikeError(f"devices={self.devices}, num_nodes={self.num_nodes}: each must be at least 1")

    @property
    def count(self) -> int:
        return self.devices * self.num_nodes


class _Embedding(L.LightningModule):
    """The embedder as a LightningModule that only predicts: (positions, vectors, errors) per batch."""

    def __init__(self, embedder: Embedder):
        super().__init__()
        self.embedder = embedder.eval()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        ok = torch.tensor([not e for e in batch["error"]], dtype=torch.bool, device=batch["image"].device)
        vectors = (self.embedder.embed_batch(batch["image"][ok]) if ok.any()
                   else torch.empty(0, self.embedder.embedding_size))
        return {"position": batch["position"][ok.cpu()].cpu().numpy(), "vectors": vectors.float().cpu().numpy(),
                "errors": {int(p): e for p, e in zip(batch["position"].tolist(), batch["error"]) if e}}


class _ShardWriter(BasePredictionWriter):
    """Keeps this process's batches and writes them as one shard when its share is done."""

    def __init__(self, folder: Path):
        super().__init__(write_interval="batch")
        self.folder, self.parts = folder, []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.parts.append(prediction)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dim = pl_module.embedder.embedding_size
        positions = np.concatenate([p["position"] for p in self.parts]) if self.parts else np.zeros(0, np.int64)
        vectors = np.concatenate([p["vectors"] for p in self.parts]) if self.parts else np.zeros((0, dim), np.float32)
        errors = {k: v for p in self.parts for k, v in p["errors"].items()}
        self.folder.mkdir(parents=True, exist_ok=True)
        np.savez(self.folder / f"shard-{trainer.global_rank}.npz", positions=positions, vectors=vectors,
                 errors=np.array(json.dumps(errors)))


def embed_sharded(embedder: Embedder, paths: Sequence[str], processes: Processes, batch_size: int = 64,
                  num_workers: int = 2, boxes: Sequence[Box | None] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Embed ``paths`` (cut to ``boxes`` where given) in ``processes``: in every process, (positions of the readable
    files in order, their vectors, errors of the others); the shards then removed."""
    folder = processes.folder
    claim_folder(folder, SHARDS_MARKER, "embedding shards folder (<out>.shards/)")
    loader = DataLoader(image_files(embedder, paths, boxes), batch_size=batch_size, num_workers=num_workers)
    trainer = L.Trainer(accelerator=processes.accelerator, devices=processes.devices, num_nodes=processes.num_nodes,
                        strategy="ddp", callbacks=[_ShardWriter(folder)], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=True)
    trainer.predict(_Embedding(embedder), dataloaders=loader, return_predictions=False)
    trainer.strategy.barrier()  # every shard is written
    shards = [dict(np.load(folder / f"shard-{r}.npz")) for r in range(trainer.world_size)]
    trainer.strategy.barrier()  # every process has read them
    if trainer.global_rank == 0:
        release_folder(folder, SHARDS_MARKER)
    positions = np.concatenate([s["positions"] for s in shards])
    vectors = np.concatenate([s["vectors"] for s in shards])
    errors = {int(k): v for s in shards for k, v in json.loads(str(s["errors"])).items()}
    first = np.unique(positions, return_index=True)[1]  # in file order, each once (the sampler pads with repeats)
    return positions[first], vectors[first], [errors[k] for k in sorted(errors)]
