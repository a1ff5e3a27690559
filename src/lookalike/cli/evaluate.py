"""``lookalike evaluate ckpt=PATH [overrides]`` (conf/eval.yaml)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from lookalike.config import hydra_main

# flags accepted for convenience, as the Hydra overrides they stand for
FLAGS = {"--save-embeddings": "save_embeddings=true", "--nmi": "nmi=true"}
VALUED = {"--crop": "crop", "--boxes": "boxes"}  # "--crop auto" and "--crop=auto": crop=auto


def overrides(argv: list[str]) -> list[str]:
    """``argv`` with the convenience flags written as the Hydra overrides they stand for."""
    out, rest = [], list(argv)
    while rest:
        arg = rest.pop(0)
        name, _, value = arg.partition("=")
        if name in VALUED:
            out.append(f"{VALUED[name]}={value if value else rest.pop(0) if rest else ''}")
        else:
            out.append(FLAGS.get(arg, arg))
    return out


def evaluate(cfg: DictConfig) -> Any:
    from lookalike.evaluate import evaluate as run  # once the command line is read: --help answers at once

    return run(cfg)


def main(argv: list[str] | None = None) -> None:
    hydra_main("eval", evaluate, None if argv is None else overrides(argv), prog="lookalike evaluate")
