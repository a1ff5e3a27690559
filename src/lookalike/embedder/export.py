"""Exports of an embedder: the native embedder file, TorchScript or ONNX, each checked against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lookalike.choices import EXPORT_FORMATS
from lookalike.errors import LookalikeError
from lookalike.files import atomic_write
from lookalike.embedder.file import load_embedder, save_embedder
from lookalike.embedder.source import load_source

TOLERANCE = 1e-4  # max abs difference of an export's embeddings from the PyTorch model's


def _runner(path: Path, fmt: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function running the exported file on a batch, to check it against PyTorch."""
    if fmt == "native":
        model = load_embedder(path)
        return lambda x: model(torch.from_numpy(x)).detach().numpy()
    if fmt == "torchscript":
        model = torch.jit.load(str(path))
        return lambda x: model(torch.from_numpy(x)).detach().numpy()
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise LookalikeError("Checking an ONNX export needs onnxruntime: pip install onnxruntime") from e
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x})[0]


def export(source: str | Path, out: str | Path, fmt: str = "native", samples: int = 4) -> float:
    """Export the embedder of ``source`` to ``out`` in ``fmt``; returns the max abs difference of the
    export's embeddings from PyTorch's on ``samples`` random inputs (above TOLERANCE is an error)."""
    if fmt not in EXPORT_FORMATS:
        raise LookalikeError(f"--format {fmt!r}: choose one of {EXPORT_FORMATS}")
    embedder, prov = load_source(source)
    embedder = embedder.cpu().eval()
    out = Path(out)
    size = embedder.preprocessing["input_size"]
    example = torch.randn(2, *size)
    meta = json.dumps({"model": embedder.config, "preprocessing": embedder.preprocessing})
    if fmt == "native":
        save_embedder(embedder, out, **prov)
    elif fmt == "torchscript":
        traced = torch.jit.trace(embedder, example)
        atomic_write(out, lambda tmp: torch.jit.save(traced, tmp, _extra_files={"lookalike.json": meta}))
    else:
        def write_onnx(tmp: str) -> None:
            program = torch.onnx.export(embedder, (example,), input_names=["images"], output_names=["embeddings"],
                                        dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, dynamo=True)
            program.model.metadata_props["lookalike"] = meta
            program.save(tmp)

        atomic_write(out, write_onnx)
    x = torch.randn(samples, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = embedder(x).numpy()
    got = _runner(out, fmt)(x.numpy())
    diff = float(np.abs(got - want).max())
    if diff > TOLERANCE:
        raise LookalikeError(f"The {fmt} export differs from the PyTorch model by {diff:.2e} (> {TOLERANCE}); "
                             f"'{out}' should not be used")
    return diff
