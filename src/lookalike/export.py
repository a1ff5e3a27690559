"""The embedder file: one self-contained file that rebuilds a trained embedder without Hydra or Lightning.

It holds the weights, the architecture (timm name, pooling, head, image size), the preprocessing
(size, mean, std, interpolation, crop) and provenance (training config, metrics, versions).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lookalike.errors import LookalikeError
from lookalike.files import atomic_write
from lookalike.models.embedder import Embedder

FORMAT = "lookalike-embedder/1"


def save_embedder(embedder: Embedder, path: str | Path, **provenance: Any) -> Path:
    """Write ``embedder`` to ``path`` atomically (a crash leaves the previous file intact).

    ``provenance`` (e.g. training_config, metrics, versions) is stored as given.
    """
    payload = {
        "format": FORMAT,
        "model": embedder.config,
        "preprocessing": embedder.preprocessing,
        "state_dict": {k: v.detach().cpu() for k, v in embedder.state_dict().items()},
        "provenance": provenance,
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_embedder_file(path: str | Path) -> dict[str, Any]:
    """The raw contents of an embedder file, or one clear error for a missing, corrupt or foreign file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LookalikeError(f"No embedder file at '{path}'")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle and torch errors for corrupt or foreign files
        raise LookalikeError(f"'{path}' is not a readable embedder file ({e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise LookalikeError(f"'{path}' is not a lookalike embedder file (expected format {FORMAT})")
    return payload


def load_embedder(path: str | Path) -> Embedder:
    """Rebuild the embedder stored in ``path`` (no download: the weights are in the file), in eval mode."""
    return embedder_from_payload(read_embedder_file(path))


def embedder_from_payload(payload: dict[str, Any]) -> Embedder:
    """Rebuild the embedder from the contents of an embedder file (see :func:`read_embedder_file`)."""
    config = payload["model"]
    backbone = {**config["backbone"], "pretrained": False, "checkpoint": None}
    embedder = Embedder(backbone, config["head"], config.get("image_size"))
    embedder.load_state_dict(payload["state_dict"])
    return embedder.eval()


FORMATS = ("native", "torchscript", "onnx")
TOLERANCE = 1e-4  # max abs difference of an export's embeddings from the PyTorch model's


def load_source(path: str | Path) -> tuple[Embedder, dict[str, Any]]:
    """The embedder and its provenance from a training checkpoint (.ckpt) or an embedder file."""
    path = Path(path).expanduser()
    if path.suffix == ".ckpt":
        from lookalike.evaluate import load_checkpoint
        from lookalike.provenance import provenance

        module = load_checkpoint(path)
        config = module.hparams["config"]
        return module.embedder.eval(), {"training_config": config, "checkpoint": str(path),
                                        **provenance(config.get("seed", 0))}
    payload = read_embedder_file(path)
    return embedder_from_payload(payload), payload["provenance"]


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
    if fmt not in FORMATS:
        raise LookalikeError(f"--format {fmt!r}: choose one of {FORMATS}")
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


def main(argv: list[str] | None = None) -> None:
    """``lookalike export ckpt=PATH out=FILE [--format native|torchscript|onnx]``."""
    parser = argparse.ArgumentParser(prog="lookalike export", description=__doc__)
    parser.add_argument("assignments", nargs="+", metavar="key=value", help="ckpt=PATH (.ckpt or embedder file) out=FILE")
    parser.add_argument("--format", default="native", choices=FORMATS)
    parser.add_argument("--samples", type=int, default=4, help="random inputs for the output check")
    args = parser.parse_args(argv)
    values = dict(a.split("=", 1) for a in args.assignments if "=" in a)
    if "ckpt" not in values or "out" not in values:
        raise LookalikeError("lookalike export needs ckpt=PATH and out=FILE")
    diff = export(values["ckpt"], values["out"], args.format, args.samples)
    print(f"wrote {values['out']} ({args.format}); max abs difference from PyTorch on {args.samples} inputs: "
          f"{diff:.2e} (tolerance {TOLERANCE})")
