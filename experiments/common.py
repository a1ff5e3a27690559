"""What the benchmark scripts share: the machine description, writing a results section, synthetic embeddings
and the zero-shot splits of the real data sets. Scripts run as ``python experiments/NAME.py`` import it as
``common`` (Python puts the script's folder first on the module path)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from lookalike.data.image_folder import image_folder
from lookalike.data.omniglot import omniglot
from lookalike.data.table import Splits

CLASS_SIZE = 10  # images per class of make_data (between SOP's ~5 and CUB's ~60)


def make_data(n: int, dim: int, seed: int = 0, noise: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors: every class around its own centre (per-dimension noise ``noise`` times the
    centre's), so the metrics are not trivial; two members of a class have cosine about 1/(1+noise^2)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) // CLASS_SIZE
    centres = rng.standard_normal((labels.max() + 1, dim), dtype=np.float32)
    x = centres[labels] + noise * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def machine() -> str:
    import faiss
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"faiss {faiss.__version__} ({faiss.get_num_gpus()} FAISS GPUs)")


def record(runs: Path, result: dict) -> dict:
    """``result`` stamped with the date, this machine and the command line, printed and appended to ``runs`` (a
    JSON line a run: results a benchmark keeps as it goes)."""
    result = {**result, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "command": "python " + " ".join(sys.argv)}
    print(json.dumps(result), flush=True)
    with runs.open("a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def report(lines: list[str], out: str | None) -> None:
    """Print a Markdown section and append it to ``out`` if given."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        with open(out, "a") as f:
            f.write(text)


def splits(name: str, root: str) -> Splits:
    """The zero-shot splits of the issue: flowers17 classes 01-08 / 09-17; Omniglot small1-only / small2-only;
    any other folder: 90% of its classes train."""
    if name == "flowers17":
        return image_folder(root, train_classes=8)
    if name == "folder":
        return image_folder(root, train_classes=0.9)
    return omniglot(root, ["images_background_small1"], ["images_background_small2"])
