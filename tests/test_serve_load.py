"""A bounded load test of `lookalike serve` in a real server process: normal searches mixed with hostile uploads
(oversized, chunked, elongated, pixel bombs, non-images, EPS) from several threads. No 5xx, every answer right
for its input, and the server's memory stays bounded.

With LOOKALIKE_LOAD_REPORT=FILE it appends its figures to FILE as a Markdown section (experiments/results/serve.md
quotes such a run)."""

from __future__ import annotations

import io
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from lookalike.inference.catalog import Index
from lookalike.inference.embedder_file import load_embedder
from tests.helpers import free_port

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

THREADS, ROUNDS, SLOTS, UPLOAD_MB = 6, 30, 8, 1.0
RSS_GROWTH_BOUND_MB = 400  # the upload budget (SLOTS x UPLOAD_MB) plus room for the allocator


def _png(width: int, height: int, noise: bool = False) -> bytes:
    out = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8) if noise else None
    (Image.fromarray(pixels) if noise else Image.new("L", (width, height), 120)).save(out, "PNG")
    return out.getvalue()


def _rss_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def _cpu() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.machine())


def _chunked(total: int) -> Iterator[bytes]:
    for _ in range(total // 65_536):
        yield b"0" * 65_536


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's memory from /proc")
def test_mixed_normal_and_hostile_load_gets_right_answers_in_bounded_memory(trained: dict, catalogue,
                                                                          tmp_path: Path) -> None:
    manifest, photos, _ = catalogue
    index_path = tmp_path / "c.lkidx"
    index = Index.build(trained["embedder"], manifest, num_workers=0)
    index.save(index_path)
    expected = {p: hits[0].id for p, hits in zip(photos, index.search(load_embedder(trained["embedder"]), photos, 3))}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", "--index", str(index_path), "--port",
                               str(port), "--slots", str(SLOTS), "--max-upload-mb", str(UPLOAD_MB)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        client = httpx.Client(base_url=url, timeout=60)
        deadline = time.time() + 120
        while True:
            try:
                if client.get("/api/items/0").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline and server.poll() is None, "the server did not start"
            time.sleep(0.3)

        def search(data: bytes | Iterator[bytes], name: str = "p.jpg", **kw) -> httpx.Response:
            if isinstance(data, bytes):
                return client.post("/api/search", files={"image": (name, data)}, data={"k": "3"}, **kw)
            return client.post("/api/search", content=data,
                               headers={"content-type": "multipart/form-data; boundary=x"}, **kw)

        def normal(photo: str) -> Callable[[], tuple[str, int, bool]]:
            def go() -> tuple[str, int, bool]:
                r = search(Path(photo).read_bytes())
                return "normal", r.status_code, r.status_code == 200 and r.json()["results"][0]["id"] == expected[photo]
            return go

        big, thin, bomb = _png(700, 700, noise=True), _png(1, 100_000), _png(13_000, 13_000)  # big: 1.4 MB
        eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n"
        hostile = {  # name: (request, the answer it must get)
            "oversized": (lambda: search(big, "big.png"), 413),
            "chunked oversized": (lambda: search(_chunked(4 << 20)), 413),
            "elongated 1 x 100,000": (lambda: search(thin, "thin.png"), 415),
            "pixel bomb 13,000 x 13,000": (lambda: search(bomb, "bomb.png"), 415),
            "not an image": (lambda: search(b"\x00" * 5000, "x.jpg"), 415),
            "EPS (Ghostscript)": (lambda: search(eps, "x.eps"), 415),
            "other Host name": (lambda: client.get("/api/items/0", headers={"host": "attacker.example"}), 400),
        }

        def attack(name: str) -> tuple[str, int, bool]:
            send, want = hostile[name]
            status = send().status_code
            return name, status, status == want
        for photo in photos[:3]:  # warm-up: the memory baseline is that of a server that has searched
            normal(photo)()
        baseline = _rss_mb(server.pid, "VmRSS:")
        jobs = [normal(photos[i % len(photos)]) for i in range(ROUNDS * len(hostile))]
        jobs += [(lambda name=name: attack(name)) for _ in range(ROUNDS) for name in hostile]
        order = np.random.default_rng(0).permutation(len(jobs))
        started = time.time()
        with ThreadPoolExecutor(THREADS) as pool:
            answers = list(pool.map(lambda i: jobs[i](), order))
        seconds = time.time() - started
        peak = _rss_mb(server.pid, "VmHWM:")
        assert server.poll() is None, "the server died"
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    wrong = [(name, status) for name, status, ok in answers if not ok]
    errors = sum(status >= 500 for _, status, _ in answers)
    assert "Traceback" not in log and " 500 " not in log, log[-3000:]
    assert not wrong and errors == 0, f"wrong answers: {wrong}"
    growth = peak - baseline
    assert growth < RSS_GROWTH_BOUND_MB, f"server memory grew by {growth:.0f} MB"
    report = os.environ.get("LOOKALIKE_LOAD_REPORT")
    if report:
        kinds = "; ".join(f"{name} x {ROUNDS}" for name in hostile)
        with open(report, "a") as f:
            f.write(f"\n## {date.today()}: mixed normal and hostile load (tests/test_serve_load.py)\n\n"
                    f"Machine: {_cpu()}, {os.cpu_count()} cores; Python "
                    f"{platform.python_version()}  \nCommand: `LOOKALIKE_LOAD_REPORT=experiments/results/serve.md "
                    f"pytest -m slow tests/test_serve_load.py`  \n"
                    f"Server: `lookalike serve --slots {SLOTS} --max-upload-mb {UPLOAD_MB:g}` on the tests' tiny "
                    f"embedder and a 5-item catalogue; {THREADS} client threads.\n\n"
                    f"| requests | normal searches | hostile inputs | wrong answers | 5xx | seconds | server RSS "
                    f"after warm-up (MB) | server peak RSS (MB) | growth (MB) |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
                    f"---:|\n| {len(answers)} | {ROUNDS * len(hostile)} | {ROUNDS * len(hostile)} | {len(wrong)} | {errors} | "
                    f"{seconds:.1f} | {baseline:.0f} | {peak:.0f} | {growth:.0f} |\n\nHostile inputs: {kinds}.\n")
