"""An exponential moving average of the weights that never waits for the GPU."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging


class FusedEMA(WeightAveraging):
    """Lightning's ``WeightAveraging`` (validation, checkpoints and the exported embedder use the average)
    with an exponential moving average of the weights and buffers, updated after every optimizer step in
    two foreach kernels and without a host wait.

    torch's ``AveragedModel.update_parameters`` reads its update count, a tensor on the GPU, twice per call
    (each a wait for all the GPU's queued work, so the host cannot run ahead into the next step) and updates
    integer buffers tensor by tensor. Here the count is mirrored on the host (read once, after a resume),
    floating-point tensors move by ``torch._foreach_lerp_`` (what ``get_ema_multi_avg_fn`` does) and integer
    buffers (BatchNorm's batch counters) take the model's current value.
    """

    def __init__(self, decay: float = 0.99, **kwargs: Any):
        super().__init__(**kwargs)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"callbacks.ema.decay must be in [0, 1), not {decay}")
        self.decay = decay
        self._updates: int | None = None  # host mirror of the AveragedModel's n_averaged

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            self.update(pl_module)
            self._latest_update_step = trainer.global_step

    def _tensors(self, module: torch.nn.Module) -> list[torch.Tensor]:
        return [*module.parameters(), *module.buffers()] if self._use_buffers else [*module.parameters()]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards ``model``'s weights and buffers (a copy of them on the first update)."""
        average = self._average_model
        if self._updates is None:
            self._updates = int(average.n_averaged)
        pairs = list(zip(self._tensors(average.module), self._tensors(model), strict=True))
        first = self._updates == 0
        floats = [] if first else [(a, m) for a, m in pairs if a.is_floating_point()]
        others = pairs if first else [(a, m) for a, m in pairs if not a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [m for _, m in floats], 1.0 - self.decay)
        if others:
            torch._foreach_copy_([a for a, _ in others], [m for _, m in others])
        average.n_averaged += 1
        self._updates += 1
