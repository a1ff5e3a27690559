"""Files: atomic writes (a crash or a kill mid-write leaves the previous file, or none, never half a file), the
``latest`` link of a run folder, and the cache folder of generated and derived data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

# Generated and derived data (the synthetic set, resized copies, query photos); conf/paths/default.yaml says
# the same for configs.
DEFAULT_CACHE_DIR = "~/.cache/lookalike"


def cache_dir() -> str:
    """The cache folder: ``$LOOKALIKE_CACHE``, else :data:`DEFAULT_CACHE_DIR`."""
    return os.environ.get("LOOKALIKE_CACHE", DEFAULT_CACHE_DIR)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


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
