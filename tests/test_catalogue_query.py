"""Search as a shop uses it: one hit per product, several photos fused, classify-then-search, exact re-scoring
behind compressed indexes (kept in the file, memory-mapped), query expansion and database-side augmentation."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike.data.listing import labelled_images
from lookalike.errors import LookalikeError
from lookalike.catalogue.file import FORMAT, FileCatalogue
from lookalike.catalogue.query import SearchOptions, search_catalogue
from lookalike.retrieval.expansion import query_expansion
from lookalike.retrieval.knn import FaissIndex, default_search_params


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def vector_catalogue(factory: str = "Flat", products: int = 30, per_product: int = 3, dim: int = 32, rerank: int = 0,
              dba_k: int = 0, seed: int = 0) -> tuple[FileCatalogue, np.ndarray]:
    """An index of ``products`` x ``per_product`` clustered vectors (product p in category p % 3)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(products, dim)))
    vectors = unit(np.repeat(centres, per_product, 0) + 0.3 * rng.normal(size=(products * per_product, dim)))
    items = [{"id": i, "path": f"/shop/p{i // per_product}_{i % per_product}.jpg", "label": f"p{i // per_product}",
              "fields": {"category": f"c{(i // per_product) % 3}"}} for i in range(len(vectors))]
    meta = {"format": FORMAT, "embedder_hash": "x", "dim": dim, "factory": factory, "search_params": default_search_params(factory), "count": 0,
            "next_id": len(items), "embedder": "none", "rerank": rerank,
            "dba": {"k": dba_k, "alpha": 3.0} if dba_k else None}
    index = FileCatalogue(FaissIndex(dim, factory, search_params=default_search_params(factory), ids=True), [], meta, np.zeros((0, dim), np.float32) if rerank else None)
    index.add_vectors(items, vectors)
    return index, centres


def test_group_by_returns_one_hit_per_product_with_its_picture_count() -> None:
    index, centres = vector_catalogue()
    [plain] = search_catalogue(index, centres[:1], SearchOptions(k=6))
    assert len({h.label for h in plain.hits}) < 6  # pictures of one product crowd the list
    [grouped] = search_catalogue(index, centres[:1], SearchOptions(k=6, group_by="label"))
    labels = [h.label for h in grouped.hits]
    assert len(labels) == 6 == len(set(labels)) and labels[0] == "p0"
    assert grouped.hits[0].group == "p0" and grouped.hits[0].pictures == 3
    assert grouped.hits[0].score == plain.hits[0].score
    [by_field] = search_catalogue(index, centres[:1], SearchOptions(k=5, group_by="category"))
    assert sorted(h.group for h in by_field.hits) == ["c0", "c1", "c2"]  # fewer groups than k: all of them
    with pytest.raises(LookalikeError, match="no column 'brand'"):
        search_catalogue(index, centres[:1], SearchOptions(group_by="brand"))


def test_items_without_a_label_are_each_a_product_of_their_own_when_grouping() -> None:
    """A flat folder's pictures have no label: grouping by label gives k results, not one."""
    from tests.helpers import file_catalogue

    vectors = unit(np.random.default_rng(0).normal(size=(12, 8))).astype(np.float32)
    items = [{"path": f"/shop/{i:03d}.jpg", "label": "" if i < 10 else "pair"} for i in range(12)]
    [grouped] = search_catalogue(file_catalogue(items, vectors), vectors[:1], SearchOptions(k=10, group_by="label"))
    assert len(grouped.hits) == 10 and len({h.id for h in grouped.hits}) == 10
    assert sum(h.label == "pair" for h in grouped.hits) == 1  # the two labelled ones are still one product


