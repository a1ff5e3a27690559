"""`lookalike download`: resumable, verified, unpacked; offline it fails at once (local HTTP server only)."""

from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from lookalike.data import download as dl
from lookalike.errors import LookalikeError


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one in-memory file, honouring Range requests; can cut the first response short."""

    payload = b""
    cut_after: int | None = None

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_after is not None:
            body, type(self).cut_after = body[: self.cut_after], None
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"1 001.Bird/a.jpg\n" * 2000
        info = tarfile.TarInfo("CUB_200_2011/images.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    _RangeHandler.payload = buf.getvalue()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/CUB_200_2011.tgz", hashlib.md5(_RangeHandler.payload).hexdigest()
    httpd.shutdown()


def test_download_resumes_verifies_and_extracts(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, md5 = server
    monkeypatch.setitem(dl.BENCHMARKS, "cub200", dl.Benchmark((dl.Remote(url, md5),), "CUB_200_2011", "cub200"))
    _RangeHandler.cut_after = 100  # the first transfer breaks off after 100 bytes
    with pytest.raises(LookalikeError, match="run the same command again"):
        dl.download("cub200", tmp_path)
    assert (tmp_path / "CUB_200_2011.tgz.part").stat().st_size == 100
    root = dl.download("cub200", tmp_path)  # continues from byte 100
    assert root == tmp_path / "CUB_200_2011" and (root / "images.txt").is_file()
    assert dl.md5sum(tmp_path / "CUB_200_2011.tgz") == md5
    assert dl.download("cub200", tmp_path) == root  # everything done: nothing fetched again


def test_download_deletes_a_file_with_the_wrong_checksum(server, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = server
    monkeypatch.setitem(dl.BENCHMARKS, "cub200", dl.Benchmark((dl.Remote(url, "0" * 32),), "CUB_200_2011", "cub200"))
    with pytest.raises(LookalikeError, match="MD5 differs"):
        dl.download("cub200", tmp_path)
    assert not list(tmp_path.glob("CUB_200_2011.tgz*"))


def test_download_offline_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    remote = dl.Remote(f"http://127.0.0.1:{port}/x.tgz", "0" * 32)
    monkeypatch.setitem(dl.BENCHMARKS, "cub200", dl.Benchmark((remote,), ".", "cub200"))
    with pytest.raises(LookalikeError, match="Are you offline"):
        dl.download("cub200", tmp_path)


def test_inshop_explains_the_manual_steps(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "lookalike.cli", "download", "inshop", "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "list_eval_partition.txt" in done.stderr and "Traceback" not in done.stderr
