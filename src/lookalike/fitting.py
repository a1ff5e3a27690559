"""What every training run shares, whatever it trains (the embedder, the box model): the Lightning Trainer built
from the config's ``trainer``, ``callbacks`` and ``logger`` groups, the best validation score it kept, and closing
the loggers that hold a run open."""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig

from lookalike.config import build


class PatientStopping(EarlyStopping):
    """Lightning's early stopping, never before ``min_share`` of ``trainer.max_epochs``: a validation metric that
    is flat early (the model still finding its way, or a validation set too easy to move) does not end a run
    before its schedule has had a fair chance; past that share, ``patience`` validations without a gain stop it."""

    def __init__(self, *args, min_share: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_share = min_share

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.max_epochs and trainer.max_epochs > 0:
            least = math.ceil(self.min_share * trainer.max_epochs)
            trainer.fit_loop.min_epochs = max(trainer.fit_loop.min_epochs or 0, least)


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