def test_several_photos_fused_by_mean_or_best_photo() -> None:
    index, centres = vector_catalogue()
    photos = unit(centres[[4, 4]] + np.array([[0.2], [-0.2]], np.float32))
    answers = search_catalogue(index, photos, SearchOptions(k=5))
    assert len(answers) == 2  # without --fuse, one answer per photo
    [mean] = search_catalogue(index, photos, SearchOptions(k=5, fuse="mean"))
    [direct] = search_catalogue(index, unit(photos.mean(0, keepdims=True)), SearchOptions(k=5))
    assert [h.id for h in mean.hits] == [h.id for h in direct.hits]
    [best] = search_catalogue(index, photos, SearchOptions(k=5, fuse="max"))
    exact = (index.vectors() @ photos.T).max(1)
    assert [h.id for h in best.hits] == list(index.ids[np.argsort(-exact)[:5]])
    assert best.hits[0].score == pytest.approx(float(exact.max()), abs=1e-5)
    with pytest.raises(LookalikeError, match="fuse='sum'"):
        search_catalogue(index, photos, SearchOptions(fuse="sum"))


def test_category_auto_votes_then_searches_inside_the_category() -> None:
    index, centres = vector_catalogue()
    [answer] = search_catalogue(index, centres[7:8], SearchOptions(k=8, category="auto", category_by="category"))
    assert answer.category == "c1" and 0 < answer.category_confidence <= 1
    assert len(answer.hits) == 8 and all(h.fields["category"] == "c1" for h in answer.hits)
    [given] = search_catalogue(index, centres[7:8], SearchOptions(k=3, category="c2", category_by="category"))
    assert given.category == "c2" and given.category_confidence is None
    assert all(h.fields["category"] == "c2" for h in given.hits)


@pytest.mark.parametrize("factory", ["BFlat", "IVF4,PQ8x4"])
def test_compressed_index_re_scores_with_exact_vectors_from_the_file(factory: str, tmp_path: Path) -> None:
    index, centres = vector_catalogue(factory, products=100, rerank=300, dim=64)
    flat, _ = vector_catalogue("Flat", products=100, dim=64)
    queries = unit(centres[:20] + 0.2)
    index.save(tmp_path / "c.lkidx")
    loaded = FileCatalogue.load(tmp_path / "c.lkidx")
    assert isinstance(loaded.exact, np.memmap)
    truth = flat.search_vectors(queries, 10)
    for rerank, expected in ((None, 1.0), (0, None)):
        found = loaded.search_vectors(queries, 10, rerank=rerank)
        agree = np.mean([[h.id for h in a] == [h.id for h in b] for a, b in zip(found, truth)])
        if expected is None:
            assert agree < 1.0  # the compressed codes alone lose the exact order
        else:
            assert agree == expected
            assert found[0][0].score == pytest.approx(truth[0][0].score, abs=1e-5)
    # upkeep keeps the exact vectors aligned with the items
    loaded.remove([0, 1, 2])
    loaded.save(tmp_path / "c.lkidx")
    again = FileCatalogue.load(tmp_path / "c.lkidx")
    assert np.array_equal(again.vectors(), flat.vectors()[3:])
    with pytest.raises(LookalikeError, match="keeps no exact vectors"):
        flat.search_vectors(queries, 10, rerank=50)


def test_damaged_exact_vectors_are_refused(tmp_path: Path) -> None:
    index, _ = vector_catalogue("BFlat", rerank=50)
    index.save(tmp_path / "c.lkidx")
    with zipfile.ZipFile(tmp_path / "c.lkidx") as z:
        members = {name: z.read(name) for name in z.namelist()}
    for name, change in (("compressed", None), ("short", np.zeros((3, 32), np.float32))):
        with zipfile.ZipFile(tmp_path / f"{name}.lkidx", "w") as z:
            for member, data in members.items():
                if member == "vectors.npy" and change is not None:
                    with z.open(member, "w") as f:
                        np.lib.format.write_array(f, change)
                else:
                    z.writestr(member, data, zipfile.ZIP_DEFLATED if member == "vectors.npy" else zipfile.ZIP_STORED)
        with pytest.raises(LookalikeError, match="damaged lookalike index"):
            FileCatalogue.load(tmp_path / f"{name}.lkidx")


