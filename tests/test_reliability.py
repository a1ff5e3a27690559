"""Reliability: unreadable and odd images, degenerate classes, config mistakes, non-finite losses and
writers killed mid-write each get clear handling."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lookalike.data.datamodule import trainable, without_unreadable
from lookalike.data.images import image_problem, load_rgb
from lookalike.data.table import ImageTable, Splits
from lookalike.errors import LookalikeError
from lookalike.evaluate import evaluate
from lookalike.train import run
from tests.helpers import INLINE, compose_config, tiny_overrides, write_image


def bad_files(folder: Path) -> list[Path]:
    """Zero-byte, truncated, non-image and random-bytes files with image names."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "_source.jpg"
    write_image(good, (120, 80, 40), size=64)
    files = {"empty.jpg": b"", "truncated.jpg": good.read_bytes()[:300], "notes.jpg": b"just some text\n",
             "noise.png": np.random.default_rng(0).integers(0, 255, 500, dtype=np.uint8).tobytes()}
    good.unlink()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / n for n in files]


def odd_images(folder: Path) -> dict[str, Path]:
    """Valid images in the modes and shapes scraped catalogues contain."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    out = {}

    def save(name: str, image: Image.Image, **kw) -> None:
        out[name] = folder / name
        image.save(out[name], **kw)

    save("gray.png", rgb.convert("L"))
    save("rgba.png", rgb.convert("RGBA"))
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    save("palette.png", palette, transparency=0)
    save("cmyk.jpg", rgb.convert("CMYK"))
    save("deep.png", Image.fromarray((rng.integers(0, 65535, (30, 40))).astype(np.uint16)))
    save("tiny.png", Image.new("RGB", (1, 1), (255, 0, 0)))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    save("rotated.jpg", rgb, exif=exif)
    return out


def test_unreadable_images_are_skipped_with_a_count_or_listed(tmp_path: Path, caplog) -> None:
    good = []
    for c in range(3):
        for i in range(3):
            good.append(tmp_path / f"c{c}" / f"{i}.jpg")
            write_image(good[-1], (60 * c, 90, 30), seed=i)
    bad = bad_files(tmp_path / "c0")
    paths = [str(p) for p in good + bad]
    table = ImageTable(paths, [int(Path(p).parent.name[1]) for p in paths])
    splits = Splits(train=table.with_classes([0, 1]), test=table.with_classes([2]))
    with caplog.at_level(logging.WARNING):
        kept = without_unreadable(splits, "skip")
    assert len(kept.train) == 6 and len(kept.test) == 3
    assert sum("skipping unreadable image" in r.message for r in caplog.records) == 4
    assert any("skipped 4 unreadable image(s) of 13" in r.message for r in caplog.records)
    with pytest.raises(LookalikeError, match="4 image\\(s\\) cannot be read") as err:
        without_unreadable(splits, "error")
    assert all(str(p) in str(err.value) for p in bad) and "data.on_bad_image=skip" in str(err.value)
    with pytest.raises(LookalikeError, match="on_bad_image"):
        without_unreadable(splits, "ignore")


def test_odd_but_valid_images_decode_to_rgb(tmp_path: Path) -> None:
    images = odd_images(tmp_path)
    for name, path in images.items():
        assert image_problem(str(path)) == "", name
        array = load_rgb(str(path))
        assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3, name
    assert load_rgb(str(images["rotated.jpg"])).shape[:2] == (40, 30)  # EXIF rotation applied
    assert load_rgb(str(images["tiny.png"])).shape == (1, 1, 3)
    assert load_rgb(str(images["rgba.png"])).shape == (30, 40, 3)
    deep = load_rgb(str(images["deep.png"]))
    assert deep.max() > 128  # 16-bit values rescaled, not clipped to white or black


def test_huge_images_are_refused_before_decoding_unless_the_budget_allows_them(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from lookalike.data import images

    Image.new("L", (10_000, 10_000), 128).save(tmp_path / "huge.png")  # 100 Mpx: over lookalike's 40 Mpx budget
    Image.new("1", (15_000, 15_000)).save(tmp_path / "bomb.png")  # 225 Mpx: over twice PIL's limit too
    assert "more than this decoder's 40,000,000" in image_problem(str(tmp_path / "huge.png"))
    with pytest.raises(LookalikeError, match="Cannot read image .*huge.png.*10000 x 10000 pixels"):
        load_rgb(str(tmp_path / "huge.png"))
    monkeypatch.setattr(images, "MAX_PIXELS", 300_000_000)  # LOOKALIKE_MAX_PIXELS=300000000
    with pytest.warns(Image.DecompressionBombWarning):
        assert image_problem(str(tmp_path / "huge.png")) == ""
    assert "DecompressionBombError" in image_problem(str(tmp_path / "bomb.png"))
    with pytest.raises(LookalikeError, match="Cannot read image .*bomb.png"):
        load_rgb(str(tmp_path / "bomb.png"))


def test_training_table_drops_duplicates_and_single_image_classes(caplog) -> None:
    table = ImageTable(["a", "b", "b", "c", "d", "e"], [0, 0, 0, 1, 2, 2], class_names=["x", "lonely", "z"])
    with caplog.at_level(logging.WARNING):
        kept = trainable(table)
    assert kept.paths == ["a", "b", "d", "e"]
    messages = " ".join(r.message for r in caplog.records)
    assert "1 duplicate path(s)" in messages and "1 training class(es) with a single image" in messages
    assert "lonely" in messages


@pytest.mark.parametrize("overrides, message", [
    (["loss._target_=pytorch_metric_learning.losses.NoSuchLoss"], "Cannot build the loss"),
    (["miner._target_=pytorch_metric_learning.miners.NoSuchMiner"], "Cannot build the miner"),
    (["model.backbone.name=no_such_net"], "not a timm model"),
    (["model.head.embedding_size=0"], "embedding_size must be a positive number"),
    (["data.batch_size=15", "sampler.m=4"], "batch size must be a multiple of m"),
    (["data=image_folder", "data.root=/no/such/folder"], "Image folder not found at '/no/such/folder'"),
    (["data.on_bad_image=maybe"], "data.on_bad_image='maybe'"),
])
def test_config_mistakes_give_one_clear_message(data_cache: Path, tmp_path: Path, overrides: list[str],
                                                message: str) -> None:
    base = tiny_overrides(data_cache, tmp_path / "run") + ["logger=none"]
    if "data=image_folder" in overrides:
        base = [o for o in base if not o.startswith(("data.root", "data.source"))]
    with pytest.raises(LookalikeError) as err:
        run(compose_config(base + overrides))
    assert message in str(err.value) and "Traceback" not in str(err.value)


def _nan_run(data_cache: Path, out: Path, nan_steps: int, extra: list[str] = ()) -> dict:
    """A tiny run (2 steps per epoch) whose loss is NaN for ``nan_steps`` steps."""
    return run(compose_config(tiny_overrides(data_cache, out) + [
        "logger=none", "trainer.max_epochs=2", "loss._target_=tests.faulty.NaNForSteps", f"+loss.nan_steps={nan_steps}",
        *extra]))


def _finite(checkpoint: Path) -> bool:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_non_finite_steps_are_skipped_and_counted(data_cache: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused AdamW skips the two NaN steps on the device; the counts are read at the epoch's end."""
    monkeypatch.setenv("LOOKALIKE_TRUSTED_TARGETS", "tests.faulty.NaNForSteps")  # the run's loss: a class of ours
    with pytest.warns(UserWarning, match="non-finite loss or gradients") as caught:
        report = _nan_run(data_cache, tmp_path / "run", nan_steps=2)
    skipped = [str(w.message) for w in caught if "non-finite" in str(w.message)]
    assert skipped == ["step 2: non-finite loss or gradients, 2 step(s) skipped since the last check "
                       "(2 in a row now, 2 in all)"]
    assert _finite(Path(report["best_checkpoint"]))
    tested = report["test"]["after training (best checkpoint)"]  # what the skipped steps left: a model that embeds
    evaluation = evaluate(compose_config([f"ckpt={report['best_checkpoint']}", f"paths.output_dir={tmp_path / 'e'}",
                                          "num_workers=0", "grid.queries=0"], name="eval"))
    assert evaluation["metrics"]["recall@1"] == pytest.approx(tested["recall@1"], abs=1e-6)
    assert evaluation["metrics"]["map@r"] == pytest.approx(tested["map@r"], abs=1e-6)


