"""Hostile inputs and careless use: no memory blow-ups, no code from files, no lost items, no traceback."""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lookalike.cli import main as lookalike
from lookalike.data.images import image_problem, load_rgb
from lookalike.data.listing import labelled_images
from lookalike.errors import LookalikeError
from lookalike.files import atomic_write
from lookalike.catalogue.file import FileCatalogue
from lookalike.models.lit_embedder import load_checkpoint
from tests.helpers import INLINE, free_port
from tests.test_catalogue_filters import flat_catalogue
from tests.test_verification import pictures  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path, width: int, height: int) -> Path:
    Image.new("L", (width, height), 200).save(path)
    return path


def _fails(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The one-line message of a lookalike command that must fail (exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as stop:
        lookalike(argv)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after any progress bar
    assert stop.value.code == 2 and "Traceback" not in err and last.startswith("lookalike: error: "), err
    return last


# -- 1. decoding budget ------------------------------------------------------------------------------------------
def test_elongated_and_huge_images_are_refused_from_their_header(tmp_path: Path) -> None:
    thin = _png(tmp_path / "thin.png", 1, 100_000)  # a few hundred bytes; resized to 224 px it would be 19 GB
    assert thin.stat().st_size < 2000
    with pytest.raises(LookalikeError, match="longer than 32 times"):
        load_rgb(str(thin), min_side=256)
    assert "longer than 32 times" in image_problem(str(thin))
    Image.new("L", (13_000, 13_000)).save(tmp_path / "wide.png")
    with pytest.raises(LookalikeError, match="13000 x 13000 pixels is more than"):
        load_rgb(str(tmp_path / "wide.png"))
    big_jpeg = tmp_path / "big.jpg"  # 60 Mpx, but decoded at 1/8 scale for a 256-px model input: allowed
    Image.new("RGB", (10_000, 6_000), (90, 120, 30)).save(big_jpeg, quality=50)
    assert load_rgb(str(big_jpeg), min_side=256).shape == (750, 1250, 3)
    eps = tmp_path / "x.eps"  # PIL would hand it to Ghostscript; lookalike opens only photo formats
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(LookalikeError, match="not an image in a supported format"):
        load_rgb(str(eps))


def test_concurrent_decodes_take_turns_within_the_pixel_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four threads decoding 1,000 x 1,000 RGBA PNGs under a 1.5-million-pixel budget: one at a time, each whole."""
    import threading

    from lookalike.data import images

    budget = images.PixelBudget(1_500_000)
    monkeypatch.setattr(images, "DECODING", budget)
    seen, real_paste = [], Image.Image.paste

    def paste(self, *args, **kwargs):  # runs while a decode holds its pixels
        seen.append(budget.used)
        return real_paste(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "paste", paste)
    picture = io.BytesIO()
    Image.new("RGBA", (1000, 1000), (10, 200, 30, 128)).save(picture, "PNG")
    out = []
    threads = [threading.Thread(target=lambda: out.append(load_rgb(io.BytesIO(picture.getvalue())))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [1_000_000] * 4 and budget.used == 0
    assert len(out) == 4 and all(a.shape == (1000, 1000, 3) and tuple(a[0, 0]) == (132, 227, 142) for a in out)


def test_index_build_skips_images_that_cannot_be_decoded(trained: dict, catalogue, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    manifest, _, _ = catalogue
    _png(tmp_path / "thin.png", 1, 100_000)
    (tmp_path / "with_bad.csv").write_text(manifest.read_text() + f"{tmp_path / 'thin.png'},bad\n")
    with pytest.warns(UserWarning, match="thin.png.*longer than 32 times"):
        lookalike(["index", "build", "--embedder", trained["embedder"], "--images", str(tmp_path / "with_bad.csv"),
                   "--out", str(tmp_path / "c.lkidx"), "--workers", "0"])
    out = capsys.readouterr().out
    assert "skipped 1 unreadable image(s) of 6" in out and "indexed 5 images" in out


# -- 2. no code from checkpoints ---------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow  # several seconds: in the slow suite (CI runs both)
def test_a_checkpoint_that_would_run_code_is_refused_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                data_cache: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": {"config": _Evil(marker)}, "state_dict": {}}, evil)
    with pytest.raises(LookalikeError, match="beyond plain data"):
        load_checkpoint(evil)
    assert "beyond plain data" in _fails(["evaluate", f"ckpt={evil}", f"hydra.run.dir={tmp_path / 'e'}"], capsys)
    assert "beyond plain data" in _fails(["export", str(evil), "--out", str(tmp_path / "x.pt")], capsys)
    from tests.helpers import tiny_overrides

    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), *tiny_overrides(data_cache),
                              f"hydra.run.dir={tmp_path / 'r'}", f"ckpt_path={evil}"],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert resumed.returncode == 2 and "beyond plain data" in resumed.stderr and "Traceback" not in resumed.stderr
    assert not marker.exists()


# Callables that Hydra's own blocklist lets through and that run commands or write files, as a file would name them.
def _hostile_targets(marker: Path) -> dict[str, dict]:
    return {
        "spawn": {"_target_": "setuptools._distutils.spawn.spawn", "_args_": [["/bin/sh", "-c", f"touch {marker}"]]},
        "uuid": {"_target_": "uuid._get_command_stdout", "_args_": ["touch", str(marker)]},
        "write_text": {"_target_": "pathlib.Path.write_text",
                       "_args_": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}, "x"]},
        "copyfile": {"_target_": "shutil.copyfile", "_args_": [__file__, str(marker)]},
    }


def _reloaded(path: Path, out: Path, edit) -> Path:
    """A copy of the lookalike file ``path`` at ``out``, read as plain data, changed by ``edit`` and saved."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    edit(payload)
    torch.save(payload, out)
    return out


@pytest.mark.parametrize("name", ["spawn", "uuid", "write_text", "copyfile"])
def test_no_file_gets_code_run_through_the_configs_it_carries(name: str, trained: dict, catalogue, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture, data_cache: Path) -> None:
    """A checkpoint, an embedder file or a box file that passes ``weights_only`` but names a callable in its
    training config runs nothing on any path that reads it: refused wherever something is built from that config
    (a checkpoint's loss and miner, evaluate's data set, a resumed run), never used where nothing is."""
    from lookalike.boxes.finder import save_box_file
    from lookalike.boxes.net import BoxNet
    from lookalike.train import run
    from tests.helpers import compose_config, tiny_overrides

    marker = tmp_path / "PWNED"
    target = _hostile_targets(marker)[name]
    ckpt = _reloaded(Path(trained["best_checkpoint"]), tmp_path / "it.ckpt",
                     lambda p: p["hyper_parameters"]["config"].update(loss=target))
    embedder = _reloaded(Path(trained["embedder"]), tmp_path / "embedder.pt",
                         lambda p: p["provenance"]["training_config"]["data"].update(source=target))
    config = {"box": {"backbone": "test_efficientnet"}, "miner": target}
    boxes = save_box_file(BoxNet("test_efficientnet", 32, pretrained=False), tmp_path / "box.pt",
                          training_config=config)
    refused = "names code to run"

    with pytest.raises(LookalikeError, match=refused):
        load_checkpoint(ckpt)
    assert refused in _fails(["export", str(ckpt), "--out", str(tmp_path / "x.pt")], capsys)
    for source in (ckpt, embedder):
        assert refused in _fails(["evaluate", f"ckpt={source}", f"hydra.run.dir={tmp_path / 'e'}"], capsys)
    assert refused in _fails(["pretrained", "--model", "test_efficientnet", "--checkpoint", str(ckpt),
                              "--out", str(tmp_path / "p.pt")], capsys)
    with pytest.raises(LookalikeError, match=refused):  # resume: refused before Lightning reads the file
        run(compose_config(tiny_overrides(data_cache, tmp_path / "r") + ["logger=none", f"ckpt_path={ckpt}"]))
    index = tmp_path / "c.lkidx"
    FileCatalogue.build(trained["embedder"], catalogue[0], INLINE).save(index)
    photo = _png(tmp_path / "photo.png", 40, 40)  # searches read the box file's model, nothing of its config
    lookalike(["search", "--index", str(index), str(photo), "--crop", "auto", "--boxes", str(boxes)])
    lookalike(["search", "--index", str(index), "--embedder", str(embedder), str(photo)])
    pytest.importorskip("fastapi")
    from lookalike.serve.app import create_app
    from lookalike.serve.page import PageOptions

    create_app(index, PageOptions(boxes=str(boxes)))
    assert not marker.exists()


# -- 3. the page: body limit while reading, slots, hosts, no leaks -----------------------------------------------
@pytest.fixture
def app(trained: dict, catalogue, tmp_path: Path):
    """The page over a copy of the catalogue pictures (tests may remove them), loopback names only."""
    pytest.importorskip("fastapi")
    from lookalike.serve.app import create_app
    from lookalike.serve.page import PageOptions

    rows = ["path,label"]
    for i, row in enumerate(catalogue[0].read_text().splitlines()[1:]):
        path, label = row.rsplit(",", 1)
        (tmp_path / "pictures" / f"{i}.jpg").parent.mkdir(exist_ok=True)
        (tmp_path / "pictures" / f"{i}.jpg").write_bytes(Path(path).read_bytes())
        rows.append(f"pictures/{i}.jpg,{label}")
    (tmp_path / "copy.csv").write_text("\n".join(rows) + "\n")
    FileCatalogue.build(trained["embedder"], tmp_path / "copy.csv", INLINE).save(tmp_path / "c.lkidx")
    return create_app(tmp_path / "c.lkidx",
                      PageOptions(max_upload_mb=0.5, allowed_hosts=["127.0.0.1", "localhost"]))


def test_chunked_uploads_over_the_limit_are_refused(app) -> None:
    from fastapi.testclient import TestClient

    def chunks():  # 4 MB without a Content-Length, in 64 KB pieces
        for _ in range(64):
            yield b"--x\r\n" + b"0" * 65_531

    r = TestClient(app, base_url="http://127.0.0.1").post(
        "/api/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "larger than 0.5 MB" in r.json()["detail"]


def _asgi_post(guard, chunks: list[bytes], headers: list | None = None) -> tuple[list[dict], int]:
    """A POST through ``guard`` with its body in ``chunks``: the messages sent back and the chunks it read."""
    read, sent = 0, []

    async def receive():
        nonlocal read
        read += 1
        return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}

    async def send(message):
        sent.append(message)

    asyncio.run(guard({"type": "http", "method": "POST", "headers": headers or []}, receive, send))
    return sent, read


def test_a_body_is_refused_as_soon_as_it_passes_the_limit_and_never_reaches_the_app() -> None:
    from lookalike.serve.guard import UploadGuard

    reached = []

    async def app(scope, receive, send):
        reached.append(await receive())

    guard = UploadGuard(app, limit=100_000, slots=2, too_large="too large")
    sent, read = _asgi_post(guard, [b"0" * 65_536] * 64)  # 4 MB, chunked (no Content-Length)
    assert sent[0]["status"] == 413 and read == 2 and not reached  # stopped at the second 64 KB chunk
    sent, read = _asgi_post(guard, [b"0"], headers=[(b"content-length", b"4000000")])
    assert sent[0]["status"] == 413 and read == 0  # a declared size over the limit: nothing read
    _asgi_post(guard, [b"ab", b"cd"])
    assert reached == [{"type": "http.request", "body": b"abcd", "more_body": False}] and guard.busy == 0


def test_requests_beyond_what_the_guard_holds_are_answered_busy() -> None:
    from lookalike.serve.guard import UploadGuard

    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        await receive()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = UploadGuard(slow_app, limit=1000, slots=1, too_large="too large", held=1)

    async def request() -> list[dict]:
        sent: list[dict] = []

        async def receive():
            return {"type": "http.request", "body": b"x" * 10, "more_body": False}

        async def send(message):
            sent.append(message)

        await guard({"type": "http", "method": "POST", "headers": []}, receive, send)
        return sent

    async def both() -> tuple[list[dict], list[dict]]:
        first = asyncio.create_task(request())
        await asyncio.sleep(0.01)
        second = await request()  # the only place is taken
        release.set()
        return await first, second

    first, second = asyncio.run(both())
    assert first[0]["status"] == 200 and second[0]["status"] == 503
    assert (b"retry-after", b"1") in second[0]["headers"] and guard.busy == 0


def test_more_like_this_takes_a_place_and_cheap_reads_do_not() -> None:
    from lookalike.serve.guard import UploadGuard

    release, reached = asyncio.Event(), []

    async def slow_app(scope, receive, send):
        reached.append(scope["path"])
        if scope["path"].endswith("/similar"):
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = UploadGuard(slow_app, limit=1000, slots=1, too_large="too large", searching=("/similar",), held=1)

    async def request(method: str, path: str) -> int:
        sent: list[dict] = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await guard({"type": "http", "method": method, "path": path, "headers": []}, receive, send)
        return sent[0]["status"]

    async def all_of_them() -> tuple[int, ...]:
        similar = asyncio.create_task(request("GET", "/api/items/3/similar"))
        await asyncio.sleep(0.01)
        answers = (await request("GET", "/api/items/4/similar"), await request("POST", "/api/search"),
                   await request("GET", "/api/items/3"))
        release.set()
        return await similar, *answers

    assert asyncio.run(all_of_them()) == (200, 503, 503, 200) and guard.busy == 0


@pytest.mark.slow  # several seconds: in the slow suite (CI runs both)
def test_a_stalled_upload_frees_its_slot_within_seconds(app, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raw sockets that send a POST's headers and then nothing: they hold their client's share of the places to
    read uploads in (the others are refused at once) only until the body's deadline, after which a real upload
    from the same address is searched; one that never finishes its headers is closed after theirs."""
    import threading

    import httpx
    import uvicorn

    from lookalike.serve import guard, protocol

    monkeypatch.setattr(guard, "BODY_IDLE_S", 3.0)
    monkeypatch.setattr(protocol, "HEADERS_S", 1.0)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           http=protocol.HeaderDeadline))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    photo = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(photo, "PNG")
    url = f"http://127.0.0.1:{port}/api/search"
    try:
        stalled = []
        for _ in range(4):  # the app's 4 slots: two for one client
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                         b"boundary=x\r\nContent-Length: 100000\r\n\r\n")
            stalled.append(sock)
        files = {"image": ("p.png", photo.getvalue(), "image/png")}
        deadline = time.monotonic() + 2.5  # the four take their slots as soon as the server has read them
        while httpx.post(url, files=files, timeout=10).status_code != 503:  # this client's share held
            assert time.monotonic() < deadline, "the stalled uploads never held the slots"
            time.sleep(0.05)
        slow_headers = socket.create_connection(("127.0.0.1", port))  # headers that never end: no slot, and
        slow_headers.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # closed after their deadline
        answered = []
        for sock in [*stalled, slow_headers]:
            sock.settimeout(10)
            answered.append(sock.recv(1000).split(b"\r\n", 1)[0].split(b" ")[1])
            sock.close()
        assert sorted(answered[:4]) == [b"408", b"408", b"503", b"503"] and answered[4] == b"408"
        assert httpx.post(url, files=files, timeout=30).status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)


# -- the page's fair share: work admitted by its cost, uploads read a share per client -----------------------------
def test_costly_requests_take_turns_between_clients_and_each_clients_own_wait_behind_it() -> None:
    import threading

    from lookalike.serve.admission import Admission, AdmissionOptions, Busy

    admission = Admission(AdmissionOptions(slots=1, work=100, light=10, wait_s=5, per_client=2))
    order, release = [], threading.Event()

    def costly(client: str) -> None:
        with admission.turn(client, 100):
            order.append(client)
            release.wait(5)

    first = threading.Thread(target=costly, args=("x",))
    first.start()
    while not order:
        time.sleep(0.01)
    waiting = []
    for client in ["a", "a", "b"]:  # a sends two before b sends one
        waiting.append(threading.Thread(target=costly, args=(client,)))
        waiting[-1].start()
        time.sleep(0.05)
    with pytest.raises(Busy):  # a has two waiting already: a third is refused at once
        with admission.turn("a", 100):
            pass
    started = time.monotonic()
    with admission.turn("c", 1):  # an ordinary request is not behind the costly ones
        assert time.monotonic() - started < 0.1
    release.set()
    for thread in [first, *waiting]:
        thread.join(10)
    assert order == ["x", "a", "b", "a"]


def test_a_request_whose_turn_does_not_come_in_time_is_told_when_to_retry() -> None:
    import threading

    from lookalike.serve.admission import Admission, AdmissionOptions, Busy

    admission = Admission(AdmissionOptions(slots=1, work=100, light=10, wait_s=0.3))
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with admission.turn("x", 500):  # larger than the budget: runs alone
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(5)
    started = time.monotonic()
    with pytest.raises(Busy) as refused:
        with admission.turn("y", 50):
            pass
    release.set()
    thread.join(10)
    assert 0.25 < time.monotonic() - started < 2 and refused.value.retry_after >= 1
    with admission.turn("y", 50):  # the budget is free again
        pass


@pytest.mark.slow  # several seconds: in the slow suite (CI runs both)
def test_one_photo_searches_pass_while_six_clients_send_eight_photo_verified_ones(app, monkeypatch) -> None:
    """Searches that each take time in proportion to their verification work: six clients sending eight photos at
    verify=100 wait their turns (or are told to retry), another client's one-photo searches are answered at once."""
    import threading

    from fastapi.testclient import TestClient

    from lookalike.serve import page as page_module

    searched = page_module.search_catalogue

    def slow(index, vectors, options, photos=None):
        time.sleep(0.0008 * len(vectors) * (options.verify or 50))  # 8 x 100: 0.64 s, 1 x 50: 0.04 s
        return searched(index, vectors, options, photos)

    monkeypatch.setattr(page_module, "search_catalogue", slow)
    photo = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(photo, "PNG")
    eight = [("image", (f"p{i}.png", photo.getvalue(), "image/png")) for i in range(8)]
    stop, heavy = time.monotonic() + 4, []

    def costly(n: int) -> None:
        client = TestClient(app, base_url="http://127.0.0.1", client=(f"10.0.0.{n}", 5000))
        while time.monotonic() < stop:
            r = client.post("/api/search", files=eight, data={"verify": "100"})
            heavy.append((r.status_code, r.headers.get("retry-after")))
            if r.status_code == 503:
                time.sleep(0.2)

    threads = [threading.Thread(target=costly, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # the costly ones have filled their budget
    light = TestClient(app, base_url="http://127.0.0.1", client=("10.0.1.1", 5000))
    answers = []
    while time.monotonic() < stop:
        started = time.monotonic()
        status = light.post("/api/search", files=eight[:1]).status_code
        answers.append((status, time.monotonic() - started))
    for thread in threads:
        thread.join(30)
    assert answers and all(status == 200 for status, _ in answers), answers
    assert sorted(s for _, s in answers)[int(0.95 * (len(answers) - 1))] < 2.0, answers
    assert heavy and all(s == 200 or s == 503 and int(retry) >= 1 for s, retry in heavy), heavy
    assert sum(s == 200 for s, _ in heavy) >= 3


def _trickle(guard, client: str, pieces: int, every: float, proceed=None) -> tuple[int, float]:
    """A POST of ``client`` through ``guard`` whose body comes in ``pieces`` of 100 bytes, one each ``every``
    seconds (after ``proceed`` is set, when given): the status answered and the seconds it took."""
    sent, read = [], 0

    async def receive():
        nonlocal read
        if proceed is not None:
            while not proceed.is_set():
                await asyncio.sleep(0.01)
        await asyncio.sleep(every)
        read += 1
        return {"type": "http.request", "body": b"x" * 100, "more_body": read < pieces}

    async def send(message):
        sent.append(message)

    async def go():
        started = time.monotonic()
        await guard({"type": "http", "method": "POST", "headers": [], "client": (client, 1)}, receive, send)
        return sent[0]["status"], time.monotonic() - started

    return asyncio.run(go())


def _ok_app():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


@pytest.mark.slow  # several seconds: in the slow suite (CI runs both)
def test_a_trickling_upload_is_cut_within_seconds() -> None:
    from lookalike.serve.guard import UploadGuard

    guard = UploadGuard(_ok_app(), limit=100_000, slots=2, too_large="too large")
    status, seconds = _trickle(guard, "a", pieces=40, every=0.3)  # 330 bytes a second, never idle for long
    assert status == 408 and seconds < 4 and guard.busy == 0 and not guard.reading
    assert _trickle(guard, "a", pieces=5, every=0.01)[0] == 200  # a body that keeps coming is read


def test_one_client_reads_at_most_half_the_upload_places() -> None:
    import threading

    from lookalike.serve.guard import UploadGuard

    guard, proceed = UploadGuard(_ok_app(), limit=100_000, slots=4, too_large="too large"), threading.Event()
    answers: list = []

    def post(client: str) -> None:
        answers.append((client, _trickle(guard, client, 1, 0.01, proceed)[0]))

    threads = [threading.Thread(target=post, args=(c,)) for c in ["a", "a", "a", "b"]]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    proceed.set()
    for thread in threads:
        thread.join(10)
    assert sorted(answers) == [("a", 200), ("a", 200), ("a", 503), ("b", 200)] and guard.busy == 0


@pytest.mark.slow  # several seconds: in the slow suite (CI runs both)
def test_a_client_reconnecting_slow_uploads_keeps_no_one_else_waiting(app) -> None:
    """Four connections from 127.0.0.2 that send their body a byte a second, reconnecting as soon as they are cut:
    uploads from 127.0.0.1 are still searched, each within 10 s."""
    import threading

    import httpx
    import uvicorn

    from lookalike.serve import protocol

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           http=protocol.HeaderDeadline))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    stop, cut = threading.Event(), []

    def dribble() -> None:
        while not stop.is_set():
            with socket.socket() as sock:
                sock.bind(("127.0.0.2", 0))
                sock.connect(("127.0.0.1", port))
                sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                             b"boundary=x\r\nContent-Length: 100000\r\n\r\n")
                sock.settimeout(1.0)
                while not stop.is_set():
                    try:
                        if sock.recv(100):
                            cut.append(1)
                            break
                    except socket.timeout:
                        sock.sendall(b"x")
                    except OSError:
                        break

    dribblers = [threading.Thread(target=dribble, daemon=True) for _ in range(4)]
    for d in dribblers:
        d.start()
    photo = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(photo, "PNG")
    files = {"image": ("p.png", photo.getvalue(), "image/png")}
    try:
        time.sleep(1.0)  # the dribblers hold what they can
        waits = []
        for _ in range(4):
            started = time.monotonic()
            while httpx.post(f"http://127.0.0.1:{port}/api/search", files=files, timeout=10).status_code != 200:
                assert time.monotonic() - started < 10, "an upload waited behind the slow client for 10 s"
                time.sleep(0.2)
            waits.append(time.monotonic() - started)
            time.sleep(1.0)
        assert max(waits) < 10 and cut  # the slow bodies were cut (and reconnected)
    finally:
        stop.set()
        server.should_exit = True
        thread.join(10)


# -- local features and votes that do not belong to the catalogue ------------------------------------------------
@pytest.mark.slow  # several seconds: in the slow suite (CI runs both)
def test_a_new_milvus_build_owns_its_local_features_collection(trained: dict, pictures: Path, tmp_path: Path) -> None:
    """A catalogue dropped and built again under its name from other pictures gets local features of its own
    pictures only (an earlier build's left-over collection is replaced); a ``<name>_local`` lookalike did not make
    is neither used nor changed: the build is refused with one message."""
    pytest.importorskip("milvus_lite")
    from lookalike.catalogue.backends import build_catalogue, open_catalogue
    from lookalike.catalogue.local import photo_features
    from lookalike.catalogue.milvus import connect, disconnect
    from lookalike.catalogue.query import SearchOptions, search_catalogue
    from lookalike.embedder.file import embedder_from_payload, read_embedder_file
    from tests.test_verification import photo_of, texture

    db = str(tmp_path / "c.db")
    build_catalogue(db, trained["embedder"], pictures, "milvus", "shop", INLINE).close()
    client = connect(db)
    client.drop_collection("shop")  # the main collection only, as a user might
    disconnect(client, db)
    other = tmp_path / "other"
    for seed in range(20, 24):
        (other / f"q{seed}").mkdir(parents=True)
        Image.fromarray(texture(seed)).save(other / f"q{seed}" / "a.png")
    build_catalogue(db, trained["embedder"], other, "milvus", "shop", INLINE).close()
    catalogue = open_catalogue(db, "milvus", "shop")
    ids = {it["id"] for it in catalogue.listing()}
    owners = {r["item"] for r in catalogue.client.query("shop_local", filter="", output_fields=["item"], limit=16384)}
    assert owners <= ids and len(owners) == 4
    embedder = embedder_from_payload(read_embedder_file(trained["embedder"]))
    photo = photo_of(texture(21))
    found = search_catalogue(catalogue, embedder.embed([photo]).numpy(), SearchOptions(k=3),
                             photo_features([photo], catalogue.meta["local"]))[0].hits
    assert found[0].label == "q21" and found[0].verified
    catalogue.close()

    from pymilvus import DataType, MilvusClient
    client = connect(db)
    schema = MilvusClient.create_schema(auto_id=True)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=128)
    client.create_collection("mine_local", schema=schema)  # someone else's collection of that name
    client.insert("mine_local", [{"vector": [0.5] * 128}] * 3)
    disconnect(client, db)
    with pytest.raises(LookalikeError, match="'mine_local' already exists .* not this build's"):
        build_catalogue(db, trained["embedder"], other, "milvus", "mine", INLINE)
    client = connect(db)
    assert not client.has_collection("mine") and client.query("mine_local", filter="", output_fields=["pk"],
                                                              limit=10).__len__() == 3
    disconnect(client, db)


def test_a_milvus_catalogue_of_the_older_form_or_with_damaged_features_is_one_message(
        trained: dict, pictures: Path, tmp_path: Path) -> None:
    """A collection that keeps its local features in ``<name>_local`` alone (the form before an item's row kept
    them packed) is refused on opening with what to do; so is an item's packed text that is not features (never
    decoded past its length)."""
    pytest.importorskip("milvus_lite")
    from lookalike.catalogue.backends import build_catalogue, open_catalogue
    from lookalike.catalogue.milvus import META, _create, connect, disconnect

    db = str(tmp_path / "c.db")
    catalogue = build_catalogue(db, trained["embedder"], pictures, "milvus", "shop", INLINE)
    meta, first = catalogue.meta, next(iter(catalogue.listing()))
    catalogue.close()
    client = connect(db)
    _create(client, "old", {**meta, "local": None})  # no features field, as before
    client.alter_collection_properties("old", properties={META: json.dumps(meta)})
    client.load_collection("shop")
    row = client.get("shop", ids=[first["id"]])[0]
    for damage in ("not base64 !", "AAAA"):  # the second: three bytes, not a picture's features
        client.upsert("shop", [{**row, "features": damage}])
        disconnect(client, db)
        catalogue = open_catalogue(db, "milvus", "shop")
        with pytest.raises(LookalikeError, match="damaged local features"):
            catalogue.local_features([first["id"]])
        catalogue.close()
        client = connect(db)
    disconnect(client, db)
    with pytest.raises(LookalikeError, match="older form .*build the catalogue again"):
        open_catalogue(db, "milvus", "old")


def test_a_vote_index_holding_other_items_is_refused_and_unknown_candidates_are_skipped(
        trained: dict, pictures: Path, tmp_path: Path) -> None:
    from lookalike.catalogue.backends import build_catalogue
    from lookalike.catalogue.local import photo_features
    from lookalike.catalogue.query import SearchOptions, search_catalogue
    from lookalike.embedder.file import embedder_from_payload, read_embedder_file
    from lookalike.verification.votes import DescriptorVotes
    from tests.test_verification import photo_of, texture

    out = tmp_path / "c.lkidx"
    catalogue = build_catalogue(out, trained["embedder"], pictures, options=INLINE)
    ids = np.array([it["id"] for it in catalogue.items], np.int64)
    foreign = DescriptorVotes.build(ids + 1000, catalogue.local.features(range(len(ids))), catalogue.local.dims)
    with zipfile.ZipFile(out) as z:
        members = {name: z.read(name) for name in z.namelist()}
    members["votes.faiss"] = foreign.to_bytes()
    damaged = tmp_path / "d.lkidx"
    with zipfile.ZipFile(damaged, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(LookalikeError, match="votes.faiss holds descriptors of other items"):
        FileCatalogue.load(damaged)

    real = catalogue.vote_candidates
    catalogue.vote_candidates = lambda *a: [(123_456, 99), *real(*a)]  # a vote for an id no item has
    embedder = embedder_from_payload(read_embedder_file(trained["embedder"]))
    photo = photo_of(texture(4))
    hits = search_catalogue(catalogue, embedder.embed([photo]).numpy(), SearchOptions(k=6),
                            photo_features([photo], catalogue.meta["local"]))[0].hits
    assert hits[0].label == "p4" and hits[0].verified and 123_456 not in {h.id for h in hits}


KILLED_BUILD = """
import os, signal, sys
from pymilvus import MilvusClient
from lookalike.catalogue.backends import build_catalogue
from lookalike.catalogue.build import BuildOptions

real = MilvusClient.create_collection

def create_then_die(self, name, *args, **kwargs):
    real(self, name, *args, **kwargs)
    if name == sys.argv[4]:
        os.kill(os.getpid(), signal.SIGKILL)  # the window between creating a collection and the rest of its set-up

MilvusClient.create_collection = create_then_die
build_catalogue(sys.argv[1], sys.argv[2], sys.argv[3], "milvus", "shop", BuildOptions(num_workers=0)).close()
"""


@pytest.mark.slow
@pytest.mark.parametrize("window", ["shop", "shop_local"])
def test_a_milvus_build_killed_right_after_creating_a_collection_is_finished_by_the_same_build(
        window: str, trained: dict, pictures: Path, tmp_path: Path) -> None:
    pytest.importorskip("milvus_lite")
    from lookalike.catalogue.backends import build_catalogue, open_catalogue

    db, script = str(tmp_path / "k.db"), tmp_path / "child.py"
    script.write_text(KILLED_BUILD)
    child = subprocess.run([sys.executable, str(script), db, str(trained["embedder"]), str(pictures), window],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert child.returncode == -9, child.stderr[-2000:]
    with pytest.raises(LookalikeError, match="did not finish: run the same"):
        open_catalogue(db, "milvus", "shop")
    build_catalogue(db, trained["embedder"], pictures, "milvus", "shop", INLINE).close()
    catalogue = open_catalogue(db, "milvus", "shop")
    assert catalogue.count() == 6 and catalogue.meta["state"] == "ready"
    first = catalogue.vote_candidates(catalogue.local_features([next(catalogue.listing())["id"]])[0], 1)
    assert first and first[0][0] == next(catalogue.listing())["id"]
    catalogue.close()


def test_posts_from_another_sites_page_are_refused(app) -> None:
    """A browser's cross-site request (its Origin and Sec-Fetch-Site headers) cannot search nor leave marks; the
    page's own requests and clients that are not browsers can."""
    from fastapi.testclient import TestClient

    client = TestClient(app, base_url="http://127.0.0.1")
    photo = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(photo, "PNG")
    files = {"image": ("p.png", photo.getvalue(), "image/png")}
    for headers in ({"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
                    {"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "null"},
                    {"Origin": "http://127.0.0.1:9999"}):
        refused = client.post("/api/search", files=files, headers=headers)
        assert refused.status_code == 403 and "another site" in refused.text, headers
        marked = client.post("/api/feedback", files=files, data={"item": 0, "verdict": "same"}, headers=headers)
        assert marked.status_code == 403, headers
    for headers in ({}, {"Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}):
        assert client.post("/api/search", files=files, headers=headers).status_code == 200, headers


def test_a_running_page_sees_items_removed_from_its_catalogue(app, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    from fastapi.testclient import TestClient

    client = TestClient(app, base_url="http://127.0.0.1")
    photo = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(photo, "PNG")
    files = {"image": ("p.png", photo.getvalue(), "image/png")}
    first = client.post("/api/search", files=files, data={"k": "5"}).json()["results"][0]["id"]
    lookalike(["index", "remove", "--index", str(tmp_path / "c.lkidx"), "--ids", str(first)])
    assert "removed 1 item(s)" in capsys.readouterr().out
    assert client.get(f"/api/items/{first}").status_code == 404
    assert client.get(f"/api/items/{first}/image").status_code == 404
    assert first not in [r["id"] for r in client.post("/api/search", files=files, data={"k": "5"}).json()["results"]]
    assert client.post("/api/feedback", files=files, data={"item": first, "verdict": "same"}).status_code == 404


def test_the_page_leaks_no_paths_no_reprs_and_answers_loopback_names_only(app, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    client = TestClient(app, base_url="http://127.0.0.1")
    garbage = client.post("/api/search", files={"image": ("x.jpg", b"\x00not an image", "image/jpeg")})
    assert garbage.status_code == 415 and "object at 0x" not in garbage.text and "supported format" in garbage.text
    thin = io.BytesIO()
    Image.new("L", (1, 100_000)).save(thin, "PNG")
    elongated = client.post("/api/search", files={"image": ("thin.png", thin.getvalue(), "image/png")})
    assert elongated.status_code == 415 and "longer than 32 times" in elongated.text
    index = FileCatalogue.load(tmp_path / "c.lkidx")
    Path(index.items[0]["path"]).rename(tmp_path / "moved.jpg")  # a catalogue picture gone from the server
    gone = client.get(f"/api/items/{index.items[0]['id']}/image")
    assert gone.status_code == 410 and str(tmp_path) not in gone.text and "/" not in gone.json()["detail"]
    rebound = TestClient(app, base_url="http://attacker.example")  # DNS rebinding: another name, our address
    assert rebound.get("/api/items/0").status_code == 400


def test_an_empty_catalogue_answers_clearly(trained: dict, catalogue, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "c.lkidx"
    index = FileCatalogue.build(trained["embedder"], catalogue[0], INLINE)
    index.remove([it["id"] for it in index.items])
    index.save(path)
    photo = catalogue[1][0]
    assert "is empty" in _fails(["search", "--index", str(path), photo], capsys)
    lookalike(["duplicates", "--index", str(path), "--threshold", "0.9"])
    assert "0 groups of near-duplicates" in capsys.readouterr().out
    assert "at least one result" in _fails(["search", "--index", str(path), photo, "-k", "0"], capsys)
    from fastapi.testclient import TestClient

    from lookalike.serve.app import create_app


    with open(photo, "rb") as f:
        answer = TestClient(create_app(path)).post("/api/search", files={"image": ("p.jpg", f, "image/jpeg")})
    assert answer.status_code == 409 and "is empty" in answer.json()["detail"]


# -- 4. two writers at once --------------------------------------------------------------------------------------
@pytest.mark.slow  # several seconds: in the slow suite (CI runs both)
def test_two_processes_adding_to_one_index_lose_nothing(trained: dict, catalogue, tmp_path: Path) -> None:
    manifest, photos, labels = catalogue
    index = FileCatalogue.build(trained["embedder"], manifest, INLINE)
    index.save(tmp_path / "c.lkidx")
    for name, part in (("a", photos[::2]), ("b", photos[1::2])):
        for i, photo in enumerate(part):
            (tmp_path / name / f"p{i}").mkdir(parents=True)
            (tmp_path / name / f"p{i}" / "photo.jpg").write_bytes(Path(photo).read_bytes())
    cli = [sys.executable, "-m", "lookalike.cli", "index", "add", "--index", str(tmp_path / "c.lkidx"), "--workers", "0"]
    writers = [subprocess.Popen([*cli, "--images", str(tmp_path / name)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for name in "ab"]
    outputs = [w.communicate(timeout=300) for w in writers]
    assert all(w.returncode == 0 for w in writers), outputs
    final = FileCatalogue.load(tmp_path / "c.lkidx")
    ids = [it["id"] for it in final.items]
    assert len(final.items) == 5 + len(photos) and len(set(ids)) == len(ids) == final.faiss.ntotal


# -- 5. atomic writes keep the file what it was ------------------------------------------------------------------
def test_atomic_writes_keep_mode_follow_links_and_clean_up(tmp_path: Path) -> None:
    target = tmp_path / "real" / "catalog.lkidx"
    target.parent.mkdir()
    target.write_text("old")
    os.chmod(target, 0o644)
    (tmp_path / "link.lkidx").symlink_to(target)
    stale = target.parent / ".catalog.lkidx.999999999.abc.lkidx"  # a writer killed mid-write (no such process)
    stale.write_text("half")
    atomic_write(tmp_path / "link.lkidx", lambda tmp: Path(tmp).write_text("new"))
    assert (tmp_path / "link.lkidx").is_symlink() and target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o644 and not stale.exists()

    def fails(tmp: str) -> None:
        Path(tmp).write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, fails)
    assert target.read_text() == "new" and sorted(p.name for p in target.parent.iterdir()) == ["catalog.lkidx"]


def test_calibrate_and_add_keep_the_files_mode(trained: dict, catalogue, tmp_path: Path) -> None:
    from lookalike.embedder.calibrate import calibrate

    manifest, photos, labels = catalogue
    embedder = tmp_path / "embedder.pt"
    embedder.write_bytes(Path(trained["embedder"]).read_bytes())
    os.chmod(embedder, 0o644)
    rows = ["path,label", *(f"{p},{y}" for p, y in zip(photos, labels)), *manifest.read_text().splitlines()[1:]]
    (tmp_path / "labelled.csv").write_text("\n".join(rows) + "\n")
    calibrate(embedder, tmp_path / "labelled.csv", target_precision=0.3, k=3)
    assert embedder.stat().st_mode & 0o777 == 0o644


# -- 6. bad parameters are found at once -------------------------------------------------------------------------
def test_bad_index_parameters_are_refused_when_building(trained: dict, catalogue, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    build = ["index", "build", "--embedder", trained["embedder"], "--images", str(catalogue[0]), "--workers", "0"]
    err = _fails([*build, "--out", str(tmp_path / "a.lkidx"), "--factory", "HNSW32", "--search-params", "bogus=1"],
                 capsys)
    assert "'bogus=1' do not fit a HNSW32 index" in err and not (tmp_path / "a.lkidx").exists()
    err = _fails([*build, "--out", str(tmp_path / "b.lkidx"), "--factory", "IVF1024,Flat"], capsys)
    assert "IVF1024,Flat index needs at least 1024 images" in err


def _damaged(source: Path, out: Path, member: str, data: bytes, compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(source) as z, zipfile.ZipFile(out, "w") as w:
        for name in z.namelist():
            w.writestr(name, data if name == member else z.read(name),
                       compress_type=compression if name == member else zipfile.ZIP_STORED)
    return out


@pytest.mark.slow  # several seconds: in the slow suite (CI runs both)
def test_damaged_and_hostile_index_files_get_one_message(trained: dict, catalogue, tmp_path: Path) -> None:
    good = tmp_path / "good.lkidx"
    FileCatalogue.build(trained["embedder"], catalogue[0], INLINE).save(good)
    with zipfile.ZipFile(good) as z:
        meta, blob = json.loads(z.read("meta.json")), z.read("index.faiss")
    cases = {
        "garbage blob": ("index.faiss", b"\x00" * 100, "FAISS index cannot be read"),
        "missing keys": ("meta.json", json.dumps({"format": meta["format"]}).encode(), "meta.json lacks"),
        "items of another index": ("items.json", b"[]", "does not match meta.json"),
        "items of the wrong types": ("items.json", json.dumps([{"id": "0", "path": 1, "label": None}] * meta["count"])
                                     .encode(), "an item is not"),
        "columns that are not text": ("items.json", json.dumps([{"id": i, "path": "/x", "label": "l", "fields": {
            "price": [1]}} for i in range(meta["count"])]).encode(), "an item is not"),
    }
    for name, (member, data, message) in cases.items():
        with pytest.raises(LookalikeError, match=message):
            FileCatalogue.load(_damaged(good, tmp_path / f"{name}.lkidx", member, data))
    bomb = _damaged(good, tmp_path / "bomb.lkidx", "items.json", b" " * (300 << 20), zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 1 << 20  # 300 MB of items.json in a file of 300 KB: refused unread
    with pytest.raises(LookalikeError, match="items.json is compressed"):
        FileCatalogue.load(bomb)
    long_texts = flat_catalogue([{f"列{c}": "長" * 256 for c in range(4)} | {"note": "=x" * 2000}
                                  for _ in range(600)])
    long_texts.items[0]["label"] = "ラベル" * 3000  # long labels and CJK columns: what build writes, load reads
    long_texts.save(tmp_path / "long.lkidx")
    assert FileCatalogue.load(tmp_path / "long.lkidx").items == long_texts.items
    # a FAISS index claiming 16 GB of vectors (less than this machine's memory and swap, so the allocation
    # itself would succeed and be filled): refused at once, without taking the memory
    lying = bytearray(blob)
    offset = lying.find(b"IxFI") + 4 + 33  # the flat vectors' length in floats, after the inner index's header
    assert struct.unpack("<Q", lying[offset:offset + 8])[0] == 5 * meta["dim"]
    lying[offset:offset + 8] = struct.pack("<Q", 4 << 30)
    hostile = _damaged(good, tmp_path / "lying.lkidx", "index.faiss", bytes(lying))
    probe = ("import resource, sys\nfrom lookalike.catalogue.file import FileCatalogue\nfrom lookalike.errors import "
             "LookalikeError\ntry:\n    FileCatalogue.load(sys.argv[1])\nexcept LookalikeError as e:\n    print('refused:', e)\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)")
    done = subprocess.run([sys.executable, "-c", probe, str(hostile)], capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines[0].startswith("refused: ") and int(lines[-1]) < 2000, done.stderr[-2000:]


# -- 7. nothing deleted that is not lookalike's ------------------------------------------------------------------
def test_a_build_never_deletes_a_folder_it_did_not_make(trained: dict, catalogue, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    notes = tmp_path / "notes.partial"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    err = _fails(["index", "build", "--embedder", trained["embedder"], "--images", str(catalogue[0]),
                  "--out", str(tmp_path / "notes"), "--workers", "0"], capsys)
    assert "is not lookalike's build in progress" in err and (notes / "todo.txt").read_text() == "mine"
    from lookalike.embedder.file import load_embedder
    from lookalike.catalogue.sharded import Processes, embed_sharded

    shards = tmp_path / "notes.shards"  # what --devices N embeds into: the same rule
    shards.mkdir()
    (shards / "todo.txt").write_text("mine")
    with pytest.raises(LookalikeError, match="is not lookalike's embedding shards folder"):
        embed_sharded(load_embedder(trained["embedder"]), [str(catalogue[0])], Processes(2, shards))
    assert (shards / "todo.txt").read_text() == "mine"


# -- 9. one file, one path ---------------------------------------------------------------------------------------
def test_catalogue_paths_are_resolved(tmp_path: Path, capsys: pytest.CaptureFixture, trained: dict,
                                      catalogue) -> None:
    (tmp_path / "cat" / "a").mkdir(parents=True)
    picture = tmp_path / "cat" / "a" / "x.jpg"
    picture.write_bytes(Path(catalogue[1][0]).read_bytes())
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "m.csv").write_text("path,label\n../cat/a/x.jpg,a\n")
    assert labelled_images(tmp_path / "lists" / "m.csv")[0]["path"] == labelled_images(tmp_path / "cat")[0]["path"]
    index = tmp_path / "c.lkidx"
    lookalike(["index", "build", "--embedder", trained["embedder"], "--images", str(tmp_path / "lists" / "m.csv"),
               "--out", str(index), "--workers", "0"])
    lookalike(["index", "add", "--index", str(index), "--images", str(tmp_path / "cat"), "--workers", "0"])
    assert "added 0 item(s); the index now holds 1" in capsys.readouterr().out
    lookalike(["index", "remove", "--index", str(index), "--paths", str(tmp_path / "lists" / ".." / "cat/a/x.jpg")])
    assert "removed 1 item(s); the index now holds 0" in capsys.readouterr().out


def test_fields_of_files_are_checked_before_use(trained: dict, catalogue, tmp_path: Path) -> None:
    """Sizes, thresholds and dimensions read from embedder, box, checkpoint and index files: of their type and
    within bounds, or one message (a box file's image_size=30000 once made a search allocate 21 GB)."""
    from lookalike.boxes.finder import BoxFinder, save_box_file
    from lookalike.embedder.file import load_embedder
    from lookalike.boxes.net import BoxNet

    def embedder_with(edit) -> Path:
        return _reloaded(Path(trained["embedder"]), tmp_path / "e.pt", edit)

    for edit, message in [(lambda p: p["model"].update(image_size=60000), "image size is 60000"),
                          (lambda p: p["model"].update(image_size="224"), "image size is '224'"),
                          (lambda p: p["model"]["head"].update(embedding_size=-3), "embedding size is -3"),
                          (lambda p: p.update(calibration={"threshold": "high"}), "calibrated threshold"),
                          (lambda p: p["model"]["backbone"].update(name=7), "backbone name"),
                          (lambda p: p.update(state_dict={"x": torch.zeros(1)}), "cannot be rebuilt")]:
        with pytest.raises(LookalikeError, match=message):
            load_embedder(embedder_with(edit))
    net = BoxNet("test_efficientnet", 32, pretrained=False)
    for size, confidence, message in [(30000, 0.5, "image size is 30000"), (32, "0.5", "min_confidence is '0.5'"),
                                      (32, 1.5, "min_confidence is 1.5"), (True, 0.5, "image size is True")]:
        save_box_file(net, tmp_path / "box.pt", 0.5)
        box = _reloaded(tmp_path / "box.pt", tmp_path / "bad_box.pt",
                        lambda p: (p["model"].update(image_size=size), p.update(min_confidence=confidence)))
        with pytest.raises(LookalikeError, match=message):
            BoxFinder.load(box)
    ckpt = _reloaded(Path(trained["best_checkpoint"]), tmp_path / "big.ckpt",
                     lambda p: p["hyper_parameters"]["config"]["model"].update(image_size=60000))
    with pytest.raises(LookalikeError, match="model.image_size is 60000"):
        load_checkpoint(ckpt)
    good = tmp_path / "good.lkidx"
    FileCatalogue.build(trained["embedder"], catalogue[0], INLINE).save(good)
    with zipfile.ZipFile(good) as z:
        meta = json.loads(z.read("meta.json"))
    for field, value in [("dim", 10**9), ("dim", "16"), ("count", -1), ("rerank", 1.5), ("search_params", [1])]:
        bad = _damaged(good, tmp_path / f"{field}.lkidx", "meta.json", json.dumps({**meta, field: value}).encode())
        with pytest.raises(LookalikeError, match=f"its {field} is"):
            FileCatalogue.load(bad)


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The message of a command argparse refuses (exit status 2, the usage line, no traceback)."""
    with pytest.raises(SystemExit) as stop:
        lookalike(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err and err.startswith("usage: "), err
    return err.strip().splitlines()[-1]


def test_loose_ends_get_one_message_and_never_hang(trained: dict, catalogue, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import threading
    import warnings

    index = tmp_path / "c.lkidx"
    build = ["index", "build", "--embedder", trained["embedder"], "--images", str(catalogue[0]), "--workers", "0"]
    assert "argument --batch-size: 0 is out of range" in _usage_error([*build, "--out", str(index), "--batch-size",
                                                                       "0"], capsys)
    assert "collection name" in _usage_error([*build, "--out", str(tmp_path / "c.db"), "--backend", "milvus",
                                              "--collection", "a/b"], capsys)
    lookalike([*build, "--out", str(index)])
    capsys.readouterr()
    serve = ["serve", "--index", str(index)]
    assert "argument --port: 99999 is out of range" in _usage_error([*serve, "--port", "99999"], capsys)
    assert "argument --qe: -3 is out of range" in _usage_error([*serve, "--qe", "-3"], capsys)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "full.lkidx"))

    with monkeypatch.context() as patch:  # a full disk while the index is written
        patch.setattr(zipfile.ZipFile, "writestr", full)
        assert "the disk is full" in _fails([*build, "--out", str(tmp_path / "full.lkidx")], capsys)
    assert not (tmp_path / "full.lkidx").exists() and not list(tmp_path.glob(".full.lkidx.*"))
    (tmp_path / "broken.db").write_bytes(os.urandom(5000))  # a Milvus Lite database that is not one
    photo = _png(tmp_path / "photo.png", 40, 40)
    assert "is not a Milvus Lite database" in _fails(["search", "--backend", "milvus", "--index",
                                                      str(tmp_path / "broken.db"), str(photo)], capsys)

    fifo = tmp_path / "pipe.jpg"  # opening a FIFO for reading waits for a writer: never opened
    os.mkfifo(fifo)
    problems = []
    reader = threading.Thread(target=lambda: problems.append(image_problem(str(fifo))), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive() and "not a regular file" in problems[0]
    with pytest.raises(LookalikeError, match="not a regular file"):
        load_rgb(str(fifo))

    shop = tmp_path / "shop" / "mugs"  # a picture and a link to it: one item, one path
    shop.mkdir(parents=True)
    _png(shop / "a.png", 20, 20)
    (shop / "b.png").symlink_to(shop / "a.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = labelled_images(tmp_path / "shop")
    assert [it["path"] for it in items] == [str((shop / "a.png").resolve())]
    assert any("names 1 file(s) twice" in str(w.message) for w in caught)


def test_a_page_bound_to_ipv6_loopback_answers_its_own_name(trained: dict, catalogue, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lookalike.serve.app import LOOPBACK_NAMES, create_app

    from lookalike.serve.page import PageOptions

    FileCatalogue.build(trained["embedder"], catalogue[0], INLINE).save(tmp_path / "c.lkidx")
    app = create_app(tmp_path / "c.lkidx", PageOptions(allowed_hosts=LOOPBACK_NAMES))
    assert TestClient(app, base_url="http://[::1]:8000").get("/api/items/0").status_code == 200
    assert TestClient(app, base_url="http://[::2]:8000").get("/api/items/0").status_code == 400
