"""Experiment tracking and sweeps: Optuna and grid sweeps, their summary, wandb offline, reproducibility."""

from __future__ import annotations

import json
import time
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lookalike.runs import summarize
from lookalike.evaluate import evaluate
from lookalike.train import run
from tests.helpers import compose_config, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def _train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def _tiny(cache: Path) -> list[str]:
    return tiny_overrides(cache)


@pytest.mark.slow
def test_optuna_sweep_of_two_trials_and_its_summary(data_cache: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = _train("-m", "hparams_search=triplet_optuna", *_tiny(data_cache), "hydra.sweeper.n_trials=2",
                  "hydra.sweeper.sampler.n_startup_trials=1", f"hydra.sweep.dir={sweep}", "logger=csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    # model.head.embedding_size is fixed by the tiny overrides, so the sweeper leaves it out
    assert set(best["best_params"]) >= {"loss.margin", "miner", "optim.lr.backbone", "sampler.m"}
    rows = summarize(sweep)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert all(r["metric"] == "val/map@r" and 0 <= r["best_val"] <= 1 for r in rows)
    assert max(r["best_val"] for r in rows) == pytest.approx(best["best_value"])
    table = (sweep / "summary.md").read_text()
    assert "best val/map@r" in table and "loss.margin" in table
    assert (sweep / "summary.png").stat().st_size > 1000 and (sweep / "summary.csv").is_file()


@pytest.mark.slow
def test_grid_sweep_records_a_failed_trial_and_goes_on(data_cache: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    # m=3 cannot fill batches of 16: that trial fails with a clear message, the others run
    done = _train("-m", *_tiny(data_cache), "sampler.m=4,3", "loss.margin=0.1,0.4", f"hydra.sweep.dir={sweep}",
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = summarize(sweep)
    assert len(rows) == 4
    failed = [r for r in rows if r["status"].startswith("failed")]
    assert len(failed) == 2 and all(r["overrides"]["sampler.m"] == "3" for r in failed)
    assert "Cannot build PK batches" in failed[0]["status"]
    summary = subprocess.run([sys.executable, "-m", "lookalike.cli", "runs", "summarize", str(sweep)],
                             capture_output=True, text=True, timeout=120)
    assert summary.returncode == 0 and "loss.margin" in summary.stdout


@pytest.mark.slow  # several seconds: in the slow suite (CI runs both)
def test_wandb_logger_runs_offline(data_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    report = run(compose_config(tiny_overrides(data_cache, tmp_path) + ["logger=wandb"]))
    again = evaluate(compose_config([f"ckpt={report['best_checkpoint']}", "split=val", "num_workers=0",
                                     "grid.queries=0", f"paths.output_dir={tmp_path / 'val'}"], name="eval"))
    assert report["best_val"] == pytest.approx(again["metrics"]["map@r"], abs=1e-5)  # the best checkpoint's val/map@r
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    assert (tmp_path / "retrieval_grid.png").is_file() and (tmp_path / "embedder.pt").is_file()
    record = next(runs[0].glob("*.wandb"))  # the offline run's record, synced later
    deadline = time.monotonic() + 60  # wandb's service process may still be appending to it on a busy machine
    while b"quickstart-embedder" not in record.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.5)
    log = record.read_bytes()
    assert b"quickstart-embedder" in log and b"embedder.pt" in log  # the embedder file as a model artifact
    assert list((runs[0] / "files" / "media" / "images").rglob("retrieval_grid*.png"))


def test_tensorboard_logger(data_cache: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    report = run(compose_config(tiny_overrides(data_cache, tmp_path) + ["logger=tensorboard", "trainer.max_epochs=2",
                                                                  "trainer.log_every_n_steps=1"]))
    events = EventAccumulator(str(next((tmp_path / "tensorboard").rglob("events.out.tfevents.*")).parent)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/map@r", "val/recall@1", "test/recall@1", "test/map@r"} <= tags
    assert [e.step for e in events.Scalars("val/map@r")] == sorted(e.step for e in events.Scalars("val/map@r"))
    assert len(events.Scalars("val/map@r")) == 2  # one per epoch
    last = list(report["test"].values())[-1]  # the exported weights are tested last
    assert events.Scalars("test/map@r")[-1].value == pytest.approx(last["map@r"], abs=1e-6)


def test_run_folder_records_provenance(data_cache: Path, tmp_path: Path) -> None:
    run(compose_config(tiny_overrides(data_cache, tmp_path) + ["logger=none", "seed=7"]))
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["seed"] == 7 and {"torch", "timm", "lightning", "pytorch-metric-learning"} <= set(prov["versions"])
    if (ROOT / ".git").exists():
        assert len(prov["git_commit"]) == 40 and isinstance(prov["git_dirty"], bool)
    started = time.time()
    run(compose_config(tiny_overrides(data_cache, tmp_path / "again") + ["logger=none", "seed=7"]))
    duration = json.loads((tmp_path / "again" / "metrics.json").read_text())["duration_s"]
    assert 0 < duration <= time.time() - started + 0.1  # the run's own wall time, not another clock's


@pytest.mark.slow
def test_rerun_from_the_saved_hydra_config(data_cache: Path, tmp_path: Path) -> None:
    first = _train(*_tiny(data_cache), f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    again = _train("--config-path", str(tmp_path / "a" / ".hydra"), "--config-name", "config",
                   f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = ((tmp_path / d / "config.yaml").read_text() for d in "ab")
    assert a.replace(str(tmp_path / "a"), str(tmp_path / "b")) == b  # same config but for the run folder
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text())["test"] for d in "ab"]
    assert metrics[0] == metrics[1]  # same seed, same data, same numbers on the CPU