def test_query_expansion_and_database_augmentation() -> None:
    index, centres = vector_catalogue()
    queries = unit(centres[:5] + 0.1 * np.random.default_rng(1).normal(size=centres[:5].shape))
    expanded = search_catalogue(index, queries, SearchOptions(k=3, qe=2))
    reference = query_expansion(torch.from_numpy(queries), torch.from_numpy(index.vectors()), 2).numpy()
    direct = search_catalogue(index, reference, SearchOptions(k=3))  # the evaluation module's alpha-QE
    assert [[h.id for h in a.hits] for a in expanded] == [[h.id for h in a.hits] for a in direct]
    assert expanded[0].hits[0].score != search_catalogue(index, queries[:1], SearchOptions(k=3))[0].hits[0].score
    augmented, _ = vector_catalogue(dba_k=2)
    assert not np.allclose(augmented.vectors(), index.vectors())
    assert np.allclose(np.linalg.norm(augmented.vectors(), axis=1), 1, atol=1e-5)


def test_confusers_are_the_most_similar_pairs_with_different_labels() -> None:
    index, _ = vector_catalogue(products=10)
    pairs = index.confusers(top=5)
    assert len(pairs) == 5 and [p[0] for p in pairs] == sorted((p[0] for p in pairs), reverse=True)
    assert all(index.by_id[a]["label"] != index.by_id[b]["label"] for _, a, b in pairs)
    vectors = index.vectors()
    everything = [(float(vectors[i] @ vectors[j]), i, j) for i in range(30) for j in range(i + 1, 30)
                  if i // 3 != j // 3]
    assert pairs[0][1:] == max(everything)[1:]  # the closest pair overall comes first
    assert index.confusers("category", top=3)[0][0] <= pairs[0][0] + 1e-6


def test_manifest_columns_become_item_fields(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,label,brand,price\na.jpg,sofa,Acme,120\n")
    assert labelled_images(tmp_path / "m.csv")[0]["fields"] == {"brand": "Acme", "price": "120"}
    (tmp_path / "long.csv").write_text(f"path,label,notes\na.jpg,sofa,{'x' * 300}\n")
    with pytest.raises(LookalikeError, match="over 256 characters"):
        labelled_images(tmp_path / "long.csv")


@pytest.mark.slow
def test_search_command_fuses_groups_and_classifies(trained: dict, catalogue, tmp_path: Path) -> None:
    manifest, photos, labels = catalogue
    cli = [sys.executable, "-m", "lookalike.cli"]
    built = subprocess.run([*cli, "index", "build", "--embedder", trained["embedder"], "--images", str(manifest),
                            "--out", str(tmp_path / "c.lkidx"), "--factory", "BFlat"],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0 and "re-scoring 200 candidates" in built.stdout, built.stderr[-2000:]
    found = subprocess.run([*cli, "search", "--index", str(tmp_path / "c.lkidx"), *photos[:3], "-k", "2", "--json",
                            "--fuse", "max", "--group-by", "label", "--category", "auto"],
                           capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-2000:]
    [answer] = json.loads(found.stdout)
    assert answer["query"] == " + ".join(photos[:3]) and answer["category"] in labels
    assert all(r["label"] == answer["category"] and r["pictures"] >= 1 for r in answer["results"])
    confusers = subprocess.run([*cli, "confusers", "--index", str(tmp_path / "c.lkidx"), "--top", "3", "--json"],
                               capture_output=True, text=True, timeout=300)
    assert confusers.returncode == 0 and len(json.loads(confusers.stdout)) == 3, confusers.stderr[-2000:]
    bad = subprocess.run([*cli, "search", "--index", str(tmp_path / "c.lkidx"), photos[0], "--group-by", "sku"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "no column 'sku'" in bad.stderr and "Traceback" not in bad.stderr
    label = labels[0]
    cropped = subprocess.run([*cli, "search", "--index", str(tmp_path / "c.lkidx"), photos[0], "--crop", "2,2,20,20",
                              "--filter", f'label == "{label}"', "--json"], capture_output=True, text=True, timeout=300)
    assert cropped.returncode == 0, cropped.stderr[-2000:]
    assert {r["label"] for r in json.loads(cropped.stdout)[0]["results"]} == {label}
    for option, value, message in (("--crop", "500,0,5,5", "outside"), ("--filter", "price <", "Cannot read")):
        bad = subprocess.run([*cli, "search", "--index", str(tmp_path / "c.lkidx"), photos[0], option, value],
                             capture_output=True, text=True, timeout=300)
        assert bad.returncode != 0 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
