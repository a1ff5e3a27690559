"""Verified matching on tiny generated pictures: a picture pasted into a photo under a known homography verifies
(and its outline is found where it was pasted), unrelated textures do not, the descriptor votes find the picture,
both catalogue backends keep the local features in step with adding and removing, and a damaged store is one
message."""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lookalike.catalogue.backends import build_catalogue, editing, open_catalogue
from lookalike.catalogue.file import FileCatalogue
from lookalike.catalogue.filters import restriction
from lookalike.catalogue.local import local_codes, photo_features
from lookalike.catalogue.query import SearchOptions, search_catalogue
from lookalike.embedder.file import embedder_from_payload, read_embedder_file
from lookalike.errors import LookalikeError
from lookalike.verification.appearance import Bounds, compare, standing
from lookalike.verification.calibration import FLOOR
from lookalike.verification.codes import DescriptorCodes
from lookalike.verification.features import DESCRIPTOR, FeatureOptions, extract
from lookalike.verification.matching import verify
from lookalike.verification.votes import DescriptorVotes, vote_factory
from tests.helpers import INLINE, Place

# the Milvus half of tests that both backends pass alike runs in the slow suite (the contract suite keeps both fast)
MILVUS_SLOW = pytest.param("milvus", marks=pytest.mark.slow)
SERVER = pytest.param("milvus server", marks=pytest.mark.slow)  # a collection on a Milvus server
SIDE = 192
PHOTO = (320, 240)  # width, height
# where picture corners land in the photo: a perspective view, turned and shrunk
PASTED = np.array([[40, 30], [250, 50], [235, 215], [60, 195]], np.float32)


def texture(seed: int, side: int = SIDE) -> np.ndarray:
    """A picture with print-like texture (shapes, lines, letters in many colours): what SIFT finds features in."""
    rng = np.random.default_rng(seed)
    im = np.full((side, side, 3), rng.integers(0, 256, 3), np.uint8)
    for _ in range(90):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, side, 2))
        shape = rng.integers(3)
        if shape == 0:
            cv2.rectangle(im, (x, y), (x + int(rng.integers(4, 30)), y + int(rng.integers(4, 30))), colour, -1)
        elif shape == 1:
            cv2.circle(im, (x, y), int(rng.integers(3, 15)), colour, -1)
        else:
            cv2.putText(im, chr(65 + int(rng.integers(26))), (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 2)
    return im


def photo_of(picture: np.ndarray, background_seed: int = 99) -> np.ndarray:
    """``picture`` pasted into a photo of another texture under the homography to ``PASTED``, a little dimmer."""
    h, w = picture.shape[:2]
    H = cv2.getPerspectiveTransform(np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32), PASTED)
    canvas = cv2.resize(texture(background_seed), PHOTO)
    warped = cv2.warpPerspective(picture, H, PHOTO)
    inside = cv2.warpPerspective(np.full((h, w), 255, np.uint8), H, PHOTO) > 0
    return (np.where(inside[..., None], warped, canvas) * 0.85).astype(np.uint8)


def test_a_picture_pasted_under_a_known_homography_verifies_where_it_was_pasted() -> None:
    picture = texture(1)
    found = verify(extract(photo_of(picture)), [extract(picture)])[0]
    assert found.inliers >= 2 * FLOOR
    expected = PASTED / np.array(PHOTO, np.float32)
    assert np.abs(np.array(found.quad) - expected).max() < 0.03


def test_unrelated_textures_do_not_verify() -> None:
    verdicts = verify(extract(photo_of(texture(1))), [extract(texture(seed)) for seed in range(2, 8)])
    assert max(v.inliers for v in verdicts) < FLOOR


