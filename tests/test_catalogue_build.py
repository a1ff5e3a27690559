"""Catalogue upkeep: resumable builds, add/remove, binary (Hamming) indexes, unreadable catalogue images."""

from __future__ import annotations

import json

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lookalike.catalogue.build as build
from lookalike.catalogue.build import BuildOptions
from lookalike.catalogue.file import FileCatalogue
from lookalike.errors import LookalikeError
from lookalike.embedder.file import load_embedder
from lookalike.catalogue.filters import parse_filter
from lookalike.catalogue.milvus import MilvusCatalogue, item_id
from lookalike.retrieval.knn import FaissIndex, default_search_params
from tests.helpers import INLINE


def _shop(manifest: Path, folder: Path) -> list[Path]:
    """The catalogue pictures as a folder, one sub-folder per product."""
    paths = []
    for row in manifest.read_text().splitlines()[1:]:
        path, label = row.rsplit(",", 1)
        (folder / label).mkdir(parents=True, exist_ok=True)
        paths.append(folder / label / "front.jpg")
        paths[-1].write_bytes(Path(path).read_bytes())
    return paths


def test_an_interrupted_build_resumes_where_it_stopped(trained: dict, catalogue, tmp_path: Path, monkeypatch) -> None:
    real = build.embed_files
    embedded: list[int] = []

    def crashing(embedder, paths, start=0, *args, **kwargs):
        for n, batch in enumerate(real(embedder, paths, start, *args, **kwargs)):
            if n == 3:
                raise KeyboardInterrupt  # as if the build were killed while embedding the 4th image
            embedded.extend(batch[0].tolist())
            yield batch

    def counting(embedder, paths, start=0, *args, **kwargs):
        for batch in real(embedder, paths, start, *args, **kwargs):
            embedded.extend(batch[0].tolist())
            yield batch

    partial = tmp_path / "c.lkidx.partial"
    monkeypatch.setattr(build, "embed_files", crashing)
    with pytest.raises(KeyboardInterrupt):
        FileCatalogue.build(trained["embedder"], catalogue[0], BuildOptions(batch_size=1, num_workers=0),
                            checkpoint=partial, checkpoint_every=2)
    assert embedded == [0, 1, 2] and len(list(partial.glob("chunk_*.npz"))) == 1  # images 0-1 saved
    embedded.clear()
    monkeypatch.setattr(build, "embed_files", counting)
    resumed = FileCatalogue.build(trained["embedder"], catalogue[0], BuildOptions(batch_size=1, num_workers=0),
                            checkpoint=partial, checkpoint_every=2)
    assert embedded == [2, 3, 4]  # only what was not saved is embedded again
    clean = FileCatalogue.build(trained["embedder"], catalogue[0], INLINE)
    assert [it["path"] for it in resumed.items] == [it["path"] for it in clean.items]
    np.testing.assert_allclose(resumed.vectors(), clean.vectors(), atol=1e-5)


def test_a_checkpoint_of_other_images_is_not_reused(trained: dict, catalogue, tmp_path: Path) -> None:
    partial = tmp_path / "c.lkidx.partial"
    FileCatalogue.build(trained["embedder"], catalogue[0], INLINE, checkpoint=partial, checkpoint_every=2)
    shop = _shop(catalogue[0], tmp_path / "shop")
    with pytest.warns(UserWarning, match="other images or another embedder"):
        index = FileCatalogue.build(trained["embedder"], tmp_path / "shop", INLINE, checkpoint=partial)
    assert [it["path"] for it in index.items] == [str(p) for p in sorted(shop)]


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "BFlat"])
def test_add_and_remove_items(trained: dict, catalogue, tmp_path: Path, factory: str) -> None:
    shop = _shop(catalogue[0], tmp_path / "shop")
    later = shop[3:]
    for p in later:
        shutil.move(p, tmp_path / p.parent.name)  # not in the shop yet
    index = FileCatalogue.build(trained["embedder"], tmp_path / "shop",
                                BuildOptions(factory=factory, num_workers=0))
    assert index.meta["count"] == 3
    for p in later:
        shutil.move(tmp_path / p.parent.name, p)
    embedder = load_embedder(trained["embedder"])
    payload = index.check_embedder(trained["embedder"])
    added = index.add_images(payload, tmp_path / "shop", num_workers=0)
    assert sorted(it["path"] for it in added) == sorted(map(str, later)) and [it["id"] for it in added] == [3, 4]
    assert index.add_images(payload, tmp_path / "shop") == []  # nothing new
    top = index.search(embedder, [str(later[0])], k=1)[0][0]
    assert top.path == str(later[0]) and top.score == pytest.approx(1.0, abs=1e-4)
    index.remove([top.id, 0])
    index.save(tmp_path / "c.lkidx")
    loaded = FileCatalogue.load(tmp_path / "c.lkidx")
    assert loaded.meta["count"] == 3 and sorted(loaded.by_id) == [1, 2, 4]
    hits = loaded.search(embedder, [str(later[0])], k=5)[0]
    assert len(hits) == 3 and top.id not in {h.id for h in hits}
    assert FileCatalogue.load(tmp_path / "c.lkidx").add_images(payload, tmp_path / "shop", num_workers=0)[0]["id"] == 5
    with pytest.raises(LookalikeError, match="No catalogue item has the id"):
        loaded.remove([99])


