"""The ``lookalike`` command: ``lookalike train|evaluate [Hydra overrides]``."""

from __future__ import annotations

import importlib
import sys

from lookalike.errors import LookalikeError

USAGE = """usage: lookalike COMMAND [key=value ...]

commands:
  train       train an embedder (same overrides as `python train.py`; conf/train.yaml)
  evaluate    embed a split with a checkpoint and report recall@k / MAP@R (conf/eval.yaml):
              lookalike evaluate ckpt=runs/.../best.ckpt [data=...] [index=hnsw] [--save-embeddings]
  download    fetch, verify and unpack a benchmark (resumable):
              lookalike download cub200|cars196|sop|inshop --root DIR
  export      write a trained embedder as one file (native, TorchScript or ONNX), checked against PyTorch:
              lookalike export ckpt=runs/.../best.ckpt out=embedder.pt [--format torchscript|onnx]
  index       build a searchable catalogue index from an embedder file:
              lookalike index build --embedder embedder.pt --images DIR_OR_CSV --out catalog.lkidx
  search      find the catalogue items most like photos:
              lookalike search --index catalog.lkidx photo.jpg [-k 10] [--json] [--out grid.png]
  calibrate   choose the match threshold for a target precision on labelled images (stored in the embedder):
              lookalike calibrate --embedder embedder.pt --images DIR_OR_CSV [--target-precision 0.95]
  serve       a search page and JSON API for a catalogue index (loopback only unless --host says otherwise):
              lookalike serve --index catalog.lkidx [--port 8000]
  duplicates  groups of near-duplicate catalogue images: lookalike duplicates --index catalog.lkidx
  pseudo-labels
              cluster a catalogue without labels into pseudo-classes (FAISS k-means) for triplet training:
              lookalike pseudo-labels --embedder embedder.pt --images DIR --clusters 300 --out clusters.csv
  demo-data   the quickstart's test products as a catalogue and photos to try index and search on:
              lookalike demo-data --out demo
  runs        compare runs or sweep trials: lookalike runs summarize runs/<task>/multirun/<date_time>
  augment-preview
              write a PNG of training images under an augmentation (conf/train.yaml):
              lookalike augment-preview augment=photo [data=... data.root=...] [preview.out=grid.png]
"""

# commands with their own argparse options: module and function called with the arguments
PLAIN = {
    "download": ("lookalike.data.download", "main"),
    "export": ("lookalike.export", "main"),
    "index": ("lookalike.catalog", "main_index"),
    "search": ("lookalike.catalog", "main_search"),
    "duplicates": ("lookalike.catalog", "main_duplicates"),
    "pseudo-labels": ("lookalike.data.pseudo_labels", "main"),
    "calibrate": ("lookalike.calibrate", "main"),
    "demo-data": ("lookalike.data.synthetic", "main_demo"),
    "runs": ("lookalike.runs", "main"),
    "serve": ("lookalike.serve", "main"),
}
# commands taking Hydra overrides: module whose main() composes the config
HYDRA = {"train": "lookalike.train", "evaluate": "lookalike.evaluate", "augment-preview": "lookalike.data.preview"}

# flags accepted for convenience, as the Hydra overrides they stand for
FLAGS = {"--save-embeddings": "save_embeddings=true", "--nmi": "nmi=true"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    command, rest = argv[0], [FLAGS.get(a, a) for a in argv[1:]]
    if command in PLAIN:
        module, function = PLAIN[command]
        try:
            getattr(importlib.import_module(module), function)(rest)
        except LookalikeError as e:
            print(f"lookalike: error: {e}", file=sys.stderr)
            sys.exit(2)
        return
    if command not in HYDRA:
        print(f"lookalike: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"lookalike {command}", *rest]
    importlib.import_module(HYDRA[command]).main()


if __name__ == "__main__":
    main()
