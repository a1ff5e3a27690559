"""A bounded load test of `lookalike serve` in a real server process: normal and filtered searches and feedback
marks mixed with hostile requests (oversized, chunked, elongated, pixel bombs, non-images, EPS, other hosts,
cross-site marks, uploads that stall after their headers, large PNGs within the budget) from several threads,
while six clients send eight-photo searches at verify=100 and another one-photo verified searches, each client
from its own loopback address. No 5xx, every answer right for its input (a filtered search: the unfiltered answer
filtered by hand), the one-photo client never refused and answered within 2 s (p95), the costly ones answered or
told when to retry, every mark kept whole, slots freed, and the server's memory bounded while it works and back
near its start after.

With LOOKALIKE_LOAD_REPORT=FILE it appends its figures to FILE as a Markdown section (experiments/results/serve.md
quotes such a run)."""

from __future__ import annotations

import io
import os
import json
import platform
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from lookalike.data.feedback import read_feedback
from lookalike.catalogue.file import FileCatalogue
from lookalike.embedder.file import load_embedder
from tests.helpers import INLINE, free_port

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

THREADS, ROUNDS, SLOTS, UPLOAD_MB = 6, 30, 8, 1.0
COSTLY = 6  # clients sending eight photos at verify=100, from 127.0.0.2-7; the one-photo client is 127.0.0.8
HOSTILE = "127.0.0.9"  # where the hostile requests come from
LARGE, STALLED = 4, 4  # large PNGs (6,300 x 6,300 RGBA: 40 million pixels, the decoding budget) and stalled uploads
# The upload budget (SLOTS x UPLOAD_MB) and one decode of the largest image allowed (its RGBA, alpha and RGB copies:
# decodes take turns within the pixel budget), plus room for the allocator.
RSS_GROWTH_BOUND_MB = 1000
RSS_KEPT_BOUND_MB = 300  # what the server may keep once the load is over


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


def _timed(job: Callable[[], tuple[str, int, bool]]) -> tuple[str, int, bool, float]:
    started = time.time()
    return *job(), time.time() - started