def test_too_many_non_finite_steps_stop_the_run_keeping_the_last_good_checkpoint(data_cache: Path,
                                                                                 tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(LookalikeError, match="not finite for 2 steps in a row"):  # epoch 1 is fine, epoch 2 not
        _nan_run(data_cache, out, nan_steps=10**6, extra=["+loss.start=3", "optim.max_nonfinite_steps=2"])
    last = out / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 0 and _finite(last)


WRITER = """
import sys, time
from lookalike.files import atomic_write

def slow(tmp):
    with open(tmp, "wb") as f:
        for _ in range(1000):
            f.write(b"new" * 10000)
            f.flush()
            time.sleep(0.01)

atomic_write(sys.argv[1], slow)
"""


def test_a_writer_killed_mid_write_leaves_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "catalog.lkidx"
    target.write_bytes(b"previous, valid")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
    deadline = time.time() + 60
    while not any(p.name.startswith(".catalog.lkidx.") and p.stat().st_size > 0 for p in tmp_path.iterdir()):
        assert time.time() < deadline and writer.poll() is None, "the writer did not start writing"
        time.sleep(0.05)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert target.read_bytes() == b"previous, valid"


@pytest.mark.slow
def test_a_scraped_folder_goes_through_train_evaluate_index_and_search(tmp_path: Path, caplog) -> None:
    """Good images, odd-but-valid ones and broken files in one folder: nothing crashes, broken files are
    skipped and counted everywhere, odd ones are used."""
    from lookalike.catalogue.file import FileCatalogue
    from lookalike.embedder.file import load_embedder

    root = tmp_path / "scraped"
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]
    for c, color in enumerate(colors):
        for i in range(4):
            write_image(root / f"class_{c}" / f"img_{i}.jpg", color, seed=10 * c + i)
    broken = bad_files(root / "class_0") + bad_files(root / "class_4")
    odd = list(odd_images(root / "class_1").values())
    write_image(root / "class_00_single" / "only.jpg", (90, 90, 90))  # a class of one image, among training classes
    out = tmp_path / "run"
    overrides = [o for o in tiny_overrides(tmp_path / "cache", out) if not o.startswith(("data.root", "data.source"))]
    with caplog.at_level(logging.WARNING):
        report = run(compose_config(overrides + [
            "logger=none", "data=image_folder", f"data.root={root}", "data.source.train_classes=0.5",
            "data.val_classes=1", "data.num_workers=0", "data.batch_size=4", "sampler.m=2"]))
    assert any(f"skipped {len(broken)} unreadable image(s)" in r.message for r in caplog.records)
    evaluation = evaluate(compose_config([f"ckpt={report['best_checkpoint']}", f"paths.output_dir={tmp_path / 'eval'}",
                                          "num_workers=0", "grid.queries=2"], name="eval"))
    tested = report["test"]["after training (best checkpoint)"]  # the same readable test images, the same numbers
    assert evaluation["metrics"]["recall@1"] == pytest.approx(tested["recall@1"], abs=1e-6)
    assert evaluation["metrics"]["queries"] == tested["queries"] > 0

    with pytest.warns(UserWarning, match="skipped: Cannot read image"):
        index = FileCatalogue.build(report["embedder"], root, INLINE)
    assert index.meta["count"] == 6 * 4 + len(odd) + 1  # every readable image
    embedder = load_embedder(report["embedder"])
    hits = index.search(embedder, [str(p) for p in odd], k=3)
    assert all(len(h) == 3 for h in hits)
    with pytest.raises(LookalikeError, match="Cannot read image"):
        index.search(embedder, [str(broken[0])])


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_killed_mid_epoch_resumes_with_ckpt_path_last_like_an_uninterrupted_run(
        data_cache: Path, tmp_path: Path, workers: int) -> None:
    """kill -9 during the second epoch, then ``ckpt_path=last``: the run continues in its own folder and
    ends with the weights and test metrics of a run that was never interrupted (same seed)."""
    root = Path(__file__).resolve().parents[1]
    # the killed run's checkpoint names the test's own slow-down callback: trusted as a user trusts their classes
    env = {**os.environ, "PYTHONPATH": str(root), "LOOKALIKE_TRUSTED_TARGETS": "tests.faulty.SlowSteps"}
    args = tiny_overrides(data_cache) + ["trainer.max_epochs=3", f"data.num_workers={workers}", "logger=none"]
    train = [sys.executable, str(root / "train.py"), *args]

    def finish(run_dir: Path, *extra: str) -> None:
        done = subprocess.run([*train, f"hydra.run.dir={run_dir}", *extra], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    finish(tmp_path / "a" / "run")
    uninterrupted = json.loads((tmp_path / "a" / "run" / "metrics.json").read_text())

    killed_dir = tmp_path / "b" / "run"
    last = killed_dir / "checkpoints" / "last.ckpt"
    killed = subprocess.Popen([*train, f"hydra.run.dir={killed_dir}", "+callbacks.slow._target_=tests.faulty.SlowSteps",
                               "+callbacks.slow.seconds=1.0"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not last.exists():  # written after the first epoch; the second takes 2 x 1 s more
        assert time.time() < deadline and killed.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 0

    finish(tmp_path / "b" / "new", "ckpt_path=last")
    assert not (tmp_path / "b" / "new" / "metrics.json").exists()  # it continued in the killed run's folder
    report = json.loads((killed_dir / "metrics.json").read_text())
    row = "after training (best checkpoint)"
    for key in ("recall@1", "recall@4", "map@r"):
        assert report["test"][row][key] == pytest.approx(uninterrupted["test"][row][key], abs=1e-6), key
    weights = [torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
               for d in (tmp_path / "a" / "run", killed_dir)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=0, atol=1e-6, msg=name)
