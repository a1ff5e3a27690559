"""``lookalike download NAME --root DIR``: fetch a benchmark, verify it, unpack it. Resumable.

Offline it fails at once with one message; an interrupted download continues where it stopped
(HTTP Range) the next time; a file whose MD5 differs from the published one is deleted.
"""

from __future__ import annotations

import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tqdm.auto import tqdm

from lookalike.errors import LookalikeError
from lookalike.files import file_digest
from lookalike.net import connection_error


@dataclass(frozen=True)
class Remote:
    """One published file and its MD5."""

    url: str
    md5: str

    @property
    def filename(self) -> str:
        return Path(urlparse(self.url).path).name


@dataclass(frozen=True)
class Benchmark:
    files: tuple[Remote, ...]
    data_root: str  # the folder to pass as data.root, relative to --root
    config: str  # the data= option
    manual: str = ""  # set when the files cannot be fetched automatically


BENCHMARKS: dict[str, Benchmark] = {
    "cub200": Benchmark(
        (Remote("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                "97eceeb196236b17998738112f37df78"),), "CUB_200_2011", "cub200"),
    "cars196": Benchmark(
        (Remote("http://imagenet.stanford.edu/internal/car196/car_ims.tgz", "d5c8f0aa497503f355e17dc7886c3f14"),
         Remote("http://imagenet.stanford.edu/internal/car196/cars_annos.mat", "b407c6086d669747186bd1d764ff9dbc")),
        ".", "cars196"),
    "sop": Benchmark(
        (Remote("http://ftp.cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
                "7f73d41a2f44250d4779881525aea32e"),), "Stanford_Online_Products", "sop"),
    "inshop": Benchmark((), ".", "inshop", manual=(
        "DeepFashion In-Shop is distributed through Google Drive after accepting its licence, so it cannot be "
        "fetched automatically. From the In-shop Clothes Retrieval Benchmark page of DeepFashion download "
        "Img/img.zip and Eval/list_eval_partition.txt, then unpack img.zip into {root} and put "
        "list_eval_partition.txt beside the img/ folder.")),
}


def _check_reachable(url: str, timeout: float = 5.0) -> None:
    error = connection_error(url, timeout)
    if error is not None:
        host = urlparse(url).hostname
        raise LookalikeError(f"Cannot reach {host} to download {url} ({error}). Are you offline? "
                             f"Download the file elsewhere and put it in the --root folder; it is then "
                             f"verified and unpacked without network.") from error


def md5sum(path: Path) -> str:
    return file_digest(path, "md5")


def fetch(remote: Remote, folder: Path, timeout: float = 60.0) -> Path:
    """Download ``remote`` into ``folder`` (continuing a ``.part`` file), verify its MD5, return its path."""
    target = folder / remote.filename
    if target.exists():
        if md5sum(target) == remote.md5:
            return target
        target.unlink()
    _check_reachable(remote.url)
    part = folder / (remote.filename + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(remote.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = have > 0 and response.status == 206
            total = (response.length or 0) + (have if resumed else 0)
            with open(part, "ab" if resumed else "wb") as out, tqdm(
                    total=total or None, initial=have if resumed else 0, unit="B", unit_scale=True,
                    desc=remote.filename) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        if total and part.stat().st_size < total:
            raise OSError(f"connection closed after {part.stat().st_size} of {total} bytes")
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the .part file is already complete
            pass
        else:
            raise LookalikeError(f"Download of {remote.url} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise LookalikeError(f"Download of {remote.url} stopped ({e}); run the same command again to "
                             f"continue where it stopped") from e
    if md5sum(part) != remote.md5:
        part.unlink()
        raise LookalikeError(f"{remote.filename}: MD5 differs from the published {remote.md5}; the damaged file "
                             f"was deleted, run the command again")
    part.rename(target)
    return target


def extract(archive: Path, folder: Path) -> None:
    """Unpack a .tgz/.tar/.zip once (a marker file remembers it), refusing paths that leave ``folder``."""
    marker = folder / f".{archive.name}.extracted"
    if marker.exists():
        return
    if archive.suffix in (".tgz", ".gz", ".tar"):
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
    elif archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            root = folder.resolve()
            for name in z.namelist():
                if not (folder / name).resolve().is_relative_to(root):
                    raise LookalikeError(f"{archive.name}: unsafe path {name!r} in the archive")
            z.extractall(folder)
    else:
        return
    marker.touch()


def download(name: str, root: str | Path) -> Path:
    """Fetch, verify and unpack benchmark ``name`` under ``root``; returns the folder for data.root."""
    if name not in BENCHMARKS:
        raise LookalikeError(f"Unknown data set {name!r}; choose one of {sorted(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    folder = Path(root).expanduser()
    if bench.manual:
        raise LookalikeError(bench.manual.format(root=folder))
    folder.mkdir(parents=True, exist_ok=True)
    for remote in bench.files:
        extract(fetch(remote, folder), folder)
    return folder / bench.data_root
