"""Where an embedder comes from: a training checkpoint (.ckpt) or an embedder file, whichever a user names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lookalike.embedder.file import embedder_from_payload, read_embedder_file
from lookalike.models.embedder import Embedder
from lookalike.models.lit_embedder import load_checkpoint
from lookalike.provenance import provenance


def load_source(path: str | Path) -> tuple[Embedder, dict[str, Any]]:
    """The embedder and its provenance from a training checkpoint (.ckpt) or an embedder file."""
    path = Path(path).expanduser()
    if path.suffix == ".ckpt":
        module = load_checkpoint(path)
        config = module.hparams["config"]
        return module.embedder.eval(), {"training_config": config, "checkpoint": str(path),
                                        **provenance(config.get("seed", 0))}
    payload = read_embedder_file(path)
    return embedder_from_payload(payload), payload["provenance"]
