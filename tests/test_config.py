"""Config spellings: one name per key, options one backend ignores refused, and configs read from files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lookalike.errors import LookalikeError
from tests.helpers import compose_config


def test_each_key_has_one_name() -> None:
    """0.1.0 has no users to keep: the spellings before it are plain errors, the keys have their one name."""
    from hydra.errors import ConfigCompositionException

    new = compose_config(["knn=hnsw", "model.compile=true"])
    assert new.knn.factory == "HNSW32" and new.model.compile is True
    assert "compile" not in new.trainer and "index" not in new
    for old in (["index=hnsw"], ["trainer.compile=true"]):
        with pytest.raises(ConfigCompositionException):
            compose_config(old)


def test_loader_workers_never_exceed_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from lookalike.config import workers

    cores = len(os.sched_getaffinity(0))
    assert workers(64) == cores and workers(1) == 1 and workers(0) == 0
    assert compose_config(["data=cub200", "data.root=x"]).data.num_workers == min(8, cores)


@pytest.mark.slow  # several seconds: in the slow suite (CI runs both)
def test_export_takes_a_source_and_out(trained: dict, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "lookalike.cli", "export"]
    new = subprocess.run([*cli, trained["best_checkpoint"], "--out", str(tmp_path / "a.pt")], capture_output=True,
                         text=True, timeout=300)
    assert new.returncode == 0 and (tmp_path / "a.pt").is_file(), new.stderr[-2000:]
    missing = subprocess.run([*cli, trained["best_checkpoint"]], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "the following arguments are required: --out" in missing.stderr


def test_configs_read_from_files_may_name_only_the_targets_of_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    from lookalike.config import known_targets, trusted_config

    assert {"pytorch_metric_learning.losses.TripletMarginLoss", "lookalike.data.synthetic.synthetic_products"} \
        <= known_targets()
    own = {"loss": {"_target_": "pytorch_metric_learning.losses.TripletMarginLoss", "margin": 0.2}}
    assert trusted_config(own, "f.ckpt") == own
    nested = {"loss": {"_target_": "pytorch_metric_learning.losses.TripletMarginLoss",
                       "distance": {"_target_": "shutil.rmtree", "_args_": ["/"]}}}
    with pytest.raises(LookalikeError, match=r"'f.ckpt' names code to run \('shutil.rmtree'\)"):
        trusted_config(nested, "f.ckpt")
    hidden = {"loss": "${oc.create:'{_target_: shutil.rmtree}'}"}  # an interpolation that makes a target
    with pytest.raises(LookalikeError, match="shutil.rmtree"):
        trusted_config(hidden, "f.ckpt")
    monkeypatch.setenv("LOOKALIKE_TRUSTED_TARGETS", "my_pkg.MyLoss, other.Thing")
    mine = {"loss": {"_target_": "my_pkg.MyLoss"}}
    assert trusted_config(mine, "f.ckpt") == mine


def test_a_run_trains_what_its_runner_names(tmp_path: Path) -> None:
    from lookalike.train import RUNNERS, run
    from tests.helpers import tiny_overrides

    assert set(RUNNERS) == {"embedder", "box"}
    assert compose_config(["experiment=box"]).runner == "box" and compose_config([]).runner == "embedder"
    with pytest.raises(LookalikeError, match="runner=nope: choose one of embedder, box"):
        run(compose_config(tiny_overrides(tmp_path / "cache", tmp_path / "run") + ["runner=nope"]))
