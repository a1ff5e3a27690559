"""Every experiment config composes and runs a tiny fast-dev-run (a new experiment is smoke-tested for free)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import open_dict

from lookalike.config import config_dir
from lookalike.train import run
from tests.helpers import TINY_MODEL, compose_config

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def test_there_are_experiments() -> None:
    assert "triplet_resnet" in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_on_tiny_data(experiment: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cfg = compose_config([f"experiment={experiment}"])
    source = cfg.data.source._target_.rsplit(".", 1)[-1]
    roots = {"cub200": "fake_cub", "image_folder": "image_folder", "synthetic_products": "data_cache",
             "omniglot": "fake_omniglot", "unlabeled_folder": "image_folder"}
    root = request.getfixturevalue(roots[source])
    cfg = compose_config([f"experiment={experiment}", *TINY_MODEL, f"data.root={root}", "data.num_workers=0",
                          f"paths.cache_dir={tmp_path / 'cache'}",
                          "data.batch_size=8", "data.eval_batch_size=16", "logger=none", "eval.baseline=false",
                          "eval.before=false", "+trainer.fast_dev_run=1", "trainer.accelerator=cpu",
                          "trainer.precision=32-true", f"paths.output_dir={tmp_path}"])
    with open_dict(cfg):
        if "train_classes" in cfg.data.source:  # the fake folder has 6 classes
            cfg.data.source.train_classes = 4
            cfg.data.val_classes = 1
        if "pseudo_labels" in cfg.data.source and not cfg.data.instances:  # clusters as lookalike pseudo-labels writes
            rows = [f"{p},{p.parent.name}" for p in sorted(Path(root).rglob("*.jpg"))]
            (tmp_path / "clusters.csv").write_text("\n".join(["path,label", *rows]))
            cfg.data.source.pseudo_labels = str(tmp_path / "clusters.csv")
        if "num_train_products" in cfg.data.source:
            cfg.data.source.update(num_train_products=10, num_test_products=5, photos_per_product=3, image_size=40)
    report = run(cfg)
    assert 0.0 <= report["test"]["after training"]["recall@1"] <= 1.0