def test_descriptor_codes_match_as_the_whole_descriptors_do_and_come_back_from_their_meta_alone() -> None:
    pictures = [extract(texture(seed)) for seed in range(6)]
    codes = DescriptorCodes.train(pictures, 32, sum(map(len, pictures)))
    coded = [codes.encode(p) for p in pictures]
    assert coded[1].descriptors.dtype == np.int8 and coded[1].descriptors.shape == (len(pictures[1]), 32)
    photo = codes.encode(extract(photo_of(texture(4))))
    verdicts = verify(photo, coded)
    assert int(np.argmax([v.inliers for v in verdicts])) == 4 and verdicts[4].inliers >= FLOOR
    again = DescriptorCodes.of_meta(json.loads(json.dumps(codes.as_meta())), "meta")
    assert again.encode(pictures[2]).descriptors.tolist() == coded[2].descriptors.tolist()
    assert DescriptorCodes.train([], 16, 0).encode(pictures[0]).descriptors.shape == (len(pictures[0]), 16)
    for damaged in (None, {**codes.as_meta(), "matrix": codes.as_meta()["mean"]}, {**codes.as_meta(), "dims": 400},
                    {**codes.as_meta(), "mean": "not base64!"}, {**codes.as_meta(), "scale": "1"}):
        with pytest.raises(LookalikeError, match="meta"):
            DescriptorCodes.of_meta(damaged, "meta")


def test_the_descriptor_votes_find_the_picture() -> None:
    pictures = [extract(texture(seed)) for seed in range(6)]
    votes = DescriptorVotes.build(np.arange(6) * 7, pictures, DESCRIPTOR)  # RootSIFT as it is: codes of 128
    ranked = votes.candidates(extract(photo_of(texture(4))), 3)
    assert ranked[0][0] == 4 * 7 and ranked[0][1] > 2 * ranked[1][1]


def test_a_picture_without_texture_has_few_features_and_verifies_nothing() -> None:
    plain = np.full((SIDE, SIDE, 3), 128, np.uint8)
    assert len(extract(plain)) == 0
    assert verify(extract(plain), [extract(texture(1))])[0].inliers == 0


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    """Six textured catalogue pictures, a folder (= label) each."""
    for seed in range(6):
        folder = tmp_path / "pictures" / f"p{seed}"
        folder.mkdir(parents=True)
        Image.fromarray(texture(seed)).save(folder / "a.png")
    return tmp_path / "pictures"


def _verified_search(catalogue, embedder, photo: np.ndarray, k: int = 3):
    vectors = embedder.embed([photo]).numpy()
    local = photo_features([photo], catalogue.meta["local"])
    return search_catalogue(catalogue, vectors, SearchOptions(k=k), local)[0].hits


