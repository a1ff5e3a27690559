"""``lookalike evaluate ckpt=PATH [overrides]`` (conf/eval.yaml)."""

from __future__ import annotations

from lookalike.config import hydra_main
from lookalike.evaluate import evaluate

# flags accepted for convenience, as the Hydra overrides they stand for
FLAGS = {"--save-embeddings": "save_embeddings=true", "--nmi": "nmi=true"}


def main(argv: list[str] | None = None) -> None:
    hydra_main("eval", evaluate, None if argv is None else [FLAGS.get(a, a) for a in argv], prog="lookalike evaluate")
