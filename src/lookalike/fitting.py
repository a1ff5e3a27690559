"""What every training run shares, whatever it trains (the embedder, the box model): the Lightning Trainer built
from the config's ``trainer``, ``callbacks`` and ``logger`` groups, the best validation score it kept, and closing
the loggers that hold a run open."""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig

from lookalike.config import build


TIE = 1e-6  # how near the best a validation is to tie with it (metrics are float32)


class PatientStopping(EarlyStopping):
    """Lightning's early stopping on a worsening trend, not on a plateau, and never before ``min_share`` of
    ``trainer.max_epochs``: a validation that equals the best counts as no worse (``plateaus=False``), so a metric
    too coarse to move (a few validation photos, renders the model already finds) does not end a run before its
    schedule has had a fair chance; ``patience`` validations in a row below the best stop it."""

    def __init__(self, *args, min_share: float = 0.5, plateaus: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_share = min_share
        if not plateaus:  # a tie with the best is an improvement of nothing: the count starts again
            self.min_delta = -TIE if self.monitor_op == torch.gt else TIE

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.max_epochs and trainer.max_epochs > 0:
            least = math.ceil(self.min_share * trainer.max_epochs)
            trainer.fit_loop.min_epochs = max(trainer.fit_loop.min_epochs or 0, least)


class LatestBestCheckpoint(ModelCheckpoint):
    """Lightning's checkpoint callback, keeping the later of two epochs that tie on the monitored metric: when
    validation cannot tell them apart, the one that trained longer on the schedule (the start stays guarded by the
    WiSE-FT choice, :func:`lookalike.train.choose_weights`)."""

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        if super().check_monitor_top_k(trainer, current):
            return True
        if current is None or self.save_top_k != 1 or not self.best_k_models:
            return False
        tie = bool(abs(float(current) - float(self.best_k_models[self.kth_best_model_path])) <= TIE)
        return trainer.strategy.reduce_boolean_decision(tie)


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Lightning Trainer with the configured callbacks and loggers."""
    callbacks = [build(c, "a callback (callbacks=...)") for c in (cfg.get("callbacks") or {}).values()]
    loggers = [build(c, "a logger (logger=...)") for c in (cfg.get("logger") or {}).values()]
    return build(cfg.trainer, "the trainer (trainer=...)", callbacks=callbacks, logger=loggers or False)


def best_score(trainer: L.Trainer) -> float | None:
    """The best value of the monitored metric the checkpoint callback kept (None without one)."""
    cb = trainer.checkpoint_callback
    return float(cb.best_model_score) if cb is not None and cb.best_model_score is not None else None


def finish_loggers(trainer: L.Trainer) -> None:
    """Close wandb runs, so that each run (or sweep trial in the same process) is its own wandb run."""
    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        import wandb

        wandb.finish()
