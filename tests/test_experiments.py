"""Every experiment config, and every data set config, composes and runs one training step on a tiny fake of its
data, then tests on the whole fake test split (a new experiment or data set is smoke-tested for free, whatever
its data)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig, open_dict

from lookalike.config import config_dir
from lookalike.data.datamodule import build_datamodule
from lookalike.train import run
from tests.helpers import TINY_DATA, TINY_MODEL, compose_config

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
DATA_SETS = sorted(p.stem for p in (config_dir() / "data").glob("*.yaml"))

# the fixture (conftest.py) holding a tiny fake of each data source's layout, by the source's function
FAKES = {"synthetic_products": "data_cache", "image_folder": "image_folder", "manifest": "fake_manifest",
         "cub200": "fake_cub", "cars196": "fake_cars", "stanford_online_products": "fake_sop",
         "inshop": "fake_inshop", "omniglot": "fake_omniglot", "unlabeled_folder": "image_folder"}


def test_there_are_experiments_and_every_data_set_has_a_fake() -> None:
    assert "triplet_resnet" in EXPERIMENTS and "synthetic" in DATA_SETS
    sources = {compose_config([f"data={d}"]).data.source._target_.rsplit(".", 1)[-1] for d in DATA_SETS}
    assert sources <= FAKES.keys(), f"add a fake of {sorted(sources - FAKES.keys())} to conftest.py and FAKES"


def _tiny(choice: str, tmp_path: Path, request: pytest.FixtureRequest) -> DictConfig:
    """The config of ``choice`` (e.g. ``experiment=X`` or ``data=Y``) on the tiny fake of its data source."""
    source = compose_config([choice]).data.source._target_.rsplit(".", 1)[-1]
    root = request.getfixturevalue(FAKES[source])
    cfg = compose_config([choice, *TINY_MODEL, f"data.root={root}", "data.num_workers=0",
                          f"paths.cache_dir={tmp_path / 'cache'}", "data.batch_size=8", "data.eval_batch_size=16",
                          "logger=none", "eval.baseline=false", "eval.before=false", "trainer.max_epochs=1",
                          "+trainer.limit_train_batches=1",
                          "trainer.accelerator=cpu", "trainer.precision=32-true", f"paths.output_dir={tmp_path}"])
    with open_dict(cfg):
        if "train_classes" in cfg.data.source:  # the fake folder and manifest have 6 and 8 classes
            cfg.data.source.train_classes = 4
            cfg.data.val_classes = 1
        if "num_train_classes" in cfg.data.source:  # CUB and Cars: the standard split of all their classes
            cfg.data.val_classes = 2
        if "pseudo_labels" in cfg.data.source and not cfg.data.instances:  # clusters as lookalike pseudo-labels writes
            rows = [f"{p},{p.parent.name}" for p in sorted(Path(root).rglob("*.jpg"))]
            (tmp_path / "clusters.csv").write_text("\n".join(["path,label", *rows]))
            cfg.data.source.pseudo_labels = str(tmp_path / "clusters.csv")
        if cfg.data.get("feedback_val") and not cfg.data.feedback:  # harvested marks: a photo of each product
            folder = Path(root).parent
            rows = [f"{folder}/img/{sku}_1.jpg,same,SKU-{sku:03d},{folder}/img/{sku}_0.jpg,harvested"
                    for sku in range(8)]
            (tmp_path / "feedback.csv").write_text("\n".join(["photo,verdict,label,path,source", *rows]) + "\n")
            cfg.data.feedback = str(tmp_path / "feedback.csv")
        if "num_train_products" in cfg.data.source:
            cfg.data.source.update(TINY_DATA)
        if "box" in cfg:  # the box model's own backbone, as TINY_MODEL makes the embedder's
            cfg.box.update({"backbone": "test_efficientnet", "pretrained": False, "image_size": 32,
                            "samples_per_epoch": 8, "eval_samples": 8})
    return cfg


def _check_report(cfg: DictConfig, report: dict) -> None:
    """The run tested its own test split: every valid query of it, with coherent retrieval metrics (a box
    model: its IoU on composites of the test split, and its box file)."""
    test = build_datamodule(cfg).test_table
    if "box" in cfg:
        assert report["test_set"] == f"composites of {test.describe()}" and Path(report["box_file"]).is_file()
        assert 0 <= report["test"]["box model"]["iou"] <= 1 and report["test"]["box model"]["photos"] == 8
        return
    after = next(row for name, row in report["test"].items() if name.startswith("after training"))
    assert report["test_set"] == test.describe()
    assert after["queries"] + after["queries_without_relevant"] == test.is_query.sum() and after["queries"] > 0
    recalls = [after[f"recall@{k}"] for k in (1, 2, 4, 8)]
    assert recalls == sorted(recalls) and after["precision@1"] == recalls[0]
    assert 0 < after["map@r"] <= after["r_precision"] + 1e-9 <= 1 + 1e-9
    assert Path(report["embedder"]).is_file()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_on_tiny_data(experiment: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cfg = _tiny(f"experiment={experiment}", tmp_path, request)
    _check_report(cfg, run(cfg))


@pytest.mark.parametrize("data", DATA_SETS)
def test_data_set_trains_on_its_tiny_fake(data: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cfg = _tiny(f"data={data}", tmp_path, request)
    _check_report(cfg, run(cfg))
