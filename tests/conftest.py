"""Shared fixtures: tiny data made in temporary folders and tiny configs (no network, no ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig

from lookalike.data.synthetic import synthetic_products
from tests.helpers import TINY_DATA, compose_config, tiny_overrides, write_image, write_omniglot_part

@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the synthetic set, shared by the whole session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_cfg(data_cache: Path, tmp_path: Path) -> DictConfig:
    return compose_config(tiny_overrides(data_cache, tmp_path / "run"))


@pytest.fixture
def fake_omniglot(tmp_path: Path) -> Path:
    """Omniglot with 3 background alphabets (12 characters) and 2 evaluation alphabets, unpacked."""
    root = tmp_path / "omniglot"
    write_omniglot_part(root, "images_background", ["Balinese", "Greek", "Korean"], characters=4)
    write_omniglot_part(root, "images_evaluation", ["Sanskrit", "Tagalog"])
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """An image folder with 6 classes of 5 images each."""
    root = tmp_path / "folder"
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]
    for c, color in enumerate(colors):
        for i in range(5):
            write_image(root / f"class_{c}" / f"img_{i}.jpg", color, seed=10 * c + i)
    return root


@pytest.fixture
def fake_cub(tmp_path: Path) -> Path:
    """CUB-200-2011's published layout with 200 classes of 2 images each (tiny JPEGs)."""
    root = tmp_path / "CUB_200_2011"
    lines, labels = [], []
    rng = np.random.default_rng(0)
    for c in range(1, 201):
        for j in range(2):
            i = len(lines) + 1
            rel = f"{c:03d}.Bird_{c}/Bird_{c}_{j}.jpg"
            write_image(root / "images" / rel, tuple(int(v) for v in rng.integers(0, 255, 3)), size=16, seed=i)
            lines.append(f"{i} {rel}")
            labels.append(f"{i} {c}")
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return root


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny training run shared by the tests: its report (checkpoint, embedder file, metrics)."""
    from lookalike.train import run

    base = tmp_path_factory.mktemp("trained")
    return run(compose_config(tiny_overrides(base / "cache", base / "run") + ["logger=none"]))




@pytest.fixture
def catalogue(trained: dict, tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    """A manifest of the test products' catalogue pictures, and their photos with labels."""
    cache = Path(trained["embedder"]).parents[1] / "cache"
    test = synthetic_products(cache, **TINY_DATA).test
    names = test.label_names()
    rows = ["path,label"] + [f"{p},{n}" for p, n in zip(test.paths, names) if p.endswith("catalogue.jpg")]
    (tmp_path / "catalog.csv").write_text("\n".join(rows) + "\n")
    photos = [(p, n) for p, n in zip(test.paths, names) if "photo" in p]
    return tmp_path / "catalog.csv", [p for p, _ in photos], [n for _, n in photos]
