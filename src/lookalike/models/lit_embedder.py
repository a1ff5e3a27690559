"""The LightningModule: embedder -> PML miner -> PML loss, and retrieval metrics on validation/test."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from timm.optim import param_groups_layer_decay
from torch import nn

from lookalike.config import build, trusted_config
from lookalike.data.table import ROLES, role_arguments
from lookalike.errors import LookalikeError
from lookalike.files import MAX_INPUT_SIDE, number_field
from lookalike.models.embedder import Embedder
from lookalike.models.nonfinite import NonFiniteSteps
from lookalike.retrieval.metrics import DEFAULT_KS, Neighbors, metrics_from_neighbors, search


# model.* keys that the LightningModule reads (speed switches), not the Embedder's architecture
MODULE_SWITCHES = ("channels_last", "compile")


def _mined_count(tuples: tuple | None) -> torch.Tensor | None:
    """Number of triplets (a, p, n) or pairs (a1, p, a2, n) a miner returned."""
    if tuples is None:
        return None
    return torch.tensor(float(len(tuples[0]) + (len(tuples[2]) if len(tuples) == 4 else 0)))


class LitEmbedder(L.LightningModule):
    """Trains an :class:`Embedder` with a metric-learning loss.

    ``config`` is the run's whole config (model, loss, miner, optim, eval) so a checkpoint
    rebuilds the module by itself. Loss configs with ``num_classes``/``embedding_size`` set to
    null (proxy and classification losses) get them from the data and the model; their
    parameters train in their own optimizer group with ``optim.lr.loss``.
    """

    def __init__(self, config: dict[str, Any], num_train_classes: int):
        super().__init__()
        self.save_hyperparameters()
        cfg = OmegaConf.create(config)
        model = OmegaConf.to_container(cfg.model, resolve=True)
        self.embedder = Embedder(**{k: v for k, v in model.items() if k not in MODULE_SWITCHES})
        fill = {k: v for k, v in (("num_classes", num_train_classes), ("embedding_size", self.embedder.embedding_size))
                if k in cfg.loss and cfg.loss[k] is None}
        self.loss_fn: nn.Module = build(cfg.loss, "the loss (loss=...)", **fill)
        self.loss_roles = tuple(role_arguments(self.loss_fn.forward, **dict.fromkeys(ROLES)))  # batch keys it takes
        has_miner = isinstance(cfg.get("miner"), DictConfig) and "_target_" in cfg.miner
        self.miner = build(cfg.miner, "the miner (miner=...)") if has_miner else None
        self.optim_cfg = cfg.optim
        limit = int(cfg.optim.get("max_nonfinite_steps", 20))
        self.nonfinite = NonFiniteSteps(limit) if limit > 0 else None  # 0: no check
        self.ks = tuple(cfg.get("eval", {}).get("ks", DEFAULT_KS))
        self.knn_cfg = dict(cfg.get("knn") or {"backend": "torch"})
        self._eval_outputs: list[dict[str, torch.Tensor]] = []
        self.last_neighbors: dict[str, Neighbors] = {}  # per "val"/"test": the latest search, in table rows
        self.channels_last_setting = model.get("channels_last", "auto")
        self.channels_last = False
        self.compile_model = bool(model.get("compile", False))

    # -- speed ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """``model.channels_last``: NHWC weights and batches (faster convolutions on GPUs with tensor
        cores; ``auto``: when training on a GPU); ``model.compile``: ``torch.compile`` the embedder in place
        (parameter names unchanged, so checkpoints are the same either way; the first steps pay the compile
        time)."""
        setting = self.channels_last_setting
        on_gpu = self.trainer.strategy.root_device.type == "cuda"
        self.channels_last = on_gpu if setting == "auto" else bool(setting)
        if self.channels_last:
            self.embedder.to(memory_format=torch.channels_last)
        if self.compile_model and getattr(self.embedder, "_compiled_call_impl", None) is None:
            self.embedder.compile()

    def _images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        images = batch["image"]
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    # -- training ------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedder(images)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        emb = self.embedder(self._images(batch))
        labels = batch["label"]
        tuples = self.miner(emb, labels) if self.miner is not None else None
        loss = self.loss_fn(emb, labels, tuples, **{role: batch[role] for role in self.loss_roles})
        self.log("train/loss", loss)
        if self._logging_step():
            # the progress bar's copy, on the host: Lightning turns progress-bar values into Python numbers
            # after every step, which for a GPU tensor would wait for the GPU every step
            self.log("loss", loss.detach().cpu(), prog_bar=True, logger=False)
            self._log_batch_stats(emb.detach(), labels, tuples)
            self.log_dict({f"lr/{g['name']}": g["lr"] for g in self.optimizers().param_groups})
        return loss

    def _logging_step(self) -> bool:
        """Whether Lightning writes this step's values to the logger (every ``trainer.log_every_n_steps``,
        its own test): the batch statistics are computed only then."""
        every = self.trainer.log_every_n_steps
        return every > 0 and self._step_number() % every == 0

    def _step_number(self) -> int:
        """The number of the optimizer step being taken (1 for the first), as Lightning counts for logging."""
        return self.global_step + 1  # optimizer steps taken so far (one optimizer, automatic optimization)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the step when a loss or gradient is not finite, counting it; stop the run with a clear message
        after ``optim.max_nonfinite_steps`` such steps in a row. With a fused optimizer (the default) the
        skip happens on the GPU and the counts are read only on logging steps, every ``max_nonfinite_steps``
        steps and at the end of each epoch. Gradients are already reduced across processes here, so every
        process decides the same."""
        if self.nonfinite is None:
            return
        step = self._step_number()
        self.nonfinite.flag(optimizer, step)
        if self._logging_step() or step % self.nonfinite.limit == 0:
            self._check_nonfinite(step)

    def _check_nonfinite(self, step: int) -> None:
        self.nonfinite.check(step)
        self.log("train/skipped_steps", float(self.nonfinite.skipped))

    def on_train_epoch_end(self) -> None:
        if self.nonfinite is not None:
            self._check_nonfinite(self.global_step)

    def _log_batch_stats(self, emb: torch.Tensor, labels: torch.Tensor, tuples: tuple | None) -> None:
        """Mean cosine similarity of positive and negative pairs, and how much the miner kept (masked sums:
        boolean indexing would wait for the GPU)."""
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        sim = emb.float() @ emb.float().T
        pos, neg = same & ~eye, ~same
        stats = {"train/pos_sim": (sim * pos).sum() / pos.sum().clamp(min=1),
                 "train/neg_sim": (sim * neg).sum() / neg.sum().clamp(min=1)}
        mined = _mined_count(tuples)
        if mined is not None:
            n_pos, n_neg = pos.sum(1).float(), neg.sum(1).float()
            possible = (n_pos * n_neg).sum() if len(tuples) == 3 else n_pos.sum() + n_neg.sum()
            stats["train/mined"] = mined
            stats["train/mined_fraction"] = mined.to(possible.device) / possible.clamp(min=1)
        self.log_dict(stats)

    def _set_backbone_frozen(self, frozen: bool) -> None:
        self.embedder.backbone.requires_grad_(not frozen)

    def _backbone_frozen(self) -> bool:
        return self.current_epoch < self.optim_cfg.get("freeze_backbone_epochs", 0)

    def train(self, mode: bool = True) -> LitEmbedder:
        """Train mode, but backbone BatchNorm statistics stay fixed with ``optim.freeze_bn`` or while
        the backbone is frozen (PK batches give poor statistics; pretrained ones generalise better)."""
        super().train(mode)
        if mode and (self.optim_cfg.get("freeze_bn", False) or self._backbone_frozen()):
            for m in self.embedder.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def on_train_epoch_start(self) -> None:
        self._set_backbone_frozen(self._backbone_frozen())
        self.train()

    def _backbone_groups(self) -> list[dict[str, Any]]:
        """The backbone's parameter group: one, or with ``optim.lr.layer_decay`` (e.g. 0.85) timm's layer-wise
        groups, each block's LR ``layer_decay`` times the next one's (the stem learns least)."""
        lr, backbone = self.optim_cfg.lr, self.embedder.backbone
        decay = lr.get("layer_decay")
        if not decay:
            return [{"name": "backbone", "params": list(backbone.parameters()), "lr": lr.backbone}]
        weight_decay = self.optim_cfg.optimizer.get("weight_decay", 0.0)
        groups = param_groups_layer_decay(backbone, weight_decay=weight_decay, layer_decay=decay)
        return [{"name": f"backbone.{i}", "params": g["params"], "weight_decay": g["weight_decay"],
                 "lr": lr.backbone * g["lr_scale"]} for i, g in enumerate(groups)]

    def configure_optimizers(self) -> dict[str, Any]:
        lr = self.optim_cfg.lr
        groups = [
            *self._backbone_groups(),
            {"name": "head", "params": [*self.embedder.head.parameters(), *self.embedder.pool.parameters()],
             "lr": lr.head},
            {"name": "loss", "params": list(self.loss_fn.parameters()), "lr": lr.get("loss", lr.head)},
        ]
        optimizer = build(self.optim_cfg.optimizer, "the optimizer (optim=...)")([g for g in groups if g["params"]])
        scheduler = build(self.optim_cfg.scheduler, "the LR schedule (optim.scheduler)")(
            optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- evaluation ----------------------------------------------------------------------------
    def _eval_step(self, batch: dict[str, torch.Tensor]) -> None:
        self._eval_outputs.append({
            "embeddings": self.embedder(self._images(batch)).float(),
            **{k: batch[k] for k in ("label", "index", "is_query", "is_gallery")},
        })

    def _eval_end(self, prefix: str) -> None:
        outputs, self._eval_outputs = self._eval_outputs, []
        if self.trainer.sanity_checking or not outputs:
            return
        data = {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}
        if self.trainer.world_size > 1:  # every rank gets all rows; padding duplicates go by index
            data = {k: v.flatten(0, 1) for k, v in self.all_gather(data).items()}
            order = torch.argsort(data["index"], stable=True)
            idx = data["index"][order]
            first = torch.ones_like(idx, dtype=torch.bool)
            first[1:] = idx[1:] != idx[:-1]
            data = {k: v[order[first]] for k, v in data.items()}
        nb = search(data["embeddings"], data["label"], data["is_query"], data["is_gallery"], max(self.ks),
                    **self.knn_cfg)
        metrics = metrics_from_neighbors(nb, self.ks)
        rows = data["index"].to(nb.queries.device)
        self.last_neighbors[prefix] = dataclasses.replace(nb, queries=rows[nb.queries], retrieved=rows[nb.retrieved])
        self.log_dict({f"{prefix}/{k}": v for k, v in metrics.items()}, sync_dist=False, rank_zero_only=False)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    trusted: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The contents of a training checkpoint, read as plain data (tensors, numbers, text, containers): torch's
    ``weights_only`` loader, which never runs code from the file. A file that needs more is refused, and so is one
    whose training config names a callable that neither lookalike's configs nor ``trusted`` (the targets of the
    run's own config, when a run reads its checkpoints) name (:func:`~lookalike.config.trusted_config`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LookalikeError(f"No checkpoint at '{path}' (train.py writes runs/<task>/<time>/checkpoints/best.ckpt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused an object: loading it would run code
        raise LookalikeError(f"'{path}' holds Python objects beyond plain data, which lookalike does not load "
                             "(loading them could run code from the file); lookalike's own checkpoints never do. "
                             "If you trust the file, re-save its state_dict and hyper_parameters as plain data") from e
    except Exception as e:  # zip and torch errors for foreign or corrupt files
        raise LookalikeError(f"'{path}' is not a readable PyTorch checkpoint ({e})") from e
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if isinstance(hp, dict) and "config" in hp:  # only what lookalike's configs name is ever built from it
        hp["config"] = trusted_config(hp["config"], path, trusted)
    return ckpt


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LitEmbedder:
    """Rebuild a trained LitEmbedder from a checkpoint of ``train.py`` (no download, no Hydra run)."""
    ckpt = read_checkpoint(path, map_location)
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if "config" not in hp or "state_dict" not in ckpt:
        raise LookalikeError(f"'{path}' is not a lookalike training checkpoint (it has no training config)")
    config = copy.deepcopy(hp["config"])
    if not isinstance(config.get("model"), dict) or not isinstance(config["model"].get("backbone"), dict):
        raise LookalikeError(f"'{path}' is a damaged lookalike training checkpoint (no model in its config)")
    if config["model"].get("image_size") is not None:
        number_field(config["model"]["image_size"], "model.image_size", path, 8, MAX_INPUT_SIDE, integer=True)
    config["model"]["backbone"].update(pretrained=False, checkpoint=None)  # the weights come from the file
    module = LitEmbedder(config, hp["num_train_classes"])
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()
