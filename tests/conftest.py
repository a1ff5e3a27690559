"""Shared fixtures: tiny data made in temporary folders and tiny configs (no network, no ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig
from PIL import Image

from lookalike.config import compose

# A tiny, fast timm model and tiny images: a training step takes milliseconds on a CPU.
TINY_MODEL = [
    "model.backbone.name=test_efficientnet",
    "model.backbone.pretrained=false",
    "model.head.embedding_size=16",
    "model.image_size=32",
]


def tiny_overrides(cache: Path, out: Path | None = None) -> list[str]:
    """Overrides that make the default (quickstart) config train in a second or two. Without ``out``
    (for ``train.py`` in a subprocess) the output folder is Hydra's run folder (``hydra.run.dir``)."""
    return TINY_MODEL + (["paths.output_dir=" + str(out)] if out is not None else []) + [
        f"data.root={cache}",
        "data.source.num_train_products=10",
        "data.source.num_test_products=5",
        "data.source.photos_per_product=3",
        "data.source.image_size=40",
        "data.batch_size=16",
        "data.eval_batch_size=32",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "eval.baseline=false",
        "eval.before=false",
    ]


def compose_config(overrides: list[str], name: str = "train") -> DictConfig:
    """Compose a config from the project's conf/ folder, as `python train.py` would."""
    return compose(name, overrides)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the synthetic set, shared by the whole session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_cfg(data_cache: Path, tmp_path: Path) -> DictConfig:
    return compose_config(tiny_overrides(data_cache, tmp_path / "run"))


def write_image(path: Path, color: tuple[int, int, int], size: int = 24, seed: int = 0) -> None:
    """A small JPEG: a solid colour with noise, so images of one class are alike but not equal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).normal(0, 12, (size, size, 3))
    Image.fromarray(np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)).save(path)


def write_omniglot_part(root: Path, part: str, alphabets: list[str], characters: int = 2, drawings: int = 4) -> None:
    """Omniglot's published layout: ``root/part/<Alphabet>/characterNN/<drawing>.png``."""
    for a, alphabet in enumerate(alphabets):
        for c in range(characters):
            for i in range(drawings):
                write_image(root / part / alphabet / f"character{c + 1:02d}" / f"{a}{c}_{i:02d}.png",
                            (60 * a, 100 * c, 90), size=12, seed=i)


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
