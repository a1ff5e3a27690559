"""Helpers the tests share: tiny configs and tiny images written into temporary folders (no network, no
../shared). Fixtures built from them are in conftest.py."""

from __future__ import annotations

import socket
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from PIL import Image

from lookalike.catalogue.backends import build_catalogue, editing, open_catalogue
from lookalike.catalogue.base import Catalogue
from lookalike.catalogue.build import BuildOptions
from lookalike.config import compose

# Catalogue builds that decode in the test's own process (no loader workers to start).
INLINE = BuildOptions(num_workers=0)


@dataclass(frozen=True)
class Place:
    """Where a test's catalogue lives: a backend, its file or server, and its collection on the server."""

    backend: str
    location: str
    collection: str | None = None

    def build(self, embedder: str | Path, images: str | Path, options: BuildOptions = INLINE) -> Catalogue | None:
        return build_catalogue(self.location, embedder, images, self.backend, self.collection, options)

    def open(self) -> Catalogue:
        return open_catalogue(self.location, self.backend, self.collection)

    def editing(self) -> AbstractContextManager[Catalogue]:
        return editing(self.location, self.backend, self.collection)

    def args(self) -> list[str]:
        """The command-line flags naming it."""
        return ["--index", self.location, "--backend", self.backend] + \
            (["--collection", self.collection] if self.collection else [])

# A tiny, fast timm model and tiny images: a training step takes milliseconds on a CPU.
TINY_MODEL = [
    "model.backbone.name=test_efficientnet",
    "model.backbone.pretrained=false",
    "model.head.embedding_size=16",
    "model.image_size=32",
]

# The synthetic set of tiny_overrides, as synthetic_products arguments.
TINY_DATA = dict(num_train_products=10, num_test_products=5, photos_per_product=3, image_size=40)


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


def module_and_data(cfg: DictConfig) -> tuple:
    """The LitEmbedder and the training DataModule of ``cfg``, as ``train.run`` builds them."""
    from omegaconf import OmegaConf

    from lookalike.models.lit_embedder import LitEmbedder
    from lookalike.data.datamodule import build_datamodule

    dm = build_datamodule(cfg)
    module = LitEmbedder(OmegaConf.to_container(cfg, resolve=True), dm.num_train_classes)
    dm.preprocessing = module.embedder.preprocessing
    return module, dm


def compose_config(overrides: list[str], name: str = "train") -> DictConfig:
    """Compose a config from the project's conf/ folder, as `python train.py` would."""
    return compose(name, overrides)


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


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def file_catalogue(items: list[dict], vectors: np.ndarray) -> Any:
    """A Flat file catalogue of ``items`` (path, label, fields; numbered in order) and their ``vectors``, with no
    embedder behind it: for tests of searching and filtering."""
    from lookalike.catalogue.file import FORMAT, FileCatalogue
    from lookalike.retrieval.knn import FaissIndex, default_search_params

    dim = vectors.shape[1]
    meta = {"format": FORMAT, "embedder_hash": "x", "dim": dim, "factory": "Flat", "search_params": "", "count": 0,
            "next_id": len(items), "embedder": "none", "rerank": 0, "dba": None}
    index = FileCatalogue(FaissIndex(dim, "Flat", search_params=default_search_params("Flat"), ids=True), [], meta)
    index.add_vectors([{**it, "id": i} for i, it in enumerate(items)], vectors)
    return index
