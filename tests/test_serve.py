"""The search page and its API: answers like FileCatalogue.search, refuses bad uploads, serves items by id only,
and works in a real (headless Chromium) browser."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from lookalike.catalogue.file import FileCatalogue
from lookalike.embedder.file import load_embedder
from lookalike.catalogue.query import SearchOptions, search_catalogue
from tests.helpers import INLINE

pytest.importorskip("fastapi")


@pytest.fixture
def served(trained: dict, catalogue, tmp_path: Path) -> tuple[Path, list[str]]:  # noqa: F811
    """A small catalogue index and the photos to search it with."""
    FileCatalogue.build(trained["embedder"], catalogue[0], INLINE).save(tmp_path / "c.lkidx")
    return tmp_path / "c.lkidx", catalogue[1]


@pytest.fixture
def client(served):
    from fastapi.testclient import TestClient

    from lookalike.serve.app import create_app

    from lookalike.serve.page import PageOptions

    return TestClient(create_app(served[0], PageOptions(max_upload_mb=0.5)))


def test_search_api_answers_like_the_index(client, served, trained: dict) -> None:
    path, photos = served
    expected = FileCatalogue.load(path).search(load_embedder(trained["embedder"]), [photos[0]], k=3)[0]
    with open(photos[0], "rb") as f:
        found = client.post("/api/search", files={"image": ("p.jpg", f, "image/jpeg")}, data={"k": "3"})
    assert found.status_code == 200, found.text
    results = found.json()["results"]
    assert [r["id"] for r in results] == [h.id for h in expected]
    assert [r["score"] for r in results] == pytest.approx([h.score for h in expected], abs=1e-5)
    item = client.get(f"/api/items/{results[0]['id']}").json()
    assert item["label"] == expected[0].label and "path" not in item
    picture = client.get(results[0]["image"])
    thumbnail = Image.open(io.BytesIO(picture.content))
    source = Image.open(expected[0].path)  # the catalogue picture, at most 256 px on its longest side
    scale = min(1.0, 256 / max(source.size))
    assert picture.headers["content-type"] == "image/jpeg" and thumbnail.format == "JPEG"
    assert thumbnail.size == (round(source.width * scale), round(source.height * scale))
    similar = client.get(f"/api/items/{results[0]['id']}/similar", params={"k": 2}).json()["results"]
    assert similar[0]["id"] == results[0]["id"] and similar[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert "/api/search" in client.get("/openapi.json").json()["paths"]
    assert "Drop a photo here" in client.get("/").text


def test_search_api_fuses_several_photos_groups_and_classifies(client, served, trained: dict) -> None:
    path, photos = served
    index = FileCatalogue.load(path)
    vectors = load_embedder(trained["embedder"]).embed(photos[:2]).numpy()
    expected = search_catalogue(index, vectors, SearchOptions(k=3, fuse="max", group_by="label", category="auto"))[0]
    files = [("image", (f"p{i}.jpg", Path(p).read_bytes(), "image/jpeg")) for i, p in enumerate(photos[:2])]
    found = client.post("/api/search", files=files, data={"k": "3", "fuse": "max", "group_by": "label",
                                                          "category": "auto"})
    assert found.status_code == 200, found.text
    body = found.json()
    assert [r["id"] for r in body["results"]] == [h.id for h in expected.hits]
    assert body["category"] == expected.category and body["results"][0]["group"] == expected.hits[0].group
    with_qe = search_catalogue(index, vectors[:1], SearchOptions(k=3, fuse="max", qe=2))[0]
    expanded = client.post("/api/search", files=files[:1], data={"k": "3", "qe": "2"}).json()["results"]
    assert [r["score"] for r in expanded] == pytest.approx([h.score for h in with_qe.hits], abs=1e-5)
    plain = search_catalogue(index, vectors[:1], SearchOptions(k=3))[0]
    assert [h.score for h in plain.hits] != pytest.approx([h.score for h in with_qe.hits], abs=1e-5)
    assert client.post("/api/search", files=files[:1], data={"qe": "-1"}).status_code == 422
    label = body["results"][-1]["label"]
    kept = client.post("/api/search", files=files[:1], data={"filter": f'label == "{label}"'}).json()["results"]
    assert kept and {r["label"] for r in kept} == {label}
    bad = client.post("/api/search", files=files[:1], data={"filter": "__import__('os')"})
    assert bad.status_code == 422 and "filter" in bad.json()["detail"]
    unknown = client.post("/api/search", files=files[:1], data={"group_by": "brand"})
    assert unknown.status_code == 422 and "no column 'brand'" in unknown.json()["detail"]
    assert client.post("/api/search", files=files * 5).status_code == 422  # more photos than one item needs


def test_search_with_a_crop_of_the_photo(client, served, trained: dict) -> None:
    from lookalike.data.images import load_rgb

    path, photos = served
    whole = load_rgb(photos[0])
    h, w = whole.shape[:2]
    box = (w // 4, h // 4, w // 2, h // 2)
    expected = FileCatalogue.load(path).search(load_embedder(trained["embedder"]), [whole[h // 4:h // 4 + h // 2,
                                                                                   w // 4:w // 4 + w // 2]], k=3)[0]
    files = [("image", ("p.jpg", Path(photos[0]).read_bytes(), "image/jpeg"))]
    found = client.post("/api/search", files=files, data={"k": "3", "crop": ",".join(map(str, box))})
    assert found.status_code == 200, found.text
    assert [r["score"] for r in found.json()["results"]] == pytest.approx([h.score for h in expected], abs=1e-5)
    for bad, message in ((f"{w},0,10,10", "outside"), ("0,0,0,5", "above 0"), ("1,2,3", "x,y,width,height")):
        refused = client.post("/api/search", files=files, data={"crop": bad})
        assert refused.status_code == 422 and message in refused.json()["detail"], refused.text
    assert client.post("/api/search", files=files, data={"crop": ["", ""]}).status_code == 422  # 2 crops, 1 photo


def test_marks_on_results_go_beside_the_index_never_into_it(served, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from lookalike.data.feedback import read_feedback
    from lookalike.serve.app import create_app
    from lookalike.serve.page import PageOptions

    path, photos = served
    before = path.read_bytes()
    client = TestClient(create_app(path, PageOptions(feedback=tmp_path / "c.feedback")))
    found = client.post("/api/search", files={"image": ("p.jpg", Path(photos[0]).read_bytes(), "image/jpeg")})
    first, second = found.json()["results"][:2]
    files = [("image", (f"p{i}.jpg", Path(p).read_bytes(), "image/jpeg")) for i, p in enumerate(photos[:2])]
    same = client.post("/api/feedback", files=files, data={"item": first["id"], "verdict": "same"})
    assert same.status_code == 200 and same.json() == {"recorded": 2, "item": first["id"], "verdict": "same"}
    client.post("/api/feedback", files=files[:1], data={"item": second["id"], "verdict": "different"})
    marks = read_feedback(tmp_path / "c.feedback" / "feedback.csv")
    assert [(m.verdict, m.label) for m in marks] == [("same", first["label"])] * 2 + [("different", second["label"])]
    assert marks[0].photo == marks[2].photo and path.read_bytes() == before
    assert client.post("/api/feedback", files=files, data={"item": 10**6, "verdict": "same"}).status_code == 404
    assert client.post("/api/feedback", files=files, data={"item": first["id"], "verdict": "?"}).status_code == 422
    off = TestClient(create_app(path)).post("/api/feedback", files=files, data={"item": 1, "verdict": "same"})
    assert off.status_code == 404 and "no feedback" in off.json()["detail"]
    assert "const FEEDBACK = true" in client.get("/").text


def test_bad_requests_get_clear_4xx_answers(client) -> None:
    text = client.post("/api/search", files={"image": ("notes.txt", b"not an image", "text/plain")})
    assert text.status_code == 415 and "Not an image" in text.json()["detail"]
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8)).save(big, "PNG")
    too_big = client.post("/api/search", files={"image": ("big.png", big.getvalue(), "image/png")})
    assert too_big.status_code == 413 and "larger than 0.5 MB" in too_big.json()["detail"]
    assert client.get("/api/items/999").status_code == 404
    assert client.get("/api/items/..%2F..%2Fetc%2Fpasswd/image").status_code in (404, 422)
    small = io.BytesIO()
    Image.new("RGB", (8, 8)).save(small, "PNG")
    assert client.post("/api/search", files={"image": ("s.png", small.getvalue())}, data={"k": "0"}).status_code == 422


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    """Headless Debian Chromium through its chromedriver, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no Chromium/chromedriver installed (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,900"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(options=options, service=Service(driver))


@contextmanager
def page_in_browser(app) -> Iterator[tuple[Any, str]]:
    """``app`` served by uvicorn on a free loopback port, and a headless browser: (browser, the page's address);
    both stopped after."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    browser = _browser()
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.1)
        yield browser, f"http://127.0.0.1:{port}/"
    finally:
        browser.quit()
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.slow
def test_page_in_a_real_browser(served, trained: dict, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from lookalike.serve.app import create_app

    from lookalike.serve.page import PageOptions

    path, photos = served
    expected = FileCatalogue.load(path).search(load_embedder(trained["embedder"]), [photos[0]], k=10)[0]
    with page_in_browser(create_app(path, PageOptions(feedback=tmp_path / "c.feedback"))) as (browser, address):
        browser.get(address)
        browser.find_element(By.ID, "file").send_keys(str(Path(photos[0]).resolve()))
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .result")) == len(expected))
        cards = browser.find_elements(By.CSS_SELECTOR, "#results .result")
        assert cards[0].get_attribute("data-id") == str(expected[0].id)
        assert cards[0].find_element(By.CLASS_NAME, "label").text == expected[0].label
        assert f"{expected[0].score:.3f}" == cards[0].find_element(By.CLASS_NAME, "score").text
        wait.until(lambda b: b.execute_script(
            "return [...document.images].filter(i => i.closest('.result')).every(i => i.complete && i.naturalWidth > 0)"))
        shot = tmp_path / "serve.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("LOOKALIKE_TEST_ARTIFACTS"):
            Path(os.environ["LOOKALIKE_TEST_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, Path(os.environ["LOOKALIKE_TEST_ARTIFACTS"]) / "serve.png")
        assert Image.open(shot).size == tuple(browser.execute_script("return [window.innerWidth, window.innerHeight]")) \
            or Image.open(shot).size[0] >= 800  # the screenshot is of the window
        cards[0].find_element(By.CSS_SELECTOR, "button[data-verdict=same]").click()  # a mark, not a new search
        wait.until(lambda b: "Thank you" in b.find_element(By.ID, "status").text)
        marked = (tmp_path / "c.feedback" / "feedback.csv").read_text().splitlines()
        assert len(marked) == 2 and f",same,{expected[0].id}," in marked[1]
        from selenium.webdriver.common.action_chains import ActionChains

        query = browser.find_element(By.ID, "query")  # draw a box on the photo: the search is redone with it
        ActionChains(browser).move_to_element_with_offset(query, -query.size["width"] // 4, -query.size["height"] // 4
                                                          ).click_and_hold().move_by_offset(
            query.size["width"] // 2, query.size["height"] // 2).release().perform()
        wait.until(lambda b: "(cropped)" in b.find_element(By.ID, "status").text)
        box = [int(v) for v in query.get_attribute("data-crop").split(",")]
        from lookalike.data.images import cut, load_rgb

        cropped = FileCatalogue.load(path).search(load_embedder(trained["embedder"]), [cut(load_rgb(photos[0]), box)], k=10)[0]
        first = "const c = document.querySelector('#results .result'); return c && c.dataset.id"
        assert browser.execute_script(first) == str(cropped[0].id)
        cards = browser.find_elements(By.CSS_SELECTOR, "#results .result")
        clicked = cards[1].get_attribute("data-id")  # read before the click: the click replaces the cards
        cards[1].click()  # more like this: the clicked item becomes the query and comes first
        wait.until(lambda b: b.execute_script(first) == clicked)  # one atomic read, no stale elements


DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "assets" / "search_page.png"


@pytest.mark.slow
def test_a_flat_folder_catalogue_on_the_page_and_the_docs_screenshot(trained: dict, tmp_path: Path) -> None:
    """A catalogue of a flat folder (no labels) shows k results with one result per product ticked; the page of a
    search with a verified result and its outline, a filter and a mark is the screenshot the docs show."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from lookalike.catalogue.backends import build_catalogue
    from lookalike.serve.app import create_app
    from lookalike.serve.page import PageOptions
    from tests.test_verification import photo_of, texture

    flat = tmp_path / "pictures"
    flat.mkdir()
    for seed in range(12):
        Image.fromarray(texture(seed)).save(flat / f"{seed:03d}.png")
    Image.fromarray(photo_of(texture(4), background_seed=60)).save(tmp_path / "photo.png")
    build_catalogue(tmp_path / "flat.lkidx", trained["embedder"], flat, options=INLINE)
    (tmp_path / "shop.csv").write_text("path,label,shelf\n" + "".join(
        f"{flat / f'{seed:03d}.png'},,{'AB'[seed % 2]}\n" for seed in range(12)))
    build_catalogue(tmp_path / "shop.lkidx", trained["embedder"], tmp_path / "shop.csv", options=INLINE)
    cards = "#results .result"
    with page_in_browser(create_app(tmp_path / "flat.lkidx")) as (browser, address):
        browser.get(address)
        assert browser.find_element(By.ID, "group").is_selected()  # one result per product, by default
        browser.find_element(By.ID, "file").send_keys(str(tmp_path / "photo.png"))
        WebDriverWait(browser, 60).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, cards)) == 10)
    with page_in_browser(create_app(tmp_path / "shop.lkidx", PageOptions(feedback=tmp_path / "fb"))) as (
            browser, address):
        browser.get(address)
        from selenium.webdriver.common.keys import Keys

        # the filter first, left with Tab: its change event comes now (no photo yet: no search), not after the
        # results are shown (it would search again and replace the cards under the click)
        browser.find_element(By.ID, "filter").send_keys('shelf == "A"' + Keys.TAB)
        browser.find_element(By.ID, "file").send_keys(str(tmp_path / "photo.png"))
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, cards)) == 6)  # the six on shelf A
        first = browser.find_elements(By.CSS_SELECTOR, cards)[0]
        assert "verified" in first.get_attribute("class") and first.get_attribute("data-id") == "4"
        first.find_element(By.CSS_SELECTOR, "button[data-verdict=same]").click()
        wait.until(lambda b: "Thank you" in b.find_element(By.ID, "status").text)
        wait.until(lambda b: b.execute_script(
            "return [...document.images].filter(i => i.closest('.result')).every(i => i.complete && i.naturalWidth > 0)"))
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(DOCS_SCREENSHOT))
    assert Image.open(DOCS_SCREENSHOT).size[0] >= 800