def _place(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Place:
    """The catalogue of a test that both backends pass alike: a file, a Milvus Lite file or a server's collection."""
    if backend == "milvus server":
        return request.getfixturevalue("milvus_collection")
    if backend == "milvus":
        pytest.importorskip("milvus_lite")
    return Place(backend, str(tmp_path / ("c.lkidx" if backend == "faiss" else "c.db")))


def _sealed(catalogue, place: Place) -> int | None:
    """On a server, how many feature rows are in sealed segments, which their index serves (the growing ones are
    searched without it); deleted rows count until the server compacts them."""
    if place.collection:
        return int(catalogue.client.describe_index(catalogue.collection + "_local", "vector")["total_rows"])
    return None


@pytest.mark.parametrize("backend", ["faiss", MILVUS_SLOW, SERVER])
def test_both_backends_keep_the_local_features_in_step(backend: str, trained: dict, pictures: Path,
                                                       tmp_path: Path, request: pytest.FixtureRequest) -> None:
    place = _place(backend, tmp_path, request)
    embedder = embedder_from_payload(read_embedder_file(trained["embedder"]))
    photo = photo_of(texture(2))
    place.build(trained["embedder"], pictures).close()
    catalogue = place.open()
    built = _sealed(catalogue, place)
    assert built is None or built == catalogue.feature_rows() > 0  # a build seals what it wrote
    assert catalogue.meta["local"]["threshold"] >= FLOOR
    first = _verified_search(catalogue, embedder, photo)[0]
    assert first.label == "p2" and first.verified and first.inliers >= FLOOR and len(first.quad) == 4
    codes = local_codes(catalogue.meta["local"])
    assert catalogue.local_features([first.id])[0].descriptors.tolist() == \
        codes.encode(extract(texture(2))).descriptors.tolist()
    catalogue.close()

    with place.editing() as catalogue:
        catalogue.remove([first.id])
    catalogue = place.open()
    hits = _verified_search(catalogue, embedder, photo)
    assert "p2" not in [h.label for h in hits] and not any(h.verified for h in hits)
    kept = {it["label"]: it["id"] for it in catalogue.listing()}
    for label, features in zip(kept, catalogue.local_features(list(kept.values()))):  # each item its own features
        own = codes.encode(extract(texture(int(label[1:]))))
        assert features.descriptors.tolist() == own.descriptors.tolist() and features.size == own.size
        assert np.allclose(features.xy, own.xy, atol=0.04)
    catalogue.close()

    with place.editing() as catalogue:
        catalogue.add_images(read_embedder_file(trained["embedder"]), pictures, num_workers=0)
    catalogue = place.open()
    added = len(codes.encode(extract(texture(2))))  # the one picture added again
    assert built is None or _sealed(catalogue, place) == built + added  # and so does an add
    first = _verified_search(catalogue, embedder, photo)[0]
    assert first.label == "p2" and first.verified
    catalogue.close()


def test_a_catalogue_without_local_features_says_how_to_verify(trained: dict, pictures: Path, tmp_path: Path) -> None:
    out = build_catalogue(tmp_path / "c.lkidx", trained["embedder"], pictures, options=replace(INLINE, local=None))
    vectors = np.zeros((1, out.meta["dim"]), np.float32)
    assert search_catalogue(out, vectors, SearchOptions(k=2))[0].hits  # by default: the embedding alone
    with pytest.raises(LookalikeError, match="keeps no local features.*--verify 0"):
        search_catalogue(out, vectors, SearchOptions(k=2, verify=10), [extract(texture(1))])


def test_a_damaged_feature_store_is_one_message(trained: dict, pictures: Path, tmp_path: Path) -> None:
    good = tmp_path / "c.lkidx"
    build_catalogue(good, trained["embedder"], pictures, options=INLINE)
    damages = [("local_counts.npy", "counts"), ("local_descriptors.npy", "shape"), ("votes.faiss", "bytes")]
    for member, damage in damages:
        _damaged(good, tmp_path / f"bad_{damage}.lkidx", member, damage)
        with pytest.raises(LookalikeError, match="damaged lookalike index"):
            open_catalogue(tmp_path / f"bad_{damage}.lkidx")
    with zipfile.ZipFile(good) as z:
        members = {name: z.read(name) for name in z.namelist()}
    meta = json.loads(members["meta.json"])
    for appearance in ({"__class__": 1}, {**meta["local"]["appearance"], "colour": "red"}, [1, 2]):
        members["meta.json"] = json.dumps({**meta, "local": {**meta["local"], "appearance": appearance}}).encode()
        with zipfile.ZipFile(tmp_path / "bad_meta.lkidx", "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
        with pytest.raises(LookalikeError, match="damaged"):  # the comparison's bounds are checked, never passed on
            open_catalogue(tmp_path / "bad_meta.lkidx")


def _damaged(good: Path, bad: Path, member: str, damage: str) -> None:
    """A copy of the catalogue file ``good`` with ``member`` damaged: counts that do not add up, a wrong shape, or
    cut in half."""
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == member:
                if damage == "counts":
                    counts = np.load(__import__("io").BytesIO(data))
                    counts[0] += 7  # the counts no longer add up to the features kept
                    buffer = __import__("io").BytesIO()
                    np.save(buffer, counts)
                    data = buffer.getvalue()
                elif damage == "shape":
                    buffer = __import__("io").BytesIO()
                    np.save(buffer, np.zeros((3, 64), np.uint8))
                    data = buffer.getvalue()
                else:
                    data = data[:len(data) // 2]
            dst.writestr(info, data)


def test_search_command_shows_verified_hits(trained: dict, pictures: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    from lookalike.cli.search import main as search_main

    out = tmp_path / "c.lkidx"
    build_catalogue(out, trained["embedder"], pictures, options=INLINE)
    photo = tmp_path / "photo.png"
    Image.fromarray(photo_of(texture(3))).save(photo)
    run = ["--index", str(out), str(photo), "-k", "2"]
    capsys.readouterr()
    search_main(run + ["--json"])
    first = json.loads(capsys.readouterr().out)[0]["results"][0]
    assert first["label"] == "p3" and first["verified"] and first["inliers"] >= FLOOR and len(first["quad"]) == 4
    search_main(run + ["--out", str(tmp_path / "grid.png")])
    assert "verified (" in capsys.readouterr().out and (tmp_path / "grid.png").stat().st_size > 0


def test_the_page_answers_verified_hits_with_their_outline(trained: dict, pictures: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from lookalike.serve.app import create_app
    from lookalike.serve.page import PageOptions

    out = tmp_path / "c.lkidx"
    build_catalogue(out, trained["embedder"], pictures, options=INLINE)
    client = TestClient(create_app(out, PageOptions()))
    photo = tmp_path / "photo.png"
    Image.fromarray(photo_of(texture(5))).save(photo)

    def search(**form) -> list[dict]:
        with open(photo, "rb") as f:
            answer = client.post("/api/search", files={"image": ("p.png", f, "image/png")}, data={"k": 3, **form})
        assert answer.status_code == 200, answer.text
        return answer.json()["results"]

    first = search()[0]
    assert first["label"] == "p5" and first["verified"] and first["inliers"] >= FLOOR
    assert np.abs(np.array(first["quad"]) - PASTED / np.array(PHOTO, np.float32)).max() < 0.03
    cropped = search(crop="0,0,200,200")[0]  # the crop helps the embedding; verification sees the whole photo
    assert cropped["verified"] and cropped["quad"] == first["quad"]
    assert all(r["verified"] is None for r in search(verify=0))
    assert client.post("/api/search", files={"image": ("p.png", photo.read_bytes(), "image/png")},
                       data={"verify": -1}).status_code == 422
    assert 'id="outline"' in client.get("/").text


def test_evaluate_puts_a_verified_row_beside_each_embedding_row(trained: dict, tmp_path: Path) -> None:
    from lookalike.evaluate import evaluate
    from tests.helpers import compose_config

    rows = ["path,label,split,role"]
    for seed in range(10):
        split = "test" if seed < 6 else "train"
        picture, photo = tmp_path / f"{seed}_picture.png", tmp_path / f"{seed}_photo.png"
        Image.fromarray(texture(seed)).save(picture)
        Image.fromarray(photo_of(texture(seed), background_seed=100 + seed)).save(photo)
        rows += [f"{picture},p{seed},{split},gallery", f"{photo},p{seed},{split},query"]
    (tmp_path / "shop.csv").write_text("\n".join(rows) + "\n")
    overrides = [f"ckpt={trained['embedder']}", "data=manifest", f"data.root={tmp_path / 'shop.csv'}",
                 f"paths.output_dir={tmp_path / 'eval'}", "grid.queries=0", "num_workers=0", "device=cpu", "ks=[1,2]"]
    report = evaluate(compose_config(overrides, name="eval"))
    plain, verified = report["rows"]
    assert verified["checkpoint"].endswith(" + verified") and verified["verified"]["threshold"] >= FLOOR
    assert verified["metrics"]["recall@1"] == 1.0 >= plain["metrics"]["recall@1"]


def recoloured(picture: np.ndarray, degrees: int = 120) -> np.ndarray:
    """``picture`` with its hue turned: a sibling of another colour, the same print."""
    hsv = cv2.cvtColor(picture, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + degrees // 2) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


@pytest.mark.parametrize("backend", ["faiss", MILVUS_SLOW])
def test_a_picture_and_its_recoloured_twin_each_rank_their_own_first(backend: str, trained: dict, pictures: Path,
                                                                     tmp_path: Path) -> None:
    """The twin shares every feature of the picture (inliers alike); the aligned comparison tells them apart: a
    photo of either has its own first, verified, and the other, where it verifies too, as its look-alike."""
    if backend == "milvus":
        pytest.importorskip("milvus_lite")
    (pictures / "p2twin").mkdir()
    Image.fromarray(recoloured(texture(2))).save(pictures / "p2twin" / "a.png")
    out = tmp_path / ("c.lkidx" if backend == "faiss" else "c.db")
    catalogue = build_catalogue(out, trained["embedder"], pictures, backend, options=INLINE)
    assert set(catalogue.meta["local"]["appearance"]) == set(Bounds.__dataclass_fields__)
    embedder = embedder_from_payload(read_embedder_file(trained["embedder"]))
    answers = []
    for label, picture in (("p2", texture(2)), ("p2twin", recoloured(texture(2)))):
        hits = _verified_search(catalogue, embedder, photo_of(picture), k=4)
        assert hits[0].label == label and hits[0].verified and hits[0].lookalike_of is None
        assert not any(h.verified for h in hits[1:])  # the sibling is not a second verified match
        twin = next((h for h in hits if h.inliers >= catalogue.meta["local"]["threshold"] and h is not hits[0]), None)
        assert twin is None or twin.lookalike_of == hits[0].id
        answers.append([(h.label, h.verified, h.lookalike_of is not None) for h in hits[:2]])
    catalogue.close()
    assert answers[0][0] == ("p2", True, False) and answers[1][0] == ("p2twin", True, False)


@pytest.mark.parametrize("backend", ["faiss", MILVUS_SLOW])
def test_duplicates_are_re_encodes_and_crops_and_variants_are_told_apart(
        backend: str, trained: dict, pictures: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """With no threshold: a re-encode and a crop of one picture are its duplicates; its recoloured twin shares its
    print (it verifies) but is a variant, never merged; unrelated pictures are neither."""
    from lookalike.cli.search import main_duplicates

    if backend == "milvus":
        pytest.importorskip("milvus_lite")
    shop = tmp_path / "shop"
    shutil.copytree(pictures, shop)
    encoded = cv2.imencode(".jpg", texture(1)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 40])[1].tobytes()
    (shop / "p1" / "again.jpg").write_bytes(encoded)  # re-encoded
    Image.fromarray(texture(1)[14:178, 12:180]).save(shop / "p1" / "crop.png")
    (shop / "p1twin").mkdir()
    Image.fromarray(recoloured(texture(1))).save(shop / "p1twin" / "a.png")
    out = tmp_path / ("c.lkidx" if backend == "faiss" else "c.db")
    build_catalogue(out, trained["embedder"], shop, backend, options=INLINE).close()
    capsys.readouterr()
    main_duplicates(["--index", str(out), "--backend", backend, "--json"])
    found = json.loads(capsys.readouterr().out)
    name = lambda item: f"{item['label']}/{Path(item['path']).name}"  # noqa: E731
    duplicates = [sorted(map(name, f["items"])) for f in found if f["kind"] == "duplicates"]
    variants = [sorted(map(name, f["items"])) for f in found if f["kind"] == "variants"]
    assert duplicates == [["p1/a.png", "p1/again.jpg", "p1/crop.png"]]
    assert ["p1/a.png", "p1twin/a.png"] in variants and all("p1twin/a.png" in v for v in variants)


@pytest.mark.parametrize("milvus", ["milvus", SERVER])
@pytest.mark.slow  # several seconds: in the slow suite (CI runs both)
def test_both_backends_vote_alike(milvus: str, trained: dict, pictures: Path, tmp_path: Path,
                                  request: pytest.FixtureRequest) -> None:
    answers = []
    for place in (_place("faiss", tmp_path, request), _place(milvus, tmp_path, request)):
        catalogue = place.build(trained["embedder"], pictures)
        [photo] = photo_features([photo_of(texture(3))], catalogue.meta["local"])
        by_label = {it["id"]: it["label"] for it in catalogue.listing()}
        answers.append([by_label[i] for i, _ in catalogue.vote_candidates(photo, 3)])
        assert [by_label[i] for i, _ in catalogue.vote_candidates(photo, 3, restriction('label != "p3"',
                                                                                        {"label"}))][0] != "p3"
        catalogue.close()
    assert answers[0][0] == answers[1][0] == "p3"


def test_local_features_of_a_build_are_resumed_from_its_progress_folder(pictures: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import lookalike.catalogue.local as local

    paths = sorted(str(p) for p in pictures.rglob("*.png"))
    partial = tmp_path / "c.lkidx.partial"
    codes = local.catalogue_codes(paths, FeatureOptions(), partial, workers=1)
    first = local.catalogue_features(paths, FeatureOptions(), codes, partial, workers=1)
    monkeypatch.setattr(local, "picture_features", lambda *a: pytest.fail("extracted again"))
    assert local.catalogue_codes(paths, FeatureOptions(), partial, workers=1).as_meta() == codes.as_meta()  # saved
    again = local.catalogue_features(paths, FeatureOptions(), codes, partial, workers=1)  # from the saved chunk
    assert [f.descriptors.tolist() for f in again] == [f.descriptors.tolist() for f in first]
    with pytest.raises(pytest.fail.Exception):  # other pictures: not taken from the chunk of these
        local.catalogue_features(paths[:3], FeatureOptions(), codes, partial, workers=1)


@pytest.mark.parametrize("backend", ["faiss", MILVUS_SLOW])
def test_recalibrate_keeps_a_new_threshold(backend: str, trained: dict, pictures: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    from lookalike.cli.index import main as index_main

    if backend == "milvus":
        pytest.importorskip("milvus_lite")
    out = tmp_path / ("c.lkidx" if backend == "faiss" else "c.db")
    build_catalogue(out, trained["embedder"], pictures, backend, options=INLINE).close()
    with editing(out, backend) as catalogue:
        catalogue.meta["local"]["threshold"] = 999  # as if calibrated on other pictures
        catalogue.save_meta()
    index_main(["recalibrate", "--index", str(out), "--backend", backend])  # in this process: Milvus Lite's one
    answer = capsys.readouterr().out
    catalogue = open_catalogue(out, backend)
    assert FLOOR <= catalogue.meta["local"]["threshold"] < 999
    assert f"{catalogue.meta['local']['threshold']} inliers verify a match" in answer
    catalogue.close()


def test_the_comparison_fits_the_photos_light_and_sees_only_the_changed_field() -> None:
    """A photo's light (exposure, contrast, a colour cast) is fitted away robustly, so the picture agrees with its
    photo better than a variant with one field replaced does; between pictures, that variant differs in about the
    field's cells only (a global normalisation would let the field move every cell), a recoloured twin in all, the
    picture from itself in none; and a candidate lacking inliers stands worse."""
    picture = texture(5)
    variant = picture.copy()
    variant[:64, :64] = texture(6)[:64, :64]  # the top left 3 x 3 of the 8 x 8 cells: another field
    lit = np.clip(picture.astype(np.float32) * 0.75 + [25, 15, 5], 0, 255).astype(np.uint8)
    bounds, same = Bounds(), np.eye(3)
    assert compare(picture, lit, same).disagreement(bounds) < compare(variant, lit, same).disagreement(bounds) - 0.2
    assert compare(picture, picture, same).changed(bounds) == 0.0
    assert 8 / 64 <= compare(variant, picture, same).changed(bounds) <= 12 / 64
    assert compare(recoloured(picture), picture, same).changed(bounds) > 0.9
    assert standing(1.0, 50, 100) > standing(1.0, 100, 100) == 1.0


def test_the_vote_index_grows_with_the_catalogue() -> None:
    """Inverted lists in proportion to the descriptors, through an HNSW graph from thousands of lists on; an index
    holding many times what it was trained for says it has outgrown it."""
    assert vote_factory(2_000) == "IVF2,SQ8" and vote_factory(400_000) == "IVF512,SQ8"
    assert vote_factory(40_000_000) == "IVF65536_HNSW32,SQ8" and vote_factory(4_000_000) == "IVF4096,SQ8"
    assert vote_factory(10 ** 9) == "IVF65536_HNSW32,SQ8"
    pictures = [extract(texture(seed)) for seed in range(6)]
    votes = DescriptorVotes.build(np.arange(6), pictures, DESCRIPTOR)
    assert votes.lists == 1 << int(np.log2(sum(map(len, pictures)) // 512)) and not votes.outgrown()
    for n in range(1, 4):
        votes.add(np.arange(6) + 10 * n, pictures)
    assert votes.outgrown()


@pytest.mark.slow  # a Milvus Lite database and three adds: several seconds
def test_a_milvus_add_cut_short_is_replaced_by_the_next_and_a_clean_add_looks_for_no_leftovers(
        trained: dict, pictures: Path, tmp_path: Path, monkeypatch) -> None:
    """Feature rows go in before their items' rows: an add killed in between leaves rows that the next add replaces
    (not doubles), and an add after clean ones does not scan the feature rows for leftovers (a delete by item)."""
    pytest.importorskip("milvus_lite")
    out, payload = tmp_path / "c.db", read_embedder_file(trained["embedder"])
    build_catalogue(out, trained["embedder"], pictures, "milvus", options=INLINE).close()
    for copy in ("again", "third"):
        shutil.copytree(pictures, tmp_path / copy)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed once the new items' feature rows were in, before their rows

    catalogue = open_catalogue(out, "milvus")
    before = catalogue.feature_rows()
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(catalogue.client, "upsert", killed)
        catalogue.add_images(payload, tmp_path / "again", num_workers=0)
    left = catalogue.feature_rows() - before
    assert left > 0 and catalogue.count() == 6
    catalogue.close()
    for copy in ("again", "third"):
        with editing(out, "milvus") as catalogue:
            deletes: list = []
            real = catalogue.client.delete
            monkeypatch.setattr(catalogue.client, "delete", lambda *a, **k: deletes.append(k) or real(*a, **k))
            catalogue.add_images(payload, tmp_path / copy, num_workers=0)
        assert bool(deletes) == (copy == "again")  # leftovers looked for only after the add that was cut short
    catalogue = open_catalogue(out, "milvus")
    assert catalogue.count() == 18 and catalogue.feature_rows() == before + 2 * left
    assert _verified_search(catalogue, embedder_from_payload(payload), photo_of(texture(2)))[0].verified
    catalogue.close()


def _vote_lists(catalogue) -> int:
    return catalogue.votes.lists if isinstance(catalogue, FileCatalogue) else catalogue.meta["vote_lists"]


@pytest.mark.parametrize("backend", ["faiss", MILVUS_SLOW])
def test_a_catalogue_that_outgrows_its_vote_index_trains_it_anew_from_its_features(
        backend: str, trained: dict, pictures: Path, tmp_path: Path) -> None:
    if backend == "milvus":
        pytest.importorskip("milvus_lite")
    out = tmp_path / ("c.lkidx" if backend == "faiss" else "c.db")
    build_catalogue(out, trained["embedder"], pictures, backend, options=INLINE).close()
    with editing(out, backend) as catalogue:
        lists = _vote_lists(catalogue)
    for n in range(3):  # copies of the pictures: four times the descriptors the lists were trained for
        shutil.copytree(pictures, tmp_path / f"again{n}")
        with editing(out, backend) as catalogue:
            catalogue.add_images(read_embedder_file(trained["embedder"]), tmp_path / f"again{n}", num_workers=0)
    catalogue = open_catalogue(out, backend)
    assert _vote_lists(catalogue) > lists
    if backend == "faiss":
        assert catalogue.votes.index.ntotal == len(catalogue.local.descriptors)
    embedder = embedder_from_payload(read_embedder_file(trained["embedder"]))
    first = _verified_search(catalogue, embedder, photo_of(texture(2)))[0]
    assert first.label == "p2" and first.verified
    catalogue.close()


def test_a_large_catalogue_jpeg_decoded_reduced_keeps_its_features(tmp_path: Path) -> None:
    """A catalogue picture is decoded at a reduced JPEG scale no smaller than the side features are found at: the
    same frame, and most keypoints where the full decode puts them."""
    from lookalike.catalogue.local import picture_features
    from lookalike.data.images import load_rgb

    path = tmp_path / "big.jpg"
    Image.fromarray(cv2.resize(texture(5), (1600, 1200), interpolation=cv2.INTER_CUBIC)).save(path, quality=92)
    reduced, full = picture_features(str(path), FeatureOptions()), extract(load_rgb(str(path)), FeatureOptions())
    assert reduced.size == full.size == (640, 480) and len(reduced) > 100
    nearest = np.linalg.norm(reduced.xy[:, None] - full.xy[None], axis=2).min(1)
    assert (nearest < 1.5).mean() > 0.7, (nearest < 1.5).mean()
