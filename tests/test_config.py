"""Config spellings: renamed keys still work with a warning, and options one backend ignores are refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lookalike.config import upgrade_overrides
from lookalike.errors import LookalikeError
from lookalike.retrieval.knn import knn
from tests.helpers import compose_config


@pytest.mark.parametrize(("old", "new"), [
    ("index=hnsw", "knn=hnsw"),
    ("index.backend=torch", "knn.backend=torch"),
    ("trainer.channels_last=true", "model.channels_last=true"),
    ("+trainer.compile=true", "+model.compile=true"),
])
def test_renamed_keys_are_accepted_with_a_warning(old: str, new: str) -> None:
    with pytest.warns(FutureWarning, match="is now"):
        assert upgrade_overrides([old, "data.index=3", "hydra.run.dir=x"]) == [new, "data.index=3", "hydra.run.dir=x"]


def test_the_old_spelling_composes_the_same_config() -> None:
    with pytest.warns(FutureWarning):
        old = compose_config(["index=hnsw", "trainer.compile=true"])
    new = compose_config(["knn=hnsw", "model.compile=true"])
    assert old == new and new.knn.factory == "HNSW32" and new.model.compile is True
    assert "compile" not in new.trainer and "index" not in new


def test_options_of_the_other_backend_are_refused() -> None:
    x = torch.nn.functional.normalize(torch.randn(20, 8), dim=-1)
    with pytest.raises(LookalikeError, match="knn.precision=bf16 applies to the torch backend"):
        knn(x, x, 3, backend="faiss", precision="bf16")
    with pytest.raises(LookalikeError, match="knn.search_params='efSearch=64' are FAISS parameters"):
        knn(x, x, 3, backend="torch", search_params="efSearch=64")
    assert knn(x, x, 3, backend="faiss", factory="HNSW32", search_params="efSearch=64")[1].shape == (20, 3)


def test_export_takes_the_old_and_the_new_spelling(trained: dict, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "lookalike.cli", "export"]
    new = subprocess.run([*cli, trained["best_checkpoint"], "--out", str(tmp_path / "a.pt")], capture_output=True,
                         text=True, timeout=300)
    old = subprocess.run([*cli, f"ckpt={trained['best_checkpoint']}", f"out={tmp_path / 'b.pt'}"], capture_output=True,
                         text=True, timeout=300)
    assert new.returncode == 0 and old.returncode == 0, new.stderr[-2000:] + old.stderr[-2000:]
    assert "note" not in new.stderr and "is now `lookalike export X --out Y`" in old.stderr
    assert (tmp_path / "a.pt").is_file() and (tmp_path / "b.pt").is_file()
    missing = subprocess.run([*cli, trained["best_checkpoint"]], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "needs one source and --out FILE" in missing.stderr


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
