"""Harvest: verified search labels unlabeled photos (tiny generated pictures with print). A photo is kept once, as
a harvested mark of the product it verified, with its box; one that verifies nothing, or two products, is not; a
harvest resumes from its journal; the page with --learn keeps exactly its unambiguous verified searches, within the
folder's bound; the marks validate and train."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lookalike.catalogue.backends import build_catalogue
from lookalike.catalogue.base import SearchHit
from lookalike.catalogue.harvest import AMBIGUOUS, KEPT, UNVERIFIED, judge
from lookalike.cli import main as cli
from lookalike.data.feedback import Mark, held_out_photos, read_feedback, with_feedback
from lookalike.data.table import ImageTable
from tests.helpers import INLINE, TINY_MODEL
from tests.test_verification import PASTED, PHOTO, photo_of, texture

QUAD = [[0.1, 0.2], [0.6, 0.2], [0.6, 0.9], [0.1, 0.9]]


def hit(id: int, label: str, inliers: int, verified: bool = False, lookalike_of: int | None = None) -> SearchHit:
    return SearchHit(id, f"{label}.png", label, 0.5, verified=verified, inliers=inliers,
                     quad=QUAD if verified else None, lookalike_of=lookalike_of)


def test_judge_keeps_only_an_unambiguous_first_result() -> None:
    kept = judge([hit(1, "a", 60, True), hit(2, "a", 40, True), hit(3, "b", 10)], margin=15)
    assert kept.verdict == KEPT and kept.hit.id == 1 and kept.runner_up == 10  # a second picture of a: fine
    assert kept.evidence.inliers == 60 and kept.evidence.box == pytest.approx((0.1, 0.2, 0.6, 0.9))
    assert judge([hit(1, "a", 10), hit(2, "b", 5)], 15).verdict == UNVERIFIED
    assert judge([], 15).verdict == UNVERIFIED
    assert judge([hit(1, "a", 60, True), hit(2, "b", 30, True)], 15).verdict == AMBIGUOUS  # two products
    assert judge([hit(1, "a", 60, True), hit(2, "b", 58, lookalike_of=1)], 15).verdict == AMBIGUOUS  # a sibling
    assert judge([hit(1, "a", 30, True), hit(2, "b", 16)], 15).verdict == AMBIGUOUS  # too close
    assert judge([hit(1, "a", 30, True), hit(2, "b", 15)], 15).verdict == KEPT


def two_products() -> np.ndarray:
    """A photo showing two catalogue pictures side by side."""
    left, right = (cv2.resize(texture(s), (150, 150)) for s in (2, 4))
    photo = cv2.resize(texture(98), (340, 200))
    photo[25:175, 10:160], photo[25:175, 180:330] = left, right
    return photo


@pytest.fixture(scope="module")
def shop(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A catalogue of six textured pictures (a folder = a label each) and a folder of unlabeled photos: two of
    products 1 and 3, the first again under another name, one of nothing, one of two products, one unreadable."""
    tmp_path = tmp_path_factory.mktemp("shop")
    for seed in range(6):
        (tmp_path / "pictures" / f"p{seed}").mkdir(parents=True)
        Image.fromarray(texture(seed)).save(tmp_path / "pictures" / f"p{seed}" / "a.png")
    index = tmp_path / "c.lkidx"
    build_catalogue(index, trained["embedder"], tmp_path / "pictures", options=INLINE).close()
    photos = tmp_path / "photos"
    (photos / "p9").mkdir(parents=True)  # a folder name is not read as a label
    Image.fromarray(photo_of(texture(1))).save(photos / "one.png")
    Image.fromarray(photo_of(texture(1))).save(photos / "p9" / "one_again.png")
    Image.fromarray(photo_of(texture(3), background_seed=97)).save(photos / "three.jpg", quality=95)
    Image.fromarray(np.full((240, 320, 3), 120, np.uint8)).save(photos / "plain.png")
    Image.fromarray(two_products()).save(photos / "two.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a photo")
    return {"index": index, "photos": photos, "pictures": tmp_path / "pictures"}


