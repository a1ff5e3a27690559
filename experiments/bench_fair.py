"""Benchmark: fair serving under costly verified requests. `lookalike serve` over the 100 DVD covers (pretrained
Lite0, local features, default settings) while, at once and for --seconds:

    costly     six clients (127.0.0.2-7), each sending eight phone photos at verify=100, one request after another
    ordinary   one client (127.0.0.8) sending one photo, default search (verified at 50 candidates)
    filtered   one client (127.0.0.9) sending one photo with a filter
    trickling  one client (127.0.0.10): four connections whose uploads trickle a byte a second, each reconnecting
               as soon as it is cut (408), or half a second after it is refused (503)
    hostile    one client (127.0.0.11): oversized uploads and non-images

Every answer is checked against the same request answered alone before the load (its first result and whether
it verified); the report gives per kind the requests, answers 200, 503 (each with Retry-After), other statuses,
5xx, wrong answers and the p50 / p95 seconds of the answered ones, beside the ordinary search's latency alone.

    python experiments/bench_fair.py --dvd ../shared/datasets/dvd_covers --seconds 60 --out experiments/results/serve.md
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np

from bench_serve import free_port
from common import machine, report

COSTLY_CLIENTS, PHOTOS, CAMERAS = 6, 8, ("canon", "droid", "e63", "palm")


def catalogue(dvd: Path, work: Path) -> Path:
    """The 100 covers' catalogue, built with `lookalike index build`'s defaults and the pretrained Lite0."""
    embedder, manifest, out = work / "lite0.pt", work / "covers.csv", work / "covers.lkidx"
    if not embedder.exists():
        subprocess.run([sys.executable, "-m", "lookalike.cli", "pretrained", "--out", str(embedder)], check=True)
    manifest.write_text("path,label\n" + "".join(f"{p.resolve()},{p.stem}\n"
                                                 for p in sorted((dvd / "reference").glob("*.jpg"))))
    if not out.exists():
        subprocess.run([sys.executable, "-m", "lookalike.cli", "index", "build", "--embedder", str(embedder),
                        "--images", str(manifest), "--out", str(out)], check=True)
    return out


def client(source: str, url: str):
    import httpx

    return httpx.Client(base_url=url, timeout=120, transport=httpx.HTTPTransport(local_address=source))


def search(http, photos: list[Path], form: dict | None = None):
    files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    return http.post("/api/search", files=files, data={"k": "5", **(form or {})})


def first(answer) -> tuple[int, bool] | None:
    results = answer.json()["results"] if answer.status_code == 200 else []
    return (results[0]["id"], results[0]["verified"]) if results else None


def trickle(port: int, stop: threading.Event, answers: list[bytes]) -> None:
    """Uploads from 127.0.0.10 that send their body a byte a second, each reconnecting as soon as it is cut (half
    a second after it is refused): the status of each answer in ``answers``."""
    while not stop.is_set():
        with socket.socket() as sock:
            sock.bind(("127.0.0.10", 0))
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                         b"boundary=x\r\nContent-Length: 100000\r\n\r\n")
            sock.settimeout(1.0)
            while not stop.is_set():
                try:
                    answer = sock.recv(100)
                    if answer:
                        answers.append(answer.split(b" ", 2)[1])
                        if answers[-1] == b"503":
                            time.sleep(0.5)
                        break
                except socket.timeout:
                    sock.sendall(b"x")
                except OSError:
                    break


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dvd", type=Path, required=True, help="the dvd_covers folder")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--work", type=Path, help="folder for the embedder and catalogue (kept; default: a temporary one)")
    p.add_argument("--out", help="append a Markdown section with the results to this file")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        index = catalogue(a.dvd, work)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", "--index", str(index), "--port",
                                   str(port), "--no-feedback"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        try:
            run(a, url, port, server)
        finally:
            server.terminate()
            log = server.communicate(timeout=30)[0]
            if "Traceback" in log:
                print(log[-5000:])


def run(a: argparse.Namespace, url: str, port: int, server: subprocess.Popen) -> None:
    import httpx

    t0 = time.perf_counter()
    while True:
        try:
            httpx.get(f"{url}/api/items/0", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            if server.poll() is not None or time.perf_counter() - t0 > 300:
                raise SystemExit("the server did not start")
            time.sleep(0.3)
    rng = np.random.default_rng(0)
    photos = [a.dvd / c / f"{i:03d}.jpg" for c in CAMERAS for i in range(1, 101)]
    photos = [photos[i] for i in rng.permutation(len(photos))]
    costly_sets = [photos[i * PHOTOS % 400:][:PHOTOS] for i in range(12)]
    ordinary, filtered = photos[:20], photos[20:40]
    alone = client("127.0.0.8", url)
    search(alone, ordinary[:2])  # warm-up
    expected: dict[tuple, tuple | None] = {}
    solo = []
    for photo in ordinary:
        started = time.perf_counter()
        expected[("ordinary", photo)] = first(search(alone, [photo]))
        solo.append(time.perf_counter() - started)
    for photo in filtered:
        expected[("filtered", photo)] = first(search(alone, [photo], {"filter": f'label != "{photo.stem}"'}))
    costly_alone = []
    for group in costly_sets:
        started = time.perf_counter()
        expected[("costly", tuple(group))] = first(search(alone, group, {"verify": "100"}))
        costly_alone.append(time.perf_counter() - started)
    stop = threading.Event()
    deadline = time.perf_counter() + a.seconds
    answers: list[tuple[str, int, float, bool, str | None]] = []  # kind, status, seconds, right, Retry-After
    lock = threading.Lock()

    def keep(kind: str, key, response, seconds: float) -> None:
        right = response.status_code != 200 or first(response) == expected[key]
        with lock:
            answers.append((kind, response.status_code, seconds, right, response.headers.get("retry-after")))

    def loop(kind: str, source: str, requests: list) -> None:
        http, i = client(source, url), 0
        while time.perf_counter() < deadline:
            group, form = requests[i % len(requests)]
            i += 1
            started = time.perf_counter()
            r = search(http, list(group), form)
            keep(kind, (kind, group if kind == "costly" else group[0]), r, time.perf_counter() - started)
            if r.status_code == 503:
                time.sleep(min(float(r.headers.get("retry-after", 1)), 2.0))

    def hostile() -> None:
        http, big = client("127.0.0.11", url), b"\xff" * (11 << 20)
        while time.perf_counter() < deadline:
            for name, body, want in (("oversized", big, 413), ("not an image", b"\x00" * 5000, 415)):
                started = time.perf_counter()
                try:
                    status = http.post("/api/search", files={"image": (name, body)}).status_code
                except httpx.TransportError:  # the server answered 413 and closed while the upload was sent
                    status = 413 if want == 413 else 0
                with lock:
                    answers.append(("hostile", status, time.perf_counter() - started, status == want, None))
            time.sleep(0.5)

    threads = [threading.Thread(target=loop, args=("costly", f"127.0.0.{2 + n}",
                                                  [(tuple(g), {"verify": "100"}) for g in costly_sets[n::6]]))
               for n in range(COSTLY_CLIENTS)]
    threads.append(threading.Thread(target=loop, args=("ordinary", "127.0.0.8", [((p,), None) for p in ordinary])))
    threads.append(threading.Thread(target=loop, args=("filtered", "127.0.0.9", [
        ((p,), {"filter": f'label != "{p.stem}"'}) for p in filtered])))
    threads.append(threading.Thread(target=hostile))
    cuts: list[bytes] = []
    trickles = [threading.Thread(target=trickle, args=(port, stop, cuts)) for _ in range(4)]
    for t in threads + trickles:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    for t in trickles:
        t.join(10)
    alive = server.poll() is None
    lines = [f"\n## {date.today()}: fair admission under costly verified requests (experiments/bench_fair.py)\n",
             f"Machine: {machine()}  ",
             f"Command: `python experiments/bench_fair.py --dvd ../shared/datasets/dvd_covers --seconds {a.seconds:g} "
             f"--out experiments/results/serve.md`  ",
             "Server: `lookalike serve` with its defaults (`--slots 4 --verify-budget 800`) over the 100 DVD covers "
             "(pretrained Lite0, local features kept, calibrated threshold); clients on their own loopback "
             f"addresses for {a.seconds:g} s: six sending eight phone photos at verify=100 one after another, one "
             "sending one photo (default: verified at 50), one one photo with a filter, one oversized uploads and "
             "non-images, and one with four connections trickling an upload a byte a second, reconnecting as soon "
             f"as cut (cut {cuts.count(b'408')} times with 408; refused {cuts.count(b'503')} times with 503, its "
             "share of the upload places held). Wrong: a different first result (or verdict) than the same request "
             f"answered alone before the load. Alone, before the load: the one-photo search p50 "
             f"{np.median(solo):.2f} s, p95 {np.percentile(solo, 95):.2f} s; the eight-photo verify=100 search p50 "
             f"{np.median(costly_alone):.2f} s.\n",
             "| requests | count | 200 | 503 (with Retry-After) | other | 5xx | wrong | p50 s | p95 s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in ("ordinary", "filtered", "costly", "hostile"):
        rows = [x for x in answers if x[0] == kind]
        ok = [s for _, status, s, _, _ in rows if status == 200] or [float("nan")]
        busy = [x for x in rows if x[1] == 503]
        lines.append(f"| {kind} | {len(rows)} | {sum(x[1] == 200 for x in rows)} | {len(busy)} "
                     f"({sum(x[4] is not None for x in busy)}) | "
                     f"{sum(x[1] not in (200, 503) for x in rows)} | {sum(x[1] >= 500 and x[1] != 503 for x in rows)} | "
                     f"{sum(not x[3] for x in rows)} | {np.median(ok):.2f} | {np.percentile(ok, 95):.2f} |")
    lines.append(f"\nThe server {'ran throughout' if alive else 'DIED'}.")
    report(lines, a.out)


if __name__ == "__main__":
    main()
