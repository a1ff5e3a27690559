"""The embedder file: one self-contained file that rebuilds a trained embedder without Hydra or Lightning.

It holds the weights, the architecture (timm name, pooling, head, image size), the preprocessing
(size, mean, std, interpolation, crop), provenance (training config, metrics, versions) and, once
``lookalike calibrate`` ran, the match threshold.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from lookalike.errors import LookalikeError
from lookalike.files import MAX_DIM, MAX_INPUT_SIDE, atomic_write, number_field, text_field
from lookalike.models.embedder import Embedder

FORMAT = "lookalike-embedder/1"


def write_embedder_file(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write the contents of an embedder file to ``path`` atomically (a crash leaves the previous file intact)."""
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def save_embedder(embedder: Embedder, path: str | Path, **provenance: Any) -> Path:
    """Write ``embedder`` to ``path``; ``provenance`` (e.g. training_config, metrics, versions) is stored as given."""
    return write_embedder_file(path, {
        "format": FORMAT,
        "model": embedder.config,
        "preprocessing": embedder.preprocessing,
        "state_dict": {k: v.detach().cpu() for k, v in embedder.state_dict().items()},
        "provenance": provenance,
    })


def pretrained_embedder(name: str, pool: str = "avg", image_size: int | None = None,
                        checkpoint: str | None = None) -> Embedder:
    """A timm model's pretrained weights as an embedder with no training: its pooled features (``pool``; ``token``
    for a vision transformer's class token) are the embedding, at ``image_size`` (default: the model's own).
    Weights come as in training: packaged offline weights, ``checkpoint`` (a local file), or timm's hub."""
    backbone = {"name": name, "pretrained": True, "checkpoint": checkpoint, "pool": pool}
    return Embedder(backbone, {"embedding_size": None}, image_size).eval()


def read_payload(path: str | Path, fmt: str, kind: str, missing: str) -> dict[str, Any]:
    """The plain-data contents (``weights_only``: never code) of a lookalike file of format ``fmt``, or one clear
    error: ``missing`` for no file, else that it is not a readable / not a lookalike ``kind``. Its provenance (the
    training config among it) is data: nothing is built from it here (:func:`~lookalike.config.trusted_config` is
    for whoever would)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LookalikeError(missing.replace("{path}", str(path)))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle and torch errors for corrupt or foreign files
        raise LookalikeError(f"'{path}' is not a readable {kind} ({e})") from e
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise LookalikeError(f"'{path}' is not a lookalike {kind} (expected format {fmt})")
    if not isinstance(payload.get("provenance"), dict):
        raise LookalikeError(f"'{path}' is a damaged {kind} (its provenance is not a mapping)")
    return payload


def read_embedder_file(path: str | Path) -> dict[str, Any]:
    """The raw contents of an embedder file, or one clear error for a missing, corrupt or foreign file, or one
    whose fields are not of their types and ranges."""
    payload = read_payload(path, FORMAT, "embedder file", "No embedder file at '{path}'")
    model = payload.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("backbone"), dict) \
            or not isinstance(model.get("head"), dict) or not isinstance(payload.get("state_dict"), dict):
        raise LookalikeError(f"'{path}' is a damaged embedder file (no model description or weights)")
    text_field(model["backbone"].get("name"), "backbone name", path)
    if model.get("image_size") is not None:
        number_field(model["image_size"], "image size", path, 8, MAX_INPUT_SIDE, integer=True)
    if model["head"].get("embedding_size") is not None:
        number_field(model["head"]["embedding_size"], "embedding size", path, 1, MAX_DIM, integer=True)
    calibration = payload.get("calibration")
    if calibration is not None:
        if not isinstance(calibration, dict):
            raise LookalikeError(f"'{path}' is a damaged embedder file (its calibration is not a mapping)")
        number_field(calibration.get("threshold"), "calibrated threshold", path, -1, 1)
    return payload


def embedder_from_payload(payload: dict[str, Any]) -> Embedder:
    """Rebuild the embedder from the contents of an embedder file (see :func:`read_embedder_file`)."""
    config = payload["model"]
    backbone = {**config["backbone"], "pretrained": False, "checkpoint": None}
    try:
        embedder = Embedder(backbone, config["head"], config.get("image_size"))
        embedder.load_state_dict(payload["state_dict"])
    except (TypeError, KeyError, ValueError, RuntimeError) as e:
        raise LookalikeError(f"The embedder file's model cannot be rebuilt: it is damaged or of another version "
                             f"({str(e)[:300]})") from e
    return embedder.eval()


def load_embedder(path: str | Path) -> Embedder:
    """Rebuild the embedder stored in ``path`` (no download: the weights are in the file), in eval mode."""
    return embedder_from_payload(read_embedder_file(path))


def embedder_hash(payload: dict[str, Any]) -> str:
    """A fingerprint of an embedder file's weights and preprocessing (not of its provenance or calibration)."""
    digest = hashlib.sha256(json.dumps([payload["model"], payload["preprocessing"]], sort_keys=True).encode())
    for key, tensor in sorted(payload["state_dict"].items()):
        digest.update(key.encode())
        digest.update(tensor.float().numpy().tobytes())
    return digest.hexdigest()[:16]


def calibrated_threshold(payload: dict[str, Any]) -> float | None:
    """The threshold `lookalike calibrate` stored in an embedder file's contents, if any."""
    calibration = payload.get("calibration")
    return calibration["threshold"] if calibration else None


def match_threshold(embedder_path: str | Path) -> float | None:
    """The threshold `lookalike calibrate` stored in the embedder file, if any."""
    return calibrated_threshold(read_embedder_file(embedder_path))
