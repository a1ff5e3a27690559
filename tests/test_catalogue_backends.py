"""One contract, two backends: every operation of :class:`lookalike.catalogue.base.Catalogue` gives the same answer
from the ``.lkidx`` file and from a Milvus collection built from the same pictures (compared by path: the backends
number items their own way), the collection in a Milvus Lite file (fast suite) and on a Milvus server (slow
suite)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lookalike.catalogue.base import Catalogue
from lookalike.catalogue.filters import parse_filter
from lookalike.embedder.file import load_embedder, read_embedder_file
from lookalike.errors import LookalikeError
from tests.helpers import Place

pytest.importorskip("milvus_lite")


@pytest.fixture
def shop(trained: dict, catalogue, tmp_path: Path) -> Path:
    """The catalogue pictures copied into a folder of their own, with a manifest that has a brand column."""
    rows = ["path,label,brand"]
    for i, row in enumerate(catalogue[0].read_text().splitlines()[1:]):
        path, label = row.rsplit(",", 1)
        copy = tmp_path / "pictures" / f"{i}.jpg"
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, copy)
        rows.append(f"pictures/{i}.jpg,{label},{'acme' if i % 2 else 'bolt'}")
    (tmp_path / "shop.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "shop.csv"


@pytest.fixture
def places(milvus_place: Place, tmp_path: Path) -> dict[str, Place]:
    """The file, and the collection in a Milvus Lite file or on a server."""
    return {"faiss": Place("faiss", str(tmp_path / "c.lkidx")), "milvus": milvus_place}


@pytest.fixture
def both(trained: dict, shop: Path, places: dict[str, Place]) -> dict[str, Catalogue]:
    opened = {}
    for backend, place in places.items():
        place.build(trained["embedder"], shop).close()
        opened[backend] = place.open()
    yield opened
    for catalogue in opened.values():
        catalogue.close()


def _paths(catalogue: Catalogue, ids) -> list[str]:
    return [catalogue.item(int(i))["path"] for i in ids]


def _same(both: dict[str, Catalogue], answer) -> object:
    faiss, milvus = (answer(both[b]) for b in ("faiss", "milvus"))
    assert faiss == milvus
    return faiss


def test_reading(both: dict[str, Catalogue], shop: Path) -> None:
    assert _same(both, lambda c: c.count()) == 5
    assert _same(both, lambda c: c.columns()) == {"label", "brand"}
    where = parse_filter('brand == "acme"', {"label", "brand"}).condition
    assert _same(both, lambda c: c.count(where)) == 2
    listed = _same(both, lambda c: [(it["path"], it["label"], it.get("fields")) for it in
                                    sorted(c.listing(), key=lambda it: it["path"])])
    assert len(listed) == 5 and all(fields["brand"] in ("acme", "bolt") for _, _, fields in listed)
    _same(both, lambda c: sorted((c.item(i)["path"], c.item(i)["label"]) for i in c.select(paths=[p for p, _, _ in
                                                                                            listed])))
    _same(both, lambda c: c.check_embedder(c.meta["embedder"])["format"])


def test_searching(both: dict[str, Catalogue]) -> None:
    vectors = both["faiss"].vectors()
    for where in (None, parse_filter('brand != "acme"', {"label", "brand"}).condition):
        found = {b: c.search_vectors(vectors, 3, where) for b, c in both.items()}
        assert [[h.path for h in row] for row in found["faiss"]] == [[h.path for h in row] for row in found["milvus"]]
        for a, b in zip(found["faiss"], found["milvus"]):
            assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    _same(both, lambda c: sorted(sorted(_paths(c, g)) for g in c.duplicate_groups(0.0)))
    _same(both, lambda c: [(round(s, 4), sorted(_paths(c, (a, b)))) for s, a, b in c.confusers(top=4)])
    for c in both.values():
        with pytest.raises(LookalikeError, match="dimensions"):
            c.search_vectors(np.zeros((1, 3), np.float32), 1)
        with pytest.raises(LookalikeError, match="at least one result"):
            c.search_vectors(vectors[:1], 0)


def test_changing(both: dict[str, Catalogue], trained: dict, tmp_path: Path) -> None:
    more = tmp_path / "more" / "new_label"
    more.mkdir(parents=True)
    shutil.copyfile(tmp_path / "pictures" / "0.jpg", more / "a.jpg")
    payload = read_embedder_file(trained["embedder"])
    added = _same(both, lambda c: sorted(it["path"] for it in c.add_images(payload, tmp_path / "more", 8, 0)))
    assert added == [str((more / "a.jpg").resolve())]
    assert _same(both, lambda c: c.add_images(payload, tmp_path / "more", 8, 0)) == []  # already there
    (tmp_path / "pictures" / "3.jpg").unlink()
    gone = _same(both, lambda c: _paths(c, c.select(missing=True)))
    assert gone == [str((tmp_path / "pictures" / "3.jpg").resolve())]
    _same(both, lambda c: sorted(it["path"] for it in c.remove(c.select(missing=True))))
    assert _same(both, lambda c: c.count()) == 5
    for c in both.values():
        with pytest.raises(LookalikeError, match="Not in the index"):
            c.select(paths=[tmp_path / "nowhere.jpg"])
    embedder = load_embedder(trained["embedder"])
    photo = [str(more / "a.jpg")]
    # a.jpg is a copy of pictures/0.jpg: the two tie, and a server breaks the tie its own way
    _same(both, lambda c: sorted(h.path for h in c.search_vectors(embedder.embed(photo).numpy(), 2)[0]))


def test_editing_takes_turns_and_keeps_the_change(both: dict[str, Catalogue], places: dict[str, Place],
                                                   tmp_path: Path) -> None:
    for backend, place in places.items():
        both[backend].close()
        with place.editing() as catalogue:
            catalogue.remove(catalogue.select(paths=[tmp_path / "pictures" / "1.jpg"]))
        again = place.open()
        assert again.count() == 4 and not again.ids_of([str((tmp_path / "pictures" / "1.jpg").resolve())])
        both[backend] = again


def test_the_commands_take_either_backend(both: dict[str, Catalogue], places: dict[str, Place],
                                          capsys: pytest.CaptureFixture) -> None:
    import json

    from lookalike.cli import main as lookalike

    answers = {}
    for backend, place in places.items():
        both[backend].close()  # a Milvus Lite file is one client's at a time
        lookalike(["confusers", *place.args(), "--top", "3", "--json"])
        answers[backend] = [sorted((p["a"]["path"], p["b"]["path"])) for p in json.loads(capsys.readouterr().out)]
        both[backend] = place.open()
    assert answers["faiss"] == answers["milvus"] and len(answers["faiss"]) == 3
