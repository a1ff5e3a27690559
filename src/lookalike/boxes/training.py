"""Training the box model (``python train.py experiment=box``): composites of the data set's pictures with known
boxes (:mod:`~lookalike.boxes.composites`), the network (:mod:`~lookalike.boxes.net`), and the box file the run
writes for the finder (:mod:`~lookalike.boxes.finder`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from lookalike.boxes.composites import Composites
from lookalike.boxes.finder import save_box_file
from lookalike.boxes.net import LitBoxNet, evaluate_boxes
from lookalike.config import config_targets
from lookalike.data.datamodule import build_datamodule
from lookalike.fitting import best_score, build_trainer, finish_loggers
from lookalike.models.lit_embedder import read_checkpoint
from lookalike.provenance import provenance


def train_boxes(cfg: DictConfig) -> dict[str, Any]:
    """The box model: fitted on composites of the training classes' pictures (:mod:`lookalike.boxes.composites`)
    and on photos with known boxes (a manifest's, or harvested marks' with ``data.feedback=``),
    its best epoch chosen on the validation classes' composites (``val/iou``), reported on the test classes'
    (IoU, confidence, ms per photo); written as ``box.pt`` in the run folder."""
    started = time.time()
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    box = cfg.box

    def loader(table: Any, length: int, seed: int, shuffle: bool = False) -> DataLoader:
        # the catalogue pictures, and photos whose box is known (harvested ones): a photo is no object otherwise
        boxed = np.isfinite(table.boxes).all(1) if table.boxes is not None else np.zeros(len(table), bool)
        pictures = table.subset(table.is_gallery | boxed)
        data = Composites(pictures.paths, box.image_size, length, seed, pictures.boxes, box.empty_share)
        return DataLoader(data, batch_size=cfg.data.batch_size, shuffle=shuffle, num_workers=cfg.data.num_workers)

    module = LitBoxNet(config)
    trainer = build_trainer(cfg)
    trainer.fit(module, loader(datamodule.train_table, box.samples_per_epoch, cfg.seed, shuffle=True),
                loader(datamodule.val_table, box.eval_samples, cfg.seed + 1))
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        module.load_state_dict(read_checkpoint(best, trusted=config_targets(cfg))["state_dict"])
    test = evaluate_boxes(module.net, loader(datamodule.test_table, box.eval_samples, cfg.seed + 2))
    report = {"test": {"box model": test}, "best_checkpoint": best, "optimized_metric": cfg.optimized_metric,
              "best_val": best_score(trainer), "test_set": f"composites of {datamodule.test_table.describe()}",
              "duration_s": round(time.time() - started, 1)}
    if trainer.is_global_zero:
        report["box_file"] = str(save_box_file(module.net, output_dir / "box.pt", box.min_confidence,
                                               training_config=config, metrics=report, **provenance(cfg.seed)))
        (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        print(f"\nTest classes, {report['test_set']}:\n" + "\n".join(f"  {k}: {v:.4g}" for k, v in test.items())
              + f"\nbox file: {report['box_file']}\nrun folder: {output_dir}")
    finish_loggers(trainer)
    return report
