"""Finding images: every image file below a folder, the rows of a CSV or parquet list, and labelled images from a
folder or a manifest."""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path
from typing import Any

from lookalike.errors import LookalikeError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


MANIFEST_SUFFIXES = (".csv", ".parquet", ".jsonl")


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV, parquet or JSON-lines table as dicts of text (a JSON line lacks the columns it has no
    value for, where a CSV row has them empty)."""
    if path.suffix.lower() == ".jsonl":
        with open(path) as f:
            try:
                rows = [json.loads(line) for line in f if line.strip()]
            except json.JSONDecodeError as e:
                raise LookalikeError(f"Manifest '{path}' line {e.lineno}: not JSON ({e.msg})") from None
        if not all(isinstance(r, dict) for r in rows):
            raise LookalikeError(f"Manifest '{path}': each line must be a JSON object")
        return [{str(k): "" if v is None else str(v) for k, v in r.items()} for r in rows]
    if path.suffix.lower() == ".parquet":
        try:
            import pandas as pd
        except ImportError as e:
            raise LookalikeError("Reading a parquet manifest needs pandas and pyarrow: pip install pandas pyarrow") from e
        return pd.read_parquet(path).fillna("").astype(str).to_dict("records")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def list_image_files(folder: str | Path) -> list[str]:
    """Every image file below ``folder`` (by suffix; symbolic links to folders followed), sorted."""
    return sorted(os.path.join(parent, name) for parent, _, names in os.walk(folder, followlinks=True)
                  for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES)


MAX_FIELD_CHARS = 256  # longest value of an extra manifest column kept with a catalogue item


def labelled_images(source: str | Path) -> list[dict[str, Any]]:
    """Items (``path``: absolute and resolved, so one file has one path however it is named; ``label``) from a
    folder (recursively; an image's folder is its label, none for images directly in ``source``) or from a
    CSV/parquet/JSON-lines manifest with ``path[,label]`` (paths relative to it); a manifest's other columns
    (brand, category, ...) come as each item's ``fields``."""
    source = Path(source).expanduser().resolve()
    if source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES:
        rows = read_rows(source)
        if not rows or "path" not in rows[0]:
            raise LookalikeError(f"Manifest '{source}' needs a path column (and optionally label)")
        return _once([{"path": str((source.parent / r["path"]).resolve()), "label": r.get("label", ""),
                       **({"fields": fields} if (fields := _fields(source, r)) else {})} for r in rows], source)
    if not source.is_dir():
        raise LookalikeError(f"--images: '{source}' is neither a folder of images nor a manifest "
                             f".csv/.parquet/.jsonl")
    files = list_image_files(source)
    if not files:
        raise LookalikeError(f"--images: no images under '{source}'")
    return _once([{"path": str(Path(p).resolve()), "label": Path(p).parent.name if Path(p).parent != source else ""}
                  for p in files], source)


def _once(items: list[dict[str, Any]], source: Path) -> list[dict[str, Any]]:
    """Each file once (the first of its names: a symbolic link and its target, a path listed twice), with a
    warning saying how many names were left out."""
    seen: set[str] = set()
    kept = [it for it in items if not (it["path"] in seen or seen.add(it["path"]))]
    if len(kept) < len(items):
        warnings.warn(f"'{source}' names {len(items) - len(kept)} file(s) twice (links to the same file, or repeated "
                      "rows): each is kept once, with its first name's label")
    return kept


def _fields(source: Path, row: dict[str, str]) -> dict[str, str]:
    """A manifest row's columns other than path and label, refused when a value is too long to keep."""
    fields = {str(k): "" if v is None else str(v) for k, v in row.items() if k not in ("path", "label") and k is not None}
    long = [k for k, v in fields.items() if len(v) > MAX_FIELD_CHARS or len(k) > MAX_FIELD_CHARS]
    if long:
        raise LookalikeError(f"Manifest '{source}': column {long[0]!r} has a value over {MAX_FIELD_CHARS} "
                             f"characters ({row.get('path')}); keep long texts out of the manifest")
    return fields
