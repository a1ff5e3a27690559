"""`lookalike evaluate`: metrics from a checkpoint, files it writes, clear errors, DDP gathering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from lookalike.errors import LookalikeError
from lookalike.evaluate import evaluate
from lookalike.models.lit_embedder import load_checkpoint
from lookalike.train import run
from tests.helpers import TINY_MODEL, compose_config, tiny_overrides


def _eval_cfg(ckpt: str, out: Path, *extra: str):
    return compose_config([f"ckpt={ckpt}", f"paths.output_dir={out}", "num_workers=0", *extra], name="eval")


def test_evaluate_builds_the_data_as_training_did_for_a_catalogue_without_labels(image_folder: Path,
                                                                                 tmp_path: Path) -> None:
    """A data=unlabeled checkpoint (each image its own class, data.instances=true) is evaluated on the same
    held-out photo -> catalogue split, with the same numbers as its training run's test."""
    trained = run(compose_config([
        "experiment=selfsup_catalog", *TINY_MODEL, f"data.root={image_folder}", "data.num_workers=0",
        "data.batch_size=8", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'run'}",
        "logger=none", "eval.baseline=false", "eval.before=false", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=1", "trainer.accelerator=cpu"]))
    report = evaluate(_eval_cfg(trained["best_checkpoint"], tmp_path / "eval", "grid.queries=0",
                                f"paths.cache_dir={tmp_path / 'cache'}"))
    after = trained["test"]["after training (best checkpoint)"]
    assert report["set"] == trained["test_set"] and "queries" in report["set"]
    for key in ("recall@1", "recall@2", "map@r"):
        assert report["metrics"][key] == pytest.approx(after[key], abs=1e-6), key


def test_evaluate_reproduces_the_training_test_metrics_and_writes_files(trained: dict, tmp_path: Path) -> None:
    report = evaluate(_eval_cfg(trained["best_checkpoint"], tmp_path, "save_embeddings=true", "nmi=true",
                                "grid.queries=4", "grid.k=3"))
    after = trained["test"]["after training (best checkpoint)"]
    for key in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision"):
        assert report["metrics"][key] == pytest.approx(after[key], abs=1e-6), key
    assert 0 <= report["metrics"]["nmi"] <= 1 and "recall@32" in report["metrics"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"]["map@r"] == report["metrics"]["map@r"]
    import numpy as np

    emb = np.load(tmp_path / "embeddings.npy")
    assert emb.shape == (report["metrics"]["queries"], 16)
    assert len((tmp_path / "items.csv").read_text().splitlines()) == len(emb) + 1
    grid = Image.open(tmp_path / "retrieval_grid.png")
    assert grid.width > 3 * 112 and grid.height >= 4 * 112


def test_evaluate_with_an_approximate_index_and_the_validation_split(trained: dict, tmp_path: Path) -> None:
    report = evaluate(_eval_cfg(trained["best_checkpoint"], tmp_path, "knn=hnsw", "split=val", "grid.queries=0"))
    assert report["split"] == "val" and report["metrics"]["queries"] > 0
    assert not (tmp_path / "retrieval_grid.png").exists()


def test_bad_checkpoints_are_explained(tmp_path: Path) -> None:
    with pytest.raises(LookalikeError, match="No checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(LookalikeError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.ckpt")
    with pytest.raises(LookalikeError, match="not a lookalike training checkpoint"):
        load_checkpoint(tmp_path / "foreign.ckpt")


@pytest.mark.slow
def test_lookalike_evaluate_command(trained: dict, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "lookalike.cli", "evaluate", f"ckpt={trained['best_checkpoint']}",
                           f"hydra.run.dir={tmp_path}", "num_workers=0", "--save-embeddings"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "map@r" in done.stdout and "retrieval_grid.png" in done.stdout
    assert (tmp_path / "embeddings.npy").is_file() and (tmp_path / "retrieval_grid.png").is_file()
    bad = subprocess.run([sys.executable, "-m", "lookalike.cli", "evaluate", f"ckpt={tmp_path / 'none.ckpt'}",
                          f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "No checkpoint" in bad.stderr and "Traceback" not in bad.stderr


# Started in every Python process of the DDP test (via PYTHONPATH): the second process (LOCAL_RANK=1,
# set by Lightning's launcher) records every file it opens for writing, renames, creates or removes.
RECORD_WRITES = """
import os, sys
if os.environ.get("LOCAL_RANK", "0") != "0":
    _log = open(os.environ["WRITES_LOG"], "a", buffering=1)
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _record(event, args):
        if event == "open" and args[0] is not None and (
                (isinstance(args[1], str) and any(c in args[1] for c in "wax+")) or (args[2] or 0) & _WRITE):
            _log.write(f"{args[0]}\\n")
        elif event in ("os.rename", "os.replace", "os.symlink"):
            _log.write(f"{args[1]}\\n")
        elif event in ("os.remove", "os.rmdir") or (event == "os.mkdir" and not os.path.exists(args[0])):
            _log.write(f"{args[0]}\\n")

    sys.addaudithook(_record)
"""


@pytest.mark.slow
def test_ddp_validation_gathers_all_ranks(data_cache: Path, tmp_path: Path) -> None:
    """2 CPU processes (gloo): the gathered test metrics equal a single-process evaluation of the checkpoint,
    and only rank 0 writes into the run folder (rank 1 writes just its own Hydra log).

    The test split (5 classes x 4 images = 20 rows, eval batch 6) does not divide evenly, so the
    distributed sampler pads with repeated rows, which the gathering must drop."""
    run_dir = tmp_path / "ddp"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(RECORD_WRITES)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]),
           "WRITES_LOG": str(tmp_path / "rank1_writes.txt")}
    args = tiny_overrides(data_cache)
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "train.py"), *args,
                           f"hydra.run.dir={run_dir}", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
                           "data.eval_batch_size=6", "data.source.num_test_products=5", "data.source.photos_per_product=3",
                           "trainer.sync_batchnorm=false", "logger=csv"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    written = {Path(os.path.abspath(p)) for p in (tmp_path / "rank1_writes.txt").read_text().split()}
    in_run = {p.relative_to(run_dir).as_posix() for p in written if p.is_relative_to(run_dir)}
    assert in_run == {"train_ddp_process_1.log"}, in_run
    assert {"config.yaml", "metrics.json", "embedder.pt", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
            "csv/metrics.csv"} <= {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")}
    report = json.loads((run_dir / "metrics.json").read_text())
    gathered = report["test"]["after training (best checkpoint)"]
    single = evaluate(_eval_cfg(report["best_checkpoint"], tmp_path / "single", "grid.queries=0", "ks=[1,2,4,8]"))
    assert gathered["queries"] == single["metrics"]["queries"] == 20
    for key in ("recall@1", "recall@4", "map@r"):
        assert gathered[key] == pytest.approx(single["metrics"][key], abs=1e-6), key


def test_training_writes_an_embedder_file_that_rebuilds_the_model(trained: dict, tmp_path: Path) -> None:
    from lookalike.embedder.file import load_embedder, read_embedder_file

    path = Path(trained["embedder"])
    payload = read_embedder_file(path)
    assert payload["preprocessing"]["input_size"] == [3, 32, 32]
    assert payload["provenance"]["training_config"]["model"]["backbone"]["name"] == "test_efficientnet"
    assert "git_commit" in payload["provenance"] and payload["provenance"]["metrics"]["best_checkpoint"]
    embedder = load_embedder(path)
    module = load_checkpoint(trained["best_checkpoint"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(embedder(x), module.embedder(x))
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(LookalikeError, match="not a readable embedder file"):
        load_embedder(tmp_path / "bad.pt")
    torch.save({"format": "other"}, tmp_path / "foreign.pt")
    with pytest.raises(LookalikeError, match="not a lookalike embedder file"):
        load_embedder(tmp_path / "foreign.pt")
