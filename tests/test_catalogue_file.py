"""Catalogue index and search: agrees with the evaluation module, refuses foreign embedders, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike.errors import LookalikeError
from lookalike.evaluate import evaluate
from lookalike.catalogue.file import FileCatalogue
from lookalike.embedder.file import load_embedder, save_embedder
from lookalike.catalogue.query import SearchOptions, search_catalogue
from tests.helpers import TINY_DATA, compose_config

def test_search_agrees_with_the_evaluation_module(trained: dict, catalogue, tmp_path: Path) -> None:
    manifest, photos, labels = catalogue
    index = FileCatalogue.build(trained["embedder"], manifest)
    index.save(tmp_path / "c.lkidx")
    loaded = FileCatalogue.load(tmp_path / "c.lkidx")
    assert loaded.meta["count"] == 5 and len(loaded.items) == 5
    hits = loaded.search(load_embedder(trained["embedder"]), photos, k=3)
    recall_at_1 = sum(h[0].label == y for h, y in zip(hits, labels)) / len(labels)
    cfg = compose_config([f"ckpt={trained['best_checkpoint']}", f"paths.output_dir={tmp_path / 'eval'}", "num_workers=0",
                          "grid.queries=0", "data=synthetic", f"data.root={Path(trained['embedder']).parents[1] / 'cache'}",
                          *(f"data.source.{k}={v}" for k, v in TINY_DATA.items()),
                          "data.source.test_protocol=photo_to_catalogue"], name="eval")
    report = evaluate(cfg)
    assert report["metrics"]["queries"] == len(photos)
    assert recall_at_1 == pytest.approx(report["metrics"]["recall@1"], abs=1e-9)


def test_index_refuses_another_embedder_and_bad_files(trained: dict, catalogue, tmp_path: Path) -> None:
    index = FileCatalogue.build(trained["embedder"], catalogue[0])
    index.check_embedder(trained["embedder"])  # the same one is fine
    other = load_embedder(trained["embedder"])
    with torch.no_grad():
        next(other.head.parameters()).add_(0.01)
    save_embedder(other, tmp_path / "other.pt")
    with pytest.raises(LookalikeError, match="built with embedder"):
        index.check_embedder(tmp_path / "other.pt")
    with pytest.raises(LookalikeError, match="No index file"):
        FileCatalogue.load(tmp_path / "missing.lkidx")
    (tmp_path / "junk.lkidx").write_bytes(b"junk")
    with pytest.raises(LookalikeError, match="not a readable lookalike index"):
        FileCatalogue.load(tmp_path / "junk.lkidx")
    with zipfile.ZipFile(tmp_path / "foreign.lkidx", "w") as z:
        z.writestr("meta.json", json.dumps({"format": "other"}))
        z.writestr("items.json", "[]")
        z.writestr("index.faiss", b"")
    with pytest.raises(LookalikeError, match="not a lookalike index"):
        FileCatalogue.load(tmp_path / "foreign.lkidx")
    with pytest.raises(LookalikeError, match="dimensions"):
        index.search_vectors(np.zeros((1, 3), np.float32))


@pytest.mark.slow
def test_index_and_search_commands(trained: dict, catalogue, tmp_path: Path) -> None:
    manifest, photos, labels = catalogue
    cli = [sys.executable, "-m", "lookalike.cli"]
    built = subprocess.run([*cli, "index", "build", "--embedder", trained["embedder"], "--images", str(manifest),
                            "--out", str(tmp_path / "c.lkidx")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    found = subprocess.run([*cli, "search", "--index", str(tmp_path / "c.lkidx"), *photos[:2], "-k", "3", "--json",
                            "--out", str(tmp_path / "grid.png")], capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-2000:]
    results = json.loads(found.stdout)
    assert [r["query"] for r in results] == photos[:2] and all(len(r["results"]) == 3 for r in results)
    assert (tmp_path / "grid.png").stat().st_size > 1000
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("path,label\n" + "".join(f"{p},{y}\n" for p, y in zip(photos, labels)))
    embedder = tmp_path / "embedder.pt"
    embedder.write_bytes(Path(trained["embedder"]).read_bytes())
    cal = subprocess.run([*cli, "calibrate", "--embedder", str(embedder), "--images", str(labelled),
                          "--target-precision", "0.3", "-k", "2"], capture_output=True, text=True, timeout=300)
    assert cal.returncode == 0 and "held-out classes" in cal.stdout, cal.stderr[-2000:]
    dup = subprocess.run([*cli, "duplicates", "--index", str(tmp_path / "c.lkidx"), "--threshold", "0.9999"],
                         capture_output=True, text=True, timeout=300)
    assert dup.returncode == 0 and "groups of near-duplicates" in dup.stdout, dup.stderr[-2000:]
    bad = subprocess.run([*cli, "search", "--index", str(tmp_path / "none.lkidx"), photos[0]],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "No index file" in bad.stderr and "Traceback" not in bad.stderr


def test_threshold_for_precision_is_exact() -> None:
    from lookalike.embedder.calibrate import precision_recall, threshold_for_precision

    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    same = np.array([True, True, False, True, False])
    assert threshold_for_precision(scores, same, 1.0) == 0.8
    assert threshold_for_precision(scores, same, 0.75) == 0.6  # 3 of the top 4 are right
    assert precision_recall(scores, same, 0.6) == (0.75, 1.0)
    with pytest.raises(LookalikeError, match="No threshold"):
        threshold_for_precision(scores, ~same & False, 0.5)
    # ties: a threshold of 0.8 would keep both 0.8 pairs (precision 2/3), so 0.9 is the answer for 0.8
    tied, tied_same = np.array([0.9, 0.8, 0.8, 0.7]), np.array([True, True, False, True])
    assert threshold_for_precision(tied, tied_same, 0.8) == 0.9
    assert threshold_for_precision(tied, tied_same, 0.75) == 0.7
    t = threshold_for_precision(tied, tied_same, 0.8)
    assert precision_recall(tied, tied_same, t)[0] >= 0.8


def test_calibrate_stores_a_threshold_that_search_uses(trained: dict, catalogue, tmp_path: Path) -> None:
    from lookalike.embedder.calibrate import calibrate
    from lookalike.embedder.file import match_threshold

    manifest, photos, labels = catalogue
    rows = ["path,label"] + [f"{p},{y}" for p, y in zip(photos, labels)]
    rows += manifest.read_text().splitlines()[1:]
    (tmp_path / "labelled.csv").write_text("\n".join(rows) + "\n")
    embedder = tmp_path / "embedder.pt"
    embedder.write_bytes(Path(trained["embedder"]).read_bytes())
    result = calibrate(embedder, tmp_path / "labelled.csv", target_precision=0.3, k=3)
    assert result["fit"]["precision"] >= 0.3 and result["fit"]["classes"] + result["held_out"]["classes"] == 5
    assert 0 <= result["held_out"]["precision"] <= 1 and 0 <= result["held_out"]["recall"] <= 1
    assert match_threshold(embedder) == pytest.approx(result["threshold"])
    FileCatalogue.build(trained["embedder"], manifest).check_embedder(embedder)  # calibration keeps the fingerprint


def test_duplicates_and_category_search(trained: dict, catalogue, tmp_path: Path) -> None:
    manifest, photos, labels = catalogue
    folder = tmp_path / "shop"
    for i, row in enumerate(manifest.read_text().splitlines()[1:]):
        path, label = row.rsplit(",", 1)
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / "front.jpg").write_bytes(Path(path).read_bytes())
        if i == 0:  # the same picture listed twice under another name
            (folder / label / "front_copy.jpg").write_bytes(Path(path).read_bytes())
    index = FileCatalogue.build(trained["embedder"], folder)
    groups = index.duplicate_groups(threshold=0.9999)
    assert len(groups) == 1 and {Path(index.by_id[i]["path"]).name for i in groups[0]} == {"front.jpg", "front_copy.jpg"}
    target = labels[0]
    vectors = load_embedder(trained["embedder"]).embed(photos[:3]).numpy()
    answers = search_catalogue(index, vectors, SearchOptions(k=5, category=target))
    in_category = sum(it["label"] == target for it in index.items)
    assert all(h.label == target for a in answers for h in a.hits)
    assert all(len(a.hits) == in_category for a in answers)
    with pytest.raises(LookalikeError, match="No catalogue item has the label 'no-such-label'"):
        search_catalogue(index, vectors[:1], SearchOptions(category="no-such-label"))
