"""Files: atomic writes (a crash or a kill mid-write leaves the previous file, or none, never half a file), locks
for read-modify-writes, the ``latest`` link of a run folder, and the cache folder of generated and derived data."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import FileLock, Timeout

from lookalike.errors import LookalikeError

# Generated and derived data (the synthetic set, resized copies, query photos); conf/paths/default.yaml says
# the same for configs.
DEFAULT_CACHE_DIR = "~/.cache/lookalike"


# How long a writer of a catalogue index or an embedder file waits for another one to finish.
LOCK_TIMEOUT_S = float(os.environ.get("LOOKALIKE_LOCK_TIMEOUT", 600))


def cache_dir() -> str:
    """The cache folder: ``$LOOKALIKE_CACHE``, else :data:`DEFAULT_CACHE_DIR`."""
    return os.environ.get("LOOKALIKE_CACHE", DEFAULT_CACHE_DIR)


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        return 0o022


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files that writers of ``path`` which were killed mid-write left behind (their process is gone)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read a megabyte at a time."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, then rename it onto ``path``.

    The file keeps the permissions (and, where allowed, the owner) of the one it replaces, or gets those a new
    file would; a symbolic link is written through, to its target; the file and its folder are synced to disk
    before and after the rename; the temporary file is removed on failure, and those of killed writers on the
    next write. Returns ``path`` as given."""
    given = Path(path)
    path = Path(os.path.realpath(given.expanduser()))
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        if path.exists():
            st = path.stat()
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except PermissionError:
                pass
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return given


@contextmanager
def locked(path: str | Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the lock of ``path`` (the file ``<path>.lock`` beside it) for a read-modify-write: another lookalike
    process changing the same file waits for it, and after ``timeout`` seconds gives up with one message."""
    target = os.path.realpath(Path(path).expanduser())
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(target + ".lock")
    try:
        lock.acquire(timeout=timeout)
    except Timeout as e:
        raise LookalikeError(f"'{path}' is being changed by another lookalike process (its lock {target}.lock was "
                             f"held for more than {timeout:g} s): try again once that process has finished") from e
    try:
        yield
    finally:
        lock.release()


def claim_folder(folder: Path, marker: str, what: str) -> None:
    """Make ``folder`` lookalike's own working folder, with the file ``marker`` in it that says so; a folder of that
    name without the marker is someone else's and is refused (``what`` names the folder's use in the message)."""
    if folder.exists() and not (folder / marker).is_file():
        raise LookalikeError(f"'{folder}' exists and is not lookalike's {what}: move it away, or choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / marker).touch()


def release_folder(folder: Path, marker: str) -> None:
    """Remove ``folder`` with everything in it, only if it is lookalike's own (it holds ``marker``)."""
    if (folder / marker).is_file():
        shutil.rmtree(folder, ignore_errors=True)


def link_latest(folder: str | Path) -> None:
    """Point ``<parent>/latest`` at ``folder`` (replacing an older link atomically), so that the last run
    has a fixed name; skipped where the file system has no symbolic links."""
    folder = Path(folder)
    link, tmp = folder.parent / "latest", folder.parent / f".latest.{os.getpid()}"
    try:
        os.symlink(folder.name, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        if os.path.lexists(tmp):
            os.unlink(tmp)


MAX_INPUT_SIDE = 1024  # the largest model input side a lookalike file may ask for (a 64-image batch: 0.8 GB)
MAX_DIM = 65_536  # the largest embedding size


def number_field(value: Any, name: str, source: str | Path, low: float, high: float, integer: bool = False) -> Any:
    """``value``, the field ``name`` read from the file ``source``, if it is a number (an integer with ``integer``)
    within [``low``, ``high``]; else one message. Every number read from a file goes through here before use."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise LookalikeError(f"'{source}' is damaged or not lookalike's: its {name} is {repr(value)[:40]}, not "
                             f"{kind} from {low:g} to {high:g}")
    return value


def text_field(value: Any, name: str, source: str | Path, longest: int = 200) -> str:
    """``value``, the field ``name`` read from ``source``, if it is text of at most ``longest`` characters."""
    if not isinstance(value, str) or len(value) > longest:
        raise LookalikeError(f"'{source}' is damaged or not lookalike's: its {name} is not text of at most "
                             f"{longest} characters")
    return value