def test_harvest_keeps_each_unambiguous_photo_once_with_its_box_and_resumes(shop: dict, tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "marks"
    cli(["harvest", "--index", str(shop["index"]), "--photos", str(shop["photos"]), "--into", str(folder)])
    out = capsys.readouterr().out
    assert "kept 2 of 6 photo(s)" in out and "1 did not verify, 1 were ambiguous, 1 unreadable" in out
    assert "1 repeated an earlier photo" in out
    marks = read_feedback(folder / "feedback.csv")
    assert sorted(m.label for m in marks) == ["p1", "p3"]
    assert {m.source for m in marks} == {"harvested"} and {m.verdict for m in marks} == {"same"}
    one = next(m for m in marks if m.label == "p1")
    expected = np.r_[PASTED.min(0), PASTED.max(0) - PASTED.min(0)]  # the outline where the picture was pasted
    assert np.abs(np.array(one.box) - expected).max() < 0.03 * max(PHOTO)
    assert Path(one.photo).is_file() and len(list((folder / "photos").glob("*.jpg"))) == 2
    journal = (folder / "harvest.jsonl").read_text().splitlines()
    # again, from its journal: nothing is searched or kept twice
    cli(["harvest", "--index", str(shop["index"]), "--photos", str(shop["photos"]), "--into", str(folder)])
    assert "kept 2 of 6 photo(s)" in capsys.readouterr().out
    assert len(read_feedback(folder / "feedback.csv")) == 2
    assert (folder / "harvest.jsonl").read_text().splitlines() == journal
    # labels in a table only measure the precision
    table = tmp_path / "photos.csv"
    table.write_text(f"path,label\n{shop['photos'] / 'one.png'},p1\n{shop['photos'] / 'three.jpg'},p5\n")
    cli(["harvest", "--index", str(shop["index"]), "--photos", str(table), "--into", str(tmp_path / "other")])
    assert "precision against the given labels 0.500 (1/2)" in capsys.readouterr().out


def test_the_page_learns_exactly_its_unambiguous_verified_searches(shop: dict, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from lookalike.serve.app import create_app
    from lookalike.serve.page import PageOptions

    folder = tmp_path / "feedback"
    app = create_app(shop["index"], PageOptions(feedback=folder, learn=True))
    client = TestClient(app)

    def search(name: str, **form) -> dict:
        path = next(shop["photos"].rglob(name))
        answer = client.post("/api/search", files={"image": (path.name, path.read_bytes())}, data={"k": 2, **form})
        assert answer.status_code == 200, answer.text
        return answer.json()

    assert search("one.png")["results"][0]["verified"]
    assert len(search("one_again.png")["results"]) == 2  # the same photo again: kept once; the answer keeps its k
    search("plain.png")
    search("two.png")
    search("three.jpg", filter='label != "p0"')  # a filtered search could hide a look-alike: not learned from
    marks = read_feedback(folder / "feedback.csv")
    assert [(m.label, m.source) for m in marks] == [("p1", "harvested")] and marks[0].box is not None
    app.state.page.marks.max_photos = 1  # the folder is full: the search still answers, nothing more is kept
    assert search("three.jpg")["results"][0]["label"] == "p3"
    assert len(read_feedback(folder / "feedback.csv")) == 1
    with pytest.raises(Exception, match="--learn"):
        create_app(shop["index"], PageOptions(feedback=None, learn=True))


def test_held_out_photos_validate_and_the_rest_train(tmp_path: Path) -> None:
    """A share of the marked products' photos query the catalogue (validation); their marks leave training; the
    others' photos train as queries beside their pictures, harvested boxes only where asked."""
    pictures = [str(tmp_path / f"{n}.png") for n in "abcd"]
    for i, path in enumerate(pictures):
        Image.fromarray(texture(i, 32)).save(path)
    photos = {}
    for n in "abcd":
        for j in range(2):
            photos[f"{n}{j}"] = str(tmp_path / f"photo_{n}{j}.png")
            Image.fromarray(texture(10 + ord(n) + j, 32)).save(photos[f"{n}{j}"])
    marks = [Mark(photos[f"{n}{j}"], "same", n, str(tmp_path / f"{n}.png"), "harvested", (1.0, 2.0, 20.0, 20.0))
             for n in "abcd" for j in range(2)]
    train = ImageTable(pictures, np.arange(4), np.zeros(4, bool), np.ones(4, bool), class_names=list("abcd"))
    val = held_out_photos(train, marks, 0.25, seed=0)
    held = set(val.subset(val.is_query).label_names())
    assert len(held) == 1 and val.is_query.sum() == 2 and (~val.is_query).sum() == 4
    added = with_feedback(train, marks, held_out=held)
    table = added.table
    assert len(table) == 4 + 6 and table.boxes is None  # the embedder trains on whole photos
    assert table.is_query[4:].all() and not table.is_gallery[4:].any() and not (set(table.label_names()[4:]) & held)
    boxed = with_feedback(train, marks, held_out=held, boxes=True).table
    assert np.isnan(boxed.boxes[:4]).all() and (boxed.boxes[4:] == [1, 2, 20, 20]).all()
    with pytest.raises(Exception, match="at least 2 products"):
        held_out_photos(train, marks[:2], 0.25)


@pytest.mark.slow
def test_train_py_on_a_harvested_folder(shop: dict, tmp_path: Path) -> None:
    """lookalike harvest, then experiment=shop_photos on its marks, end to end: the held-out photos choose the
    checkpoint and the run exports an embedder."""
    import subprocess
    import sys

    folder = tmp_path / "marks"
    extra = tmp_path / "more"
    extra.mkdir()
    for seed in (0, 2, 4, 5):  # more photos, so that a share of the products can be held out
        Image.fromarray(photo_of(texture(seed), background_seed=90 + seed)).save(extra / f"{seed}.png")
    for photos in (shop["photos"], extra):
        cli(["harvest", "--index", str(shop["index"]), "--photos", str(photos), "--into", str(folder)])
    manifest = tmp_path / "catalog.csv"
    rows = [f"{p},{p.parent.name},train,gallery" for p in sorted(shop["pictures"].rglob("*.png"))]
    rows += [f"{p},{p.parent.name},test,gallery" for p in sorted(shop["pictures"].rglob("*.png"))]
    rows += [f"{p},p{p.stem},test,query" for p in sorted(extra.glob("*.png"))]
    manifest.write_text("path,label,split,role\n" + "\n".join(rows) + "\n")
    run = tmp_path / "run"
    subprocess.run([sys.executable, "train.py", "experiment=shop_photos", f"data.root={manifest}",
                    f"data.feedback={folder / 'feedback.csv'}", *TINY_MODEL, "data.batch_size=4",
                    "data.num_workers=0", "trainer.max_epochs=1", "logger=none", "eval.baseline=false",
                    "eval.before=false", f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}"],
                   check=True, cwd=Path(__file__).resolve().parent.parent)
    metrics = json.loads((run / "metrics.json").read_text())
    assert (run / "embedder.pt").is_file() and metrics["best_val"] is not None
