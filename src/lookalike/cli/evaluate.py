"""``lookalike evaluate ckpt=PATH [overrides]`` (conf/eval.yaml)."""

from __future__ import annotations

from lookalike.config import hydra_main
from lookalike.evaluate import evaluate

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


def main(argv: list[str] | None = None) -> None:
    hydra_main("eval", evaluate, None if argv is None else overrides(argv), prog="lookalike evaluate")
