"""The box model: composites with known boxes, training with `experiment=box`, the box file, and --crop auto."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike.cli.search import main as search_main
from lookalike.data.images import load_rgb
from lookalike.boxes.composites import Composites, _paste
from lookalike.errors import LookalikeError
from lookalike.boxes.finder import BoxFinder
from lookalike.boxes.net import box_losses
from lookalike.train import run
from tests.helpers import INLINE, TINY_DATA, compose_config, tiny_overrides, write_image


def test_a_pasted_picture_is_exactly_its_box() -> None:
    rng = np.random.default_rng(0)
    canvas = np.zeros((64, 64, 3), np.uint8)
    picture = np.full((30, 60, 3), (255, 0, 0), np.uint8)  # 2:1
    out, box = _paste(canvas, picture, rng, (0.4, 0.9))
    x0, y0, x1, y1 = np.round(box * 64).astype(int)
    red = out[..., 0] > 0
    assert red[y0:y1, x0:x1].all() and red.sum() == (x1 - x0) * (y1 - y0)
    assert abs((x1 - x0) / (y1 - y0) - 2) < 0.2


def test_composites_are_repeatable_and_use_the_data_sets_boxes(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"{i}.jpg") for i in range(3)]
    for i, p in enumerate(paths):
        write_image(Path(p), (60 * i, 120, 200), size=48)
    boxes = np.array([[4, 6, 20, 30], [np.nan] * 4, [0, 0, 48, 48]], np.float32)
    data = Composites(paths, 32, 40, seed=3, boxes=boxes)
    first = [data[i] for i in range(40)]
    again = data[7]
    assert torch.equal(first[7]["image"], again["image"]) and torch.equal(first[7]["box"], again["box"])
    data.set_epoch(1)
    assert not torch.equal(data[7]["image"], again["image"])
    for sample in first:
        assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.uint8
        x0, y0, x1, y1 = sample["box"].tolist()
        assert sample["found"] == 0 or (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1)
    assert {float(s["found"]) for s in first} == {0.0, 1.0}
    own = np.array([4, 6, 24, 36]) / 48  # picture 0 as itself: its box 4,6,20,30 of 48 px
    assert any(np.allclose(s["box"].numpy(), own, atol=1e-3) for s in first)


def test_the_losses_reward_the_right_box() -> None:
    target = torch.tensor([[0.2, 0.2, 0.6, 0.8]])
    right = box_losses(target.clone(), torch.tensor([5.0]), target, torch.tensor([1.0]))["loss"]
    wrong = box_losses(torch.tensor([[0.6, 0.0, 1.0, 0.3]]), torch.tensor([5.0]), target, torch.tensor([1.0]))["loss"]
    assert right < 0.05 < wrong


@pytest.fixture(scope="module")
def box_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("box")
    return run(compose_config(tiny_overrides(base / "cache", base / "run") + [
        "experiment=box", "logger=none", "box.backbone=test_efficientnet", "box.pretrained=false",
        "box.image_size=32", "box.samples_per_epoch=32", "box.eval_samples=16", "box.min_confidence=0.0"]))


def test_train_py_experiment_box_writes_a_box_file_that_finds_and_crops(box_run: dict, tmp_path: Path) -> None:
    assert set(box_run["test"]["box model"]) >= {"iou", "iou>=0.5", "confidence_accuracy", "ms_per_photo"}
    assert 0 <= box_run["test"]["box model"]["iou"] <= 1
    saved = json.loads((Path(box_run["box_file"]).parent / "metrics.json").read_text())
    assert saved["test"] == box_run["test"]
    finder = BoxFinder.load(box_run["box_file"])
    photo = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    [((x, y, w, h), confidence)] = finder.find([photo])
    assert 0 <= x <= 120 and 0 <= y <= 90 and w >= 0 and h >= 0 and 0 <= confidence <= 1
    [cropped] = finder.crop([photo])
    assert cropped.ndim == 3 and cropped.shape[0] <= 90 and cropped.shape[1] <= 120
    [whole] = BoxFinder.load(box_run["box_file"], min_confidence=1.01).crop([photo])
    assert whole.shape == photo.shape  # not sure enough: the whole photo


def test_bad_box_files_get_one_message(tmp_path: Path) -> None:
    with pytest.raises(LookalikeError, match="experiment=box"):
        BoxFinder.load(tmp_path / "box.pt")
    (tmp_path / "other.pt").write_bytes(b"not a torch file")
    with pytest.raises(LookalikeError, match="not a readable box file"):
        BoxFinder.load(tmp_path / "other.pt")
    torch.save({"format": "something else"}, tmp_path / "foreign.pt")
    with pytest.raises(LookalikeError, match="not a lookalike box file"):
        BoxFinder.load(tmp_path / "foreign.pt")


def test_search_crop_auto_uses_the_box_model(box_run: dict, trained: dict, catalogue, tmp_path: Path,
                                              capsys) -> None:
    from lookalike.catalogue.file import FileCatalogue

    FileCatalogue.build(trained["embedder"], catalogue[0], INLINE).save(tmp_path / "c.lkidx")
    photo = catalogue[1][0]
    search_main([photo, "--index", str(tmp_path / "c.lkidx"), "--crop", "auto", "--boxes", box_run["box_file"],
                 "-k", "2", "--json"])
    [answer] = json.loads(capsys.readouterr().out)
    assert len(answer["results"]) == 2
    with pytest.raises(LookalikeError, match="No box model"):
        search_main([photo, "--index", str(tmp_path / "c.lkidx"), "--crop", "auto"])  # none beside embedder.pt
    search_main([photo, "--index", str(tmp_path / "c.lkidx"), "--json"])  # by default: whole, without a box model
    assert json.loads(capsys.readouterr().out)[0]["results"]


def test_index_build_crop_auto_embeds_each_image_cut_to_its_box_and_keeps_cutting(
        box_run: dict, trained: dict, catalogue, tmp_path: Path, capsys) -> None:
    from lookalike.cli.index import main as index_main
    from lookalike.catalogue.backends import reembed
    from lookalike.catalogue.file import FileCatalogue
    from lookalike.embedder.file import load_embedder

    manifest, photos = catalogue[0], catalogue[1]
    out = tmp_path / "photos.lkidx"
    (tmp_path / "photos.csv").write_text("path,label\n" + "".join(f"{p},{n}\n" for p, n in zip(photos[:4], catalogue[2])))
    index_main(["build", "--embedder", trained["embedder"], "--images", str(tmp_path / "photos.csv"), "--out", str(out),
                "--crop", "auto", "--boxes", box_run["box_file"], "--workers", "0"])
    index = FileCatalogue.load(out)
    assert index.meta["boxes"] == str(Path(box_run["box_file"]).resolve())
    finder, embedder = BoxFinder.load(box_run["box_file"]), load_embedder(trained["embedder"])
    cropped = finder.crop([load_rgb(p) for p in photos[:5]])
    assert any(c.shape != load_rgb(p).shape for c, p in zip(cropped, photos))  # min_confidence 0: boxes cut
    expected = embedder.embed(cropped).numpy()
    np.testing.assert_allclose(index.vectors_of([it["id"] for it in index.items]), expected[:4], atol=1e-4)

    (tmp_path / "more.csv").write_text(f"path,label\n{photos[4]},{catalogue[2][4]}\n")
    index_main(["add", "--index", str(out), "--images", str(tmp_path / "more.csv"), "--workers", "0"])
    added = FileCatalogue.load(out)
    np.testing.assert_allclose(added.vectors_of([added.items[-1]["id"]]), expected[4:], atol=1e-4)  # cut the same way
    again = reembed(out, trained["embedder"], tmp_path / "again.lkidx", options=INLINE)
    assert again.meta["boxes"] == index.meta["boxes"]
    np.testing.assert_allclose(again.vectors_of([it["id"] for it in again.items]), expected, atol=1e-4)

    answers = {}
    for crop in ([], ["--crop", "auto"], ["--crop", "none"]):  # default: auto, with the catalogue's box file
        capsys.readouterr()
        search_main([photos[0], "--index", str(out), "-k", "1", "--json", *crop])
        answers[" ".join(crop)] = json.loads(capsys.readouterr().out)[0]["results"][0]["score"]
    assert answers[""] == answers["--crop auto"] != answers["--crop none"]
    whole = FileCatalogue.build(trained["embedder"], tmp_path / "photos.csv", INLINE)
    assert whole.meta["boxes"] is None
    with pytest.raises(LookalikeError, match="No box model"):
        index_main(["build", "--embedder", trained["embedder"], "--images", str(manifest), "--out",
                    str(tmp_path / "x.lkidx"), "--crop", "auto"])  # no box.pt beside embedder.pt


def test_evaluate_crop_auto_cuts_the_query_photos(box_run: dict, trained: dict, tmp_path: Path) -> None:
    from lookalike.evaluate import evaluate

    cache = Path(trained["embedder"]).parents[1] / "cache"
    data = ["data=synthetic", f"data.root={cache}", "data.source.test_protocol=photo_to_catalogue",
            *(f"data.source.{k}={v}" for k, v in TINY_DATA.items())]  # photos query the catalogue pictures

    def report(*extra: str) -> dict:
        return evaluate(compose_config([f"ckpt={trained['embedder']}", f"paths.output_dir={tmp_path / 'eval'}",
                                        "num_workers=0", "grid.queries=0", "save_embeddings=true", *data, *extra],
                                       name="eval"))

    whole = report()
    embeddings = np.load(tmp_path / "eval" / "embeddings.npy")
    cut = report("crop=auto", f"boxes={box_run['box_file']}")
    assert whole["crop"] is None and cut["crop"]["queries"] > 0
    assert cut["crop"]["cropped"] == cut["crop"]["queries"]  # min_confidence 0: every query cut
    changed = np.abs(np.load(tmp_path / "eval" / "embeddings.npy") - embeddings).max(1) > 1e-4
    with open(tmp_path / "eval" / "items.csv") as f:
        queries = np.array([row["is_query"] == "1" for row in csv.DictReader(f)])
    assert changed[queries].any() and not changed[~queries].any()  # the catalogue pictures stay whole
    with pytest.raises(LookalikeError, match="crop=sideways"):
        report("crop=sideways")
    with pytest.raises(LookalikeError, match="No box model"):
        report("crop=auto")  # none beside embedder.pt


@pytest.fixture
def boxed_app(box_run: dict, trained: dict, catalogue, tmp_path: Path):
    pytest.importorskip("fastapi")
    from lookalike.catalogue.file import FileCatalogue
    from lookalike.serve.app import create_app
    from lookalike.serve.page import PageOptions

    FileCatalogue.build(trained["embedder"], catalogue[0], INLINE).save(tmp_path / "c.lkidx")
    return create_app(tmp_path / "c.lkidx", PageOptions(boxes=box_run["box_file"])), tmp_path / "c.lkidx", catalogue[1]


def test_the_api_finds_the_box_and_searches_with_crop_auto(boxed_app, box_run: dict, trained: dict) -> None:
    from fastapi.testclient import TestClient

    from lookalike.data.images import load_rgb
    from lookalike.catalogue.file import FileCatalogue
    from lookalike.embedder.file import load_embedder
    from lookalike.serve.app import create_app

    app, index_path, photos = boxed_app
    client = TestClient(app)
    files = {"image": ("p.jpg", Path(photos[0]).read_bytes(), "image/jpeg")}
    found = client.post("/api/box", files=files).json()
    finder = BoxFinder.load(box_run["box_file"])
    [(box, confidence)] = finder.find([load_rgb(photos[0])])
    assert found["box"] == [round(v) for v in box] and found["confidence"] == pytest.approx(confidence, abs=1e-5)
    answer = client.post("/api/search", files=files, data={"k": "3", "crop": "auto"})
    assert answer.status_code == 200, answer.text
    expected = FileCatalogue.load(index_path).search(load_embedder(trained["embedder"]), finder.crop([load_rgb(photos[0])]), 3)
    assert [r["id"] for r in answer.json()["results"]] == [h.id for h in expected[0]]
    plain = TestClient(create_app(index_path))  # no box model beside the embedder: crop=auto is refused
    assert plain.post("/api/search", files=files, data={"crop": "auto"}).status_code == 422
    assert plain.post("/api/box", files=files).status_code == 404
    assert "const BOXES = false" in plain.get("/").text and "const BOXES = true" in client.get("/").text


@pytest.mark.slow
def test_the_page_draws_the_box_found_and_searches_with_it(boxed_app) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_serve import page_in_browser

    app, _, photos = boxed_app
    with page_in_browser(app) as (browser, address):
        browser.get(address)
        browser.find_element(By.ID, "file").send_keys(str(Path(photos[0]).resolve()))
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: "(cropped)" in b.find_element(By.ID, "status").text)
        from fastapi.testclient import TestClient

        found = TestClient(app).post("/api/box", files={"image": ("p.jpg", Path(photos[0]).read_bytes())}).json()
        assert browser.find_element(By.ID, "query").get_attribute("data-crop") == ",".join(map(str, found["box"]))
        assert browser.find_element(By.ID, "sel").is_displayed()
        browser.find_element(By.ID, "clearcrop").click()  # the whole photo instead
        wait.until(lambda b: "(cropped)" not in b.find_element(By.ID, "status").text
                   and b.find_elements(By.CSS_SELECTOR, "#results .result"))


def test_lookalike_evaluate_takes_crop_as_a_flag() -> None:
    from lookalike.cli.evaluate import overrides

    assert overrides(["ckpt=e.pt", "--crop", "auto", "--boxes=b.pt", "--nmi"]) == [
        "ckpt=e.pt", "crop=auto", "boxes=b.pt", "nmi=true"]