def test_approximate_catalogue_indexes_keep_their_search_parameters(trained: dict, catalogue, tmp_path: Path) -> None:
    import faiss

    index = FileCatalogue.build(trained["embedder"], catalogue[0], BuildOptions(factory="HNSW32", num_workers=0))
    assert index.meta["search_params"] == "efSearch=128"  # not FAISS's default of 16
    index.save(tmp_path / "c.lkidx")
    loaded = FileCatalogue.load(tmp_path / "c.lkidx")
    assert faiss.downcast_index(loaded.faiss.index.index).hnsw.efSearch == 128
    loaded.faiss.set_search_params("efSearch=300")  # lookalike search --search-params
    assert faiss.downcast_index(loaded.faiss.index.index).hnsw.efSearch == 300
    flat = FileCatalogue.build(trained["embedder"], catalogue[0], options=BuildOptions(num_workers=0, search_params=""))
    assert flat.meta["search_params"] == "" and default_search_params("IVF1024,PQ32") == "nprobe=32"


def test_binary_index_ranks_by_hamming_distance() -> None:
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((300, 64)).astype(np.float32)
    queries = rng.standard_normal((20, 64)).astype(np.float32)
    index = FaissIndex(64, "BFlat")
    index.add(gallery)
    sims, ids = index.search(queries, 10)
    hamming = ((queries[:, None, :] > 0) != (gallery[None, :, :] > 0)).sum(-1)
    expected = np.sort(1 - 2 * hamming / 64, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(sims, expected, atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(1 - 2 * hamming / 64, ids, 1), sims, atol=1e-6)
    assert (index.reconstruct(ids[:, 0]) > 0).tolist() == (gallery[ids[:, 0]] > 0).tolist()
    with pytest.raises(LookalikeError, match="divisible by 8"):
        FaissIndex(12, "BFlat")
    with pytest.raises(LookalikeError, match="cannot make an index"):
        FaissIndex(64, "NoSuchIndex")


def test_unreadable_catalogue_images_are_skipped(trained: dict, catalogue, tmp_path: Path) -> None:
    shop = _shop(catalogue[0], tmp_path / "shop")
    (shop[0].parent / "broken.jpg").write_bytes(shop[0].read_bytes()[:200])
    (shop[0].parent / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped: Cannot read image") as caught:
        index = FileCatalogue.build(trained["embedder"], tmp_path / "shop", INLINE)
    assert index.meta["count"] == len(shop) and len([w for w in caught if "skipped" in str(w.message)]) == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(LookalikeError, match="None of the images could be read"):
        FileCatalogue.build(trained["embedder"], tmp_path / "bad", INLINE)


@pytest.mark.slow
def test_index_add_and_remove_commands(trained: dict, catalogue, tmp_path: Path) -> None:
    shop = _shop(catalogue[0], tmp_path / "shop")
    cli = [sys.executable, "-m", "lookalike.cli", "index"]
    out = tmp_path / "c.lkidx"

    def run(*args: str) -> str:
        done = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    run("build", "--embedder", trained["embedder"], "--images", str(catalogue[0]), "--out", str(out),
        "--factory", "BFlat", "--workers", "0")
    assert not (tmp_path / "c.lkidx.partial").exists()
    assert "added 5 item(s); the index now holds 10" in run("add", "--index", str(out), "--images",
                                                             str(tmp_path / "shop"), "--workers", "0")
    shop[0].unlink()
    assert "removed 2 item(s); the index now holds 8" in run("remove", "--index", str(out), "--ids", "0",
                                                              "--missing")
    assert FileCatalogue.load(out).meta["factory"] == "BFlat"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_a_build_on_two_ddp_processes_equals_a_one_process_build(trained: dict, catalogue, tmp_path: Path,
                                                                 backend: str) -> None:
    """index build --devices 2 (Lightning's predict loop, 2 CPU processes, gloo): the same items in the same
    order, the same vectors (to float tolerance), the same local features (each process finds a chunk of them:
    rank 0 refuses to find another's), an unreadable file skipped once, nothing left but the index; into either
    backend (rank 0 inserts into the Milvus collection)."""
    shop = _shop(catalogue[0], tmp_path / "shop")
    (shop[0].parent / "broken.jpg").write_bytes(b"not an image")
    one = FileCatalogue.build(trained["embedder"], tmp_path / "shop", INLINE)
    out = tmp_path / ("two.lkidx" if backend == "faiss" else "two.db")
    done = subprocess.run([sys.executable, "-m", "lookalike.cli", "index", "build", "--embedder", trained["embedder"],
                           "--images", str(tmp_path / "shop"), "--out", str(out), "--devices", "2",
                           "--accelerator", "cpu", "--workers", "0", "--backend", backend], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("indexed 5 images") == 1 and done.stdout.count("skipped 1 unreadable") == 1
    expected = one.local.features(range(len(one.items)))
    if backend == "faiss":
        two = FileCatalogue.load(out)
        assert two.items == one.items
        np.testing.assert_allclose(two.vectors(), one.vectors(), atol=1e-5)
        found = two.local.features(range(len(two.items)))
    else:
        two = MilvusCatalogue.open(str(out))
        ids = [item_id(it["path"]) for it in one.items]
        assert [(it["path"], it["label"]) for it in map(two.item, ids)] == [(it["path"], it["label"]) for it in one.items]
        np.testing.assert_allclose(two.vectors_of(ids), one.vectors(), atol=1e-5)
        found = two.local_features(ids)
        two.close()
    assert two.meta["local"]["codes"] == one.meta["local"]["codes"] and sum(map(len, expected)) > 0
    for a, b in zip(found, expected, strict=True):
        assert a.size == b.size and np.array_equal(a.descriptors, b.descriptors) and np.allclose(a.xy, b.xy, atol=0.5)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".shards", ".partial"))]


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_reembed_makes_the_same_catalogue_with_another_embedder(trained: dict, catalogue, tmp_path: Path,
                                                                backend: str) -> None:
    """index reembed: every item of an index (its path, label and columns) in a new index by another embedder;
    with the same embedder, the same vectors as a fresh build."""
    from lookalike.catalogue.backends import build_catalogue, reembed

    manifest = tmp_path / "shop.jsonl"  # the last item has no brand: after reembed it still has none
    rows = [r.rsplit(",", 1) for r in catalogue[0].read_text().splitlines()[1:]]
    manifest.write_text("".join(json.dumps({"path": p, "label": label, **({"brand": f"b{i % 2}"} if i < len(rows) - 1
                                                                         else {})}) + "\n"
                                for i, (p, label) in enumerate(rows)))
    suffix = ".lkidx" if backend == "faiss" else ".db"
    build_catalogue(tmp_path / f"old{suffix}", trained["embedder"], manifest, backend, options=INLINE)
    new = reembed(tmp_path / f"old{suffix}", trained["embedder"], tmp_path / f"new{suffix}", backend,
                  options=BuildOptions(num_workers=0, factory="HNSW32"))
    fresh = FileCatalogue.build(trained["embedder"], manifest, INLINE)
    assert [(it["path"], it["label"], it.get("fields")) for it in new.listing()] == \
        [(it["path"], it["label"], it.get("fields")) for it in sorted(fresh.items, key=lambda it: _id(it, backend))]
    assert new.meta["factory"] == "HNSW32" and not (tmp_path / f"new{suffix}.items.jsonl").exists()
    assert new.count(parse_filter('brand != "b0"', new.columns()).condition) == (len(rows) - 1) // 2
    ids = [it["id"] for it in new.listing()]
    order = [it["path"] for it in new.listing()]
    np.testing.assert_allclose(new.vectors_of(ids), fresh.vectors_of([_row(fresh, p) for p in order]), atol=1e-5)


def _id(item: dict, backend: str) -> int:
    return item["id"] if backend == "faiss" else item_id(item["path"])


def _row(index: FileCatalogue, path: str) -> int:
    return next(it["id"] for it in index.items if it["path"] == path)
