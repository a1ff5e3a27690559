"""Omniglot in its published layout (github.com/brendenlake/omniglot): alphabets of handwritten characters.

A class is one character of one alphabet. The zero-shot split is by alphabet: the ``train`` parts
(folders or zips, e.g. ``images_background``) give the training alphabets, the ``test`` parts
(``images_evaluation``) the test alphabets; an alphabet found in both is used in neither, so no
test alphabet is ever seen in training (the small subsets ``images_background_small1``/``small2``
share Greek and Latin).
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from lookalike.data.download import extract
from lookalike.data.table import ImageTable, Splits, missing_data, resolve_root
from lookalike.files import DEFAULT_CACHE_DIR

log = logging.getLogger(__name__)

LAYOUT = """  ROOT/images_background/<Alphabet>/character01/0709_01.png   (or ROOT/images_background.zip)
  ROOT/images_evaluation/<Alphabet>/character01/....png        (or ROOT/images_evaluation.zip)
  (the zips of github.com/brendenlake/omniglot/python; zips are unpacked once into the cache folder)"""


def _part_folder(root: Path, part: str, cache_dir: Path) -> Path:
    """The folder of one part: ``root/part/`` or ``root/part.zip`` unpacked (once) under ``cache_dir``."""
    folder = root / part
    if folder.is_dir():
        return folder
    archive = root / f"{part}.zip"
    if not archive.is_file():
        raise missing_data(folder, "Omniglot", LAYOUT)
    stat = archive.stat()
    target = cache_dir.expanduser() / "omniglot" / f"{part}-{stat.st_size}-{int(stat.st_mtime)}"
    target.mkdir(parents=True, exist_ok=True)
    try:
        extract(archive, target)  # once: a marker file is written when the archive is fully unpacked
    except zipfile.BadZipFile as e:
        raise missing_data(archive, f"Omniglot ({archive.name} is not a readable zip: {e})", LAYOUT) from None
    inner = target / part  # the published zips hold one top folder named like the zip
    return inner if inner.is_dir() else target


def _alphabets(folder: Path) -> dict[str, Path]:
    return {d.name: d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")}


def _table(alphabets: dict[str, Path]) -> ImageTable:
    paths, labels, names = [], [], []
    for alphabet, folder in sorted(alphabets.items()):
        for character in sorted(d for d in folder.iterdir() if d.is_dir()):
            files = sorted(str(f) for f in character.glob("*.png"))
            paths += files
            labels += [len(names)] * len(files)
            names.append(f"{alphabet}/{character.name}")
    return ImageTable(paths, np.array(labels, dtype=np.int64), class_names=names)


def omniglot(root: str | Path, train: Sequence[str] = ("images_background",),
             test: Sequence[str] = ("images_evaluation",), cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Splits:
    """Training alphabets from the ``train`` parts, test alphabets from the ``test`` parts (by alphabet)."""
    path = resolve_root(root, "Omniglot", LAYOUT)
    cache = Path(cache_dir)
    train_alphabets = {k: v for part in train for k, v in _alphabets(_part_folder(path, part, cache)).items()}
    test_alphabets = {k: v for part in test for k, v in _alphabets(_part_folder(path, part, cache)).items()}
    shared = sorted(set(train_alphabets) & set(test_alphabets))
    if shared:
        log.info("Omniglot: alphabets %s are in both the training and the test parts; used in neither", shared)
    train_table = _table({k: v for k, v in train_alphabets.items() if k not in shared})
    test_table = _table({k: v for k, v in test_alphabets.items() if k not in shared})
    for name, table in (("training", train_table), ("test", test_table)):
        if len(table) == 0:
            raise missing_data(path, f"Omniglot (no {name} images left in parts {train if name == 'training' else test})",
                               LAYOUT)
    return Splits(train=train_table, test=test_table)
