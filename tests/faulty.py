"""Deliberately faulty parts for the reliability tests."""

from __future__ import annotations

import time

import torch
from lightning.pytorch.callbacks import Callback
from pytorch_metric_learning.losses import TripletMarginLoss


class NaNForSteps(TripletMarginLoss):
    """A triplet loss that is NaN on ``nan_steps`` training calls from call number ``start`` (1-based) on."""

    def __init__(self, nan_steps: int = 2, start: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.nan_steps, self.start = nan_steps, start
        self.calls = 0

    def forward(self, embeddings, labels, indices_tuple=None, *args, **kwargs) -> torch.Tensor:
        loss = super().forward(embeddings, labels, indices_tuple, *args, **kwargs)
        if not embeddings.requires_grad:
            return loss
        self.calls += 1
        return loss * float("nan") if self.start <= self.calls < self.start + self.nan_steps else loss


class SlowSteps(Callback):
    """Sleeps after every training step, so that a test can kill a run in the middle of an epoch."""

    def __init__(self, seconds: float = 0.5):
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)
