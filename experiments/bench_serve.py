"""Benchmark: search latency of `lookalike serve` over loopback, as a user of the page sees it
(upload, decode, embed, search, JSON), bounded in requests and time.

It builds a catalogue index of --images with --embedder, pads it with jittered copies of its own
embeddings to --items entries (search time depends on the count, not on where the vectors came from),
starts `lookalike serve` on a free loopback port, and times --requests uploads of the --images photos,
one at a time and then --concurrency at once. --screenshot also drives headless Chromium to the page,
uploads a photo and saves what it shows.

    python experiments/bench_serve.py --embedder runs/quickstart/latest/embedder.pt \
        --images ../shared/datasets/flowers17 --items 10000 --out experiments/results/serve.md
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import numpy as np

from common import machine, report


def padded_index(embedder: Path, images: Path, items: int, out: Path) -> Path:
    """An index of ``images`` padded to ``items`` entries with jittered copies of their embeddings."""
    from lookalike.catalogue.file import FileCatalogue

    index = FileCatalogue.build(embedder, images)
    vectors = index.vectors()
    rng = np.random.default_rng(0)
    extra = items - len(index.items)
    if extra > 0:
        source = rng.integers(0, len(vectors), extra)
        copies = vectors[source] + 0.05 * rng.standard_normal((extra, vectors.shape[1]), dtype=np.float32)
        copies /= np.linalg.norm(copies, axis=1, keepdims=True)
        ids = np.arange(len(index.items), items)
        index.faiss.add(copies, ids)
        index._set_items(index.items + [{**index.items[s], "id": int(i)} for s, i in zip(source, ids)])
        index.meta["next_id"] = items
    index.save(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_requests(url: str, photos: list[Path], count: int, concurrency: int, time_limit: float) -> list[float]:
    """Seconds of each of ``count`` searches (fewer if ``time_limit`` runs out), ``concurrency`` at a time."""
    import httpx

    deadline = time.perf_counter() + time_limit

    def one(i: int) -> float | None:
        if time.perf_counter() > deadline:
            return None
        data = photos[i % len(photos)].read_bytes()
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/api/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "10"},
                       timeout=60)
        r.raise_for_status()
        return time.perf_counter() - t0

    with ThreadPoolExecutor(concurrency) as pool:
        return [t for t in pool.map(one, range(count)) if t is not None]


def screenshot(url: str, photo: Path, out: Path) -> None:
    """Upload ``photo`` on the page in headless Chromium and save a screenshot of the results."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--window-size=1200,820"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        browser.get(url)
        browser.find_element(By.ID, "file").send_keys(str(photo.resolve()))
        WebDriverWait(browser, 60).until(lambda b: b.execute_script(
            "const i = [...document.querySelectorAll('#results img')];"
            "return i.length > 0 && i.every(x => x.complete && x.naturalWidth > 0)"))
        browser.save_screenshot(str(out))
    finally:
        browser.quit()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embedder", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True, help="catalogue pictures, also used as query photos")
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--time-limit", type=float, default=120, help="seconds per phase at most")
    p.add_argument("--screenshot", type=Path, help="save a screenshot of the page with results here")
    p.add_argument("--out", help="append a Markdown section with the results to this file")
    a = p.parse_args()
    photos = sorted(a.images.rglob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        index = padded_index(a.embedder, a.images, a.items, Path(tmp) / "catalog.lkidx")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", "--index", str(index),
                                   "--port", str(port)])
        try:
            import httpx

            t0 = time.perf_counter()
            while True:
                try:
                    httpx.get(f"{url}/api/items/0", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if server.poll() is not None or time.perf_counter() - t0 > 120:
                        raise SystemExit("the server did not start")
                    time.sleep(0.2)
            startup = time.perf_counter() - t0
            timed_requests(url, photos, 10, 1, a.time_limit)  # warm-up
            phases = {1: timed_requests(url, photos, a.requests, 1, a.time_limit)}
            if a.concurrency > 1:
                t0 = time.perf_counter()
                phases[a.concurrency] = timed_requests(url, photos, a.requests, a.concurrency, a.time_limit)
                wall = time.perf_counter() - t0
            if a.screenshot:
                screenshot(url + "/", photos[len(photos) // 2], a.screenshot)
        finally:
            server.terminate()
            server.wait(timeout=30)
    lines = [f"\n## {date.today()}: {a.items:,} items, loopback\n", f"Machine: {machine()}  ",
             f"Command: `python experiments/bench_serve.py {' '.join(sys.argv[1:])}`  ",
             f"Server start (load embedder and index) to first answer: {startup:.1f} s\n",
             "| concurrent requests | requests | p50 (ms) | p99 (ms) | mean (ms) | searches/s |",
             "|---:|---:|---:|---:|---:|---:|"]
    for c, times in phases.items():
        ms = np.array(times) * 1e3
        rate = len(times) / (wall if c > 1 else ms.sum() / 1e3)
        lines.append(f"| {c} | {len(times)} | {np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f} | "
                     f"{ms.mean():.1f} | {rate:.1f} |")
    report(lines, a.out)


if __name__ == "__main__":
    main()
