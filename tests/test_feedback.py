"""Feedback on search results: the marks file the page writes, and training with it (positives, hard pairs)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lookalike.config import build
from lookalike.data.datamodule import RetrievalDataModule
from lookalike.data.feedback import FeedbackLog, Mark, read_feedback, with_feedback
from lookalike.data.image_folder import image_folder as read_split
from lookalike.data.samplers import HardPairBatches
from lookalike.errors import LookalikeError
from tests.helpers import compose_config, write_image

PRE = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "crop_pct": 1.0}


def _photo(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (40, 30, 3), dtype=np.uint8)


def test_marks_are_appended_with_each_photo_kept_once(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path / "c.feedback", max_photos=2)
    item = {"id": 7, "label": "sofa", "path": "/catalogue/sofa.jpg"}
    first = log.record([_photo(0), _photo(1)], item, "same")
    again = log.record([_photo(0)], {**item, "id": 8, "label": "chair"}, "different")
    assert [r["photo"] for r in first][0] == again[0]["photo"]  # the same photo is stored once
    assert len(list((tmp_path / "c.feedback" / "photos").glob("*.jpg"))) == 2
    marks = read_feedback(log.file)
    assert [(m.verdict, m.label) for m in marks] == [("same", "sofa"), ("same", "sofa"), ("different", "chair")]
    assert Path(marks[0].photo).is_file() and marks[0].path == "/catalogue/sofa.jpg"
    with pytest.raises(LookalikeError, match="holds 2 photos, its limit"):
        log.record([_photo(2)], item, "same")
    with pytest.raises(LookalikeError, match="verdict"):
        log.record([_photo(0)], item, "maybe")
    full = FeedbackLog(tmp_path / "c.feedback", max_csv_bytes=log.file.stat().st_size)
    with pytest.raises(LookalikeError, match="has reached"):
        full.record([_photo(0)], item, "same")
    with open(log.file, "a") as f:
        f.write("2026-01-01T00:00:00,photos/x.jpg")  # a writer killed mid-line
    assert len(read_feedback(log.file)) == 3


def test_a_mark_is_kept_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk in the middle of a mark: nothing of it stays (the file is cut back), the next mark is whole; a
    row a killed writer left unfinished is cut off before the next mark; formula-like cells are escaped."""
    import errno
    import os

    from lookalike.data import feedback

    log = FeedbackLog(tmp_path / "c.feedback")
    item = {"id": 7, "label": "sofa", "path": "/catalogue/sofa.jpg"}
    log.record([_photo(0)], item, "same")
    before = log.file.read_bytes()
    real_pwrite = os.pwrite

    def half_then_full(fd: int, data: bytes, offset: int) -> int:
        if len(data) > 20:
            return real_pwrite(fd, data[:len(data) // 2], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    for trial in range(5):
        monkeypatch.setattr(feedback.os, "pwrite", half_then_full)
        with pytest.raises(LookalikeError, match="nothing of this mark was kept"):
            log.record([_photo(1), _photo(2)], {**item, "label": f"bogus{trial}"}, "different")
        monkeypatch.setattr(feedback.os, "pwrite", real_pwrite)
        assert log.file.read_bytes() == before
    with open(log.file, "a") as f:
        f.write("2026-01-01T00:00:00,photos/x.jpg,sa")  # a writer killed mid-row
    formula = {"id": 9, "label": "=cmd|' /C calc'!A0", "path": "@/catalogue/x.jpg"}
    log.record([_photo(3)], formula, "different")
    text = log.file.read_bytes().decode()
    assert text.startswith(before.decode()) and "x.jpg,sa" not in text and "'=cmd|" in text and ",'@/catalogue" in text
    marks = read_feedback(log.file)
    assert [(m.verdict, m.label, m.path) for m in marks] == [("same", "sofa", "/catalogue/sofa.jpg"),
                                                             ("different", formula["label"], formula["path"])]


@pytest.mark.parametrize("text, message", [(None, "no feedback file"), ("photo,label\na.jpg,x\n", "lacks columns"),
                                           ("photo,verdict,label,path\na.jpg,maybe,x,b.jpg\n", "unknown verdict")])
def test_bad_feedback_files_get_one_clear_message(tmp_path: Path, text: str | None, message: str) -> None:
    if text is not None:
        (tmp_path / "feedback.csv").write_text(text)
    with pytest.raises(LookalikeError, match=message):
        read_feedback(tmp_path / "feedback.csv")


def test_feedback_adds_positives_new_classes_and_hard_pairs(image_folder: Path, tmp_path: Path) -> None:
    splits = read_split(image_folder, 4 / 6)
    train = splits.train
    names = train.label_names()
    for i in range(4):
        write_image(tmp_path / f"p{i}.jpg", (90, 90, 90), seed=100 + i)
    new_item = tmp_path / "new_item.jpg"
    write_image(new_item, (10, 10, 10), seed=200)
    p = [str(tmp_path / f"p{i}.jpg") for i in range(4)]
    marks = [Mark(p[0], "same", names[0], train.paths[0]),        # a known product: one more photo of it
             Mark(p[0], "different", names[-1], train.paths[-1]),  # ... not this one: a hard pair
             Mark(p[1], "same", "brand new", str(new_item)),       # a product training never saw: a new class
             Mark(p[2], "different", names[0], train.paths[0]),    # only "not this": the photo is its own class
             Mark(p[3], "same", "held out", str(new_item)),        # a validation class: left out
             Mark(str(tmp_path / "gone.jpg"), "same", names[0], train.paths[0])]  # unreadable: left out
    added = with_feedback(train, marks, held_out={"held out"})
    table = added.table
    rows = dict(zip(table.paths[len(train):], table.label_names()[len(train):]))
    assert rows == {p[0]: names[0], p[1]: "brand new", str(new_item): "brand new",
                    p[2]: f"feedback photo {Path(p[2]).name}"}
    assert added.hard_pairs == sorted([(names[0], names[-1]), (f"feedback photo {Path(p[2]).name}", names[0])])
    assert added.photos == {p[0], p[1], p[2]}
    assert "1 mark(s) on validation classes left out" in added.summary and "unreadable" in added.summary


def test_hard_pair_batches_put_both_classes_in_every_batch() -> None:
    labels = np.repeat(np.arange(6), 4)
    base = list(range(len(labels))) * 2
    sampler = HardPairBatches(base, labels, [(0, 5), (2, 3)], m=2, batch_size=8, per_batch=1)
    rows = list(sampler)
    assert len(rows) == len(base)
    for start in range(0, len(rows), 8):
        classes = Counter(labels[rows[start:start + 4]].tolist())
        assert sorted(classes) in ([0, 5], [2, 3]) and set(classes.values()) == {2}
    with pytest.raises(LookalikeError, match="feedback_pairs"):
        HardPairBatches(base, labels, [(0, 5)], m=4, batch_size=8, per_batch=2)


def test_training_with_feedback_batches_its_pairs_and_drops_its_photos_from_test(image_folder: Path,
                                                                                 tmp_path: Path) -> None:
    splits = read_split(image_folder, 4 / 6)
    test_names = splits.test.label_names()
    test_photo = splits.test.paths[1]  # a test photo of the first test class, marked on the page
    log = FeedbackLog(tmp_path / "fb")
    log.record([np.zeros((8, 8, 3), np.uint8)], {"id": 1, "label": test_names[0], "path": splits.test.paths[0]},
               "same")
    rows = (log.file.read_text().splitlines())
    csv_text = "\n".join(rows + [f"2026-01-01T00:00:00,{test_photo},same,2,{test_names[0]},{splits.test.paths[0]}",
                                 f"2026-01-01T00:00:00,{test_photo},different,3,{splits.train.label_names()[0]},x"])
    log.file.write_text(csv_text + "\n")
    cfg = compose_config(["sampler.m=2"])
    dm = RetrievalDataModule(splits, PRE, sampler=build(cfg.sampler, "sampler"), batch_size=8, val_classes=1,
                             feedback=str(log.file))
    assert test_names[0] in dm.train_table.label_names() and test_photo in dm.train_table.paths
    assert test_photo not in dm.test_table.paths and len(dm.test_table) == len(splits.test) - 1
    assert len(dm.hard_pairs) == 1
    a, b = dm.hard_pairs[0]
    for batch in list(dm.train_dataloader())[:3]:
        assert {a, b} <= set(batch["label"].tolist())


def test_train_py_takes_a_feedback_file(data_cache: Path, tmp_path: Path, caplog) -> None:
    from lookalike.data.synthetic import synthetic_products
    from lookalike.train import run
    from tests.helpers import TINY_DATA, tiny_overrides

    test = synthetic_products(data_cache, **TINY_DATA).test
    names, paths = test.label_names(), test.paths
    picture = {n: p for p, n in zip(paths, names) if p.endswith("catalogue.jpg")}
    photos = [(p, n) for p, n in zip(paths, names) if "photo_0" in p]
    other = sorted(picture)
    lines = ["photo,verdict,label,path"] + [f"{p},same,{n},{picture[n]}" for p, n in photos] + [
        f"{p},different,{other[(other.index(n) + 1) % len(other)]},x" for p, n in photos]
    (tmp_path / "feedback.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level("INFO"):
        report = run(compose_config(tiny_overrides(data_cache, tmp_path / "run") + [
            "logger=none", f"data.feedback={tmp_path / 'feedback.csv'}"]))
    assert f"{len(photos)} 'same' and {len(photos)} 'different' mark(s)" in caplog.text
    assert f"{len(photos)} hard-negative class pair(s)" in caplog.text
    assert Path(report["embedder"]).is_file()
