"""`python train.py` and `lookalike train` end to end, as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def _train(*args: str, cwd: Path, entry: tuple[str, ...] = (sys.executable, str(ROOT / "train.py"))):
    return subprocess.run([*entry, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def _tiny(cache: Path, run_dir: Path) -> list[str]:
    return [*tiny_overrides(cache), f"hydra.run.dir={run_dir}", "eval.baseline=true", "eval.before=true"]


@pytest.mark.slow
def test_train_end_to_end_then_resume(data_cache: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = _train(*_tiny(data_cache, run_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("backbone pooled features (no training)", "before training", "after training (best checkpoint)"):
        assert row in done.stdout  # the tiny model has a head: the model as training starts is one of its own
    assert "best checkpoint:" in done.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test"]["after training (best checkpoint)"]) >= {"recall@1", "map@r"}
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "model:" in (run_dir / "config.yaml").read_text()  # the resolved config beside the checkpoints

    last = run_dir / "checkpoints" / "last.ckpt"
    again = _train(*_tiny(data_cache, tmp_path / "resumed"), f"ckpt_path={last}", "trainer.max_epochs=2",
                   cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["epoch"] == 1  # continued from epoch 0, trained one more epoch


@pytest.mark.slow
@pytest.mark.parametrize("root", [None, "/nonexistent/CUB_200_2011"])
def test_triplet_resnet_without_data_stops_with_one_message(root: str | None, tmp_path: Path) -> None:
    args = ["experiment=triplet_resnet", f"hydra.run.dir={tmp_path}"] + ([f"data.root={root}"] if root else [])
    done = _train(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "CUB-200-2011" in done.stderr and "data.root" in done.stderr
    if root:
        assert root in done.stderr


@pytest.mark.slow
def test_lookalike_train_command(tmp_path: Path) -> None:
    done = _train("train", "experiment=triplet_resnet", f"hydra.run.dir={tmp_path}", cwd=tmp_path,
                  entry=(sys.executable, "-m", "lookalike.cli"))
    assert done.returncode == 2 and "CUB-200-2011" in done.stderr