def _chunked(total: int) -> Iterator[bytes]:
    for _ in range(total // 65_536):
        yield b"0" * 65_536


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's memory from /proc")
def test_mixed_normal_and_hostile_load_gets_right_answers_in_bounded_memory(trained: dict, catalogue,
                                                                          tmp_path: Path) -> None:
    manifest, photos, _ = catalogue
    index_path = tmp_path / "c.lkidx"
    index = FileCatalogue.build(trained["embedder"], manifest, INLINE)
    index.save(index_path)
    ranked = dict(zip(photos, index.search(load_embedder(trained["embedder"]), photos, len(index.items))))
    expected = {p: hits[0].id for p, hits in ranked.items()}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", "--index", str(index_path), "--port",
                               str(port), "--slots", str(SLOTS), "--max-upload-mb", str(UPLOAD_MB)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        client = httpx.Client(base_url=url, timeout=60)
        attacker = httpx.Client(base_url=url, timeout=60, transport=httpx.HTTPTransport(local_address=HOSTILE))
        deadline = time.time() + 120
        while True:
            try:
                if client.get("/api/items/0").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline and server.poll() is None, "the server did not start"
            time.sleep(0.3)

        def search(body: bytes | Iterator[bytes], name: str = "p.jpg", form: dict | None = None,
                   by: httpx.Client = client) -> httpx.Response:
            if isinstance(body, bytes):
                return by.post("/api/search", files={"image": (name, body)}, data={"k": "3", **(form or {})})
            return by.post("/api/search", content=body, headers={"content-type": "multipart/form-data; boundary=x"})

        def normal(photo: str) -> Callable[[], tuple[str, int, bool]]:
            def go() -> tuple[str, int, bool]:
                r = search(Path(photo).read_bytes())
                return "normal", r.status_code, r.status_code == 200 and r.json()["results"][0]["id"] == expected[photo]
            return go

        def filtered(photo: str, round_: int) -> Callable[[], tuple[str, int, bool]]:
            """A filtered search, checked against the whole ranking filtered by hand."""
            hits = ranked[photo]
            labels = sorted({h.label for h in hits})
            if round_ % 2:
                text, keep = f"label != {json.dumps(hits[0].label)}", (lambda h: h.label != hits[0].label)
            else:
                chosen = labels[round_ % len(labels)], labels[(round_ + 1) % len(labels)]
                text, keep = f"label in {json.dumps(list(chosen))}", (lambda h: h.label in chosen)

            def go() -> tuple[str, int, bool]:
                r = search(Path(photo).read_bytes(), form={"filter": text})
                want = [h.id for h in hits if keep(h)][:3]
                return "filtered", r.status_code, r.status_code == 200 and [x["id"] for x in r.json()["results"]] == want
            return go

        def mark(photo: str) -> Callable[[], tuple[str, int, bool]]:
            def go() -> tuple[str, int, bool]:
                r = client.post("/api/feedback", files={"image": ("p.jpg", Path(photo).read_bytes())},
                                data={"item": str(expected[photo]), "verdict": "same"})
                return "mark", r.status_code, r.status_code == 200 and r.json()["recorded"] == 1
            return go

        def stalled() -> int:
            """An upload that sends its headers and then nothing: dropped (408) once the body's idle time is up."""
            with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(HOSTILE, 0)) as sock:
                sock.sendall(f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/"
                             "form-data; boundary=x\r\nContent-Length: 50000\r\n\r\n".encode())
                status = sock.recv(100).split(b" ", 2)
                return int(status[1]) if len(status) > 1 else 0

        big, thin, bomb = _png(700, 700, noise=True), _png(1, 100_000), _png(13_000, 13_000)  # big: 1.4 MB
        large = io.BytesIO()
        Image.new("RGBA", (6300, 6300), (10, 200, 30, 128)).save(large, "PNG")  # 170 KB, 40 million pixels
        eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n"
        cross_site = {"origin": "http://attacker.example", "sec-fetch-site": "cross-site"}
        a = attacker
        hostile = {  # name: (request, the answer it must get, how many)
            "oversized": (lambda: search(big, "big.png", by=a), 413, ROUNDS),
            "chunked oversized": (lambda: search(_chunked(4 << 20), by=a), 413, ROUNDS),
            "elongated 1 x 100,000": (lambda: search(thin, "thin.png", by=a), 415, ROUNDS),
            "pixel bomb 13,000 x 13,000": (lambda: search(bomb, "bomb.png", by=a), 415, ROUNDS),
            "not an image": (lambda: search(b"\x00" * 5000, "x.jpg", by=a), 415, ROUNDS),
            "EPS (Ghostscript)": (lambda: search(eps, "x.eps", by=a), 415, ROUNDS),
            "other Host name": (lambda: a.get("/api/items/0", headers={"host": "attacker.example"}), 400, ROUNDS),
            "cross-site mark": (lambda: a.post("/api/feedback", files={"image": ("p.jpg", b"x")}, data={
                "item": "0", "verdict": "same"}, headers=cross_site), 403, ROUNDS),
            "stalled upload": (stalled, 408, STALLED),
            "large PNG 6,300 x 6,300 RGBA": (lambda: search(large.getvalue(), "large.png", by=a), 200, LARGE),
        }

        def attack(name: str) -> tuple[str, int, bool]:
            """One hostile request: its answer, or, for those refused only once decoded (inside a turn), 503 with
            Retry-After when the client already has its share waiting (the attacker sends many at once)."""
            send, want, _ = hostile[name]
            answer = send()
            status = answer if isinstance(answer, int) else answer.status_code
            turned_away = status == 503 and want in (415, 200) and "retry-after" in answer.headers
            return name, status, status == want or turned_away
        for photo in photos[:3]:  # warm-up: the memory baseline is that of a server that has searched
            normal(photo)()
        baseline = _rss_mb(server.pid, "VmRSS:")
        normal_jobs = [normal(photos[i % len(photos)]) for i in range(ROUNDS * 6)]
        filtered_jobs = [filtered(photos[i % len(photos)], i) for i in range(ROUNDS * 2)]
        mark_jobs = [mark(photos[i % len(photos)]) for i in range(ROUNDS)]
        jobs = normal_jobs + filtered_jobs + mark_jobs
        jobs += [(lambda name=name: attack(name)) for name, (_, _, count) in hostile.items() for _ in range(count)]
        order = np.random.default_rng(0).permutation(len(jobs))
        started, done = time.time(), threading.Event()
        timed: dict[str, list[tuple[int, float, bool, str | None]]] = {"one photo": [], "eight photos": []}

        def keep_sending(kind: str, source: str, count: int, form: dict) -> None:
            """Searches with ``count`` copies of a photo from ``source``, one after another, until the load is over."""
            by = httpx.Client(base_url=url, timeout=60, transport=httpx.HTTPTransport(local_address=source))
            i = 0
            while not done.is_set():
                photo, i = photos[i % len(photos)], i + 1
                t0 = time.time()
                r = by.post("/api/search", files=[("image", ("p.jpg", Path(photo).read_bytes()))] * count,
                            data={"k": "3", **form})
                right = r.status_code != 200 or r.json()["results"][0]["id"] == expected[photo]
                timed[kind].append((r.status_code, time.time() - t0, right, r.headers.get("retry-after")))
                if r.status_code == 503:
                    time.sleep(min(2.0, float(r.headers.get("retry-after", "1"))))

        senders = [threading.Thread(target=keep_sending, args=("eight photos", f"127.0.0.{2 + n}", 8,
                                                               {"verify": "100"})) for n in range(COSTLY)]
        senders.append(threading.Thread(target=keep_sending, args=("one photo", "127.0.0.8", 1, {})))
        for sender in senders:
            sender.start()
        with ThreadPoolExecutor(THREADS) as pool:
            answers = list(pool.map(lambda i: _timed(jobs[i]), order))
        done.set()
        for sender in senders:
            sender.join(120)
        seconds = time.time() - started
        peak = _rss_mb(server.pid, "VmHWM:")
        after = normal(photos[0])()  # the slots are free again: a search right after the load is answered
        kept = _rss_mb(server.pid, "VmRSS:")
        assert server.poll() is None, "the server died"
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    wrong = [(name, status) for name, status, ok, _ in answers if not ok]
    wrong += [(kind, status) for kind, rows in timed.items() for status, _, ok, _ in rows if not ok]
    errors = sum(status >= 500 and not (status == 503 and ok) for _, status, ok, _ in answers)
    errors += sum(status >= 500 and status != 503 for rows in timed.values() for status, *_ in rows)
    one, eight = timed["one photo"], timed["eight photos"]
    p95 = float(np.percentile([s for _, s, _, _ in one], 95))
    assert one and all(status == 200 for status, *_ in one) and p95 < 2.0, one
    assert eight and all(status == 200 or status == 503 and retry for status, _, _, retry in eight), eight
    assert "Traceback" not in log and " 500 " not in log, log[-3000:]
    assert not wrong and errors == 0 and after[2], f"wrong answers: {wrong}"
    marks = read_feedback(tmp_path / "c.feedback" / "feedback.csv")
    assert len(marks) == len(mark_jobs) and {m.verdict for m in marks} == {"same"}  # whole marks, none cross-site
    growth = peak - baseline
    assert growth < RSS_GROWTH_BOUND_MB, f"server memory grew by {growth:.0f} MB"
    assert kept - baseline < RSS_KEPT_BOUND_MB, f"the server kept {kept - baseline:.0f} MB after the load"
    report = os.environ.get("LOOKALIKE_LOAD_REPORT")
    if report:
        kinds = "; ".join(f"{name} x {count}" for name, (_, _, count) in hostile.items())

        def row(kind: str, rows: list) -> str:
            times = [s for status, s, *_ in rows if status == 200] or [float("nan")]
            return (f"| {kind} | {len(rows)} | {sum(r[0] == 200 for r in rows)} | {sum(r[0] == 503 for r in rows)} | "
                    f"{sum(not r[2] for r in rows)} | {np.median(times):.2f} | {np.percentile(times, 95):.2f} |")

        mixed = {"normal": normal_jobs, "filtered": filtered_jobs, "mark": mark_jobs}
        per_kind = [row(kind, [(status, took, ok) for name, status, ok, took in answers if name == kind])
                    for kind in mixed] + [row(f"{kind} (own client)", rows) for kind, rows in timed.items()]
        with open(report, "a") as f:
            f.write(f"\n## {date.today()}: mixed normal, filtered and hostile load with marks "
                    f"(tests/test_serve_load.py)\n\n"
                    f"Machine: {_cpu()}, {os.cpu_count()} cores; Python "
                    f"{platform.python_version()}  \nCommand: `LOOKALIKE_LOAD_REPORT=experiments/results/serve.md "
                    f"pytest -m slow tests/test_serve_load.py`  \n"
                    f"Server: `lookalike serve --slots {SLOTS} --max-upload-mb {UPLOAD_MB:g}` on the tests' tiny "
                    f"embedder and a 5-item catalogue; {THREADS} client threads.\n\n"
                    f"| requests | normal searches | filtered searches | marks | hostile | wrong answers | 5xx | "
                    f"seconds | server RSS after warm-up (MB) | peak RSS (MB) | growth (MB) | RSS after the load (MB) |"
                    f"\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
                    f"| {len(answers)} | {len(normal_jobs)} | {len(filtered_jobs)} | {len(mark_jobs)} | "
                    f"{len(answers) - len(normal_jobs) - len(filtered_jobs) - len(mark_jobs)} | {len(wrong)} | {errors} "
                    f"| {seconds:.1f} | {baseline:.0f} | {peak:.0f} | {growth:.0f} | {kept:.0f} |\n\n"
                    f"Hostile requests: {kinds}. Beside them, for as long as they ran: {COSTLY} clients sending "
                    f"eight photos at verify=100 and one sending one photo (default verification), each from its own "
                    f"address, one request after another.\n\n"
                    f"| kind | requests | 200 | 503 | wrong | p50 s | p95 s |\n|---|---:|---:|---:|---:|---:|---:|\n"
                    + "\n".join(per_kind) + "\n")
