"""The ``lookalike`` command: one sub-command per module of this package. Commands parse and print; the library
does the work."""

from __future__ import annotations

import errno
import importlib
import sys

from lookalike.errors import LookalikeError

USAGE = """usage: lookalike COMMAND [key=value ...]

commands:
  train       train an embedder (same overrides as `python train.py`; conf/train.yaml)
  evaluate    embed a split with checkpoints or embedder files, report recall@k / MAP@R side by side
              (conf/eval.yaml): lookalike evaluate ckpt=[pretrained.pt,runs/.../best.ckpt] [data=...] [knn=hnsw]
  pretrained  an embedder file of a timm model's pretrained features, no training (the baseline):
              lookalike pretrained --model tf_efficientnet_lite0 [--pool avg|token|...] --out pretrained.pt
  download    fetch, verify and unpack a benchmark (resumable):
              lookalike download cub200|cars196|sop|inshop --root DIR
  export      write a trained embedder as one file (native, TorchScript or ONNX), checked against PyTorch:
              lookalike export runs/.../best.ckpt --out embedder.pt [--format torchscript|onnx]
  index       build a searchable catalogue index from an embedder file:
              lookalike index build --embedder embedder.pt --images DIR_OR_CSV --out catalog.lkidx
  search      find the catalogue items most like photos:
              lookalike search --index catalog.lkidx photo.jpg [-k 10] [--json] [--out grid.png]
  calibrate   choose the match threshold for a target precision on labelled images (stored in the embedder):
              lookalike calibrate --embedder embedder.pt --images DIR_OR_CSV [--target-precision 0.95]
  serve       a search page and JSON API for a catalogue index (loopback only unless --host says otherwise):
              lookalike serve --index catalog.lkidx [--port 8000]
  duplicates  groups of near-duplicate catalogue images: lookalike duplicates --index catalog.lkidx
  confusers   the most similar pictures with different labels: lookalike confusers --index catalog.lkidx
  harvest     label your own photos by verified search; the unambiguous ones become training marks:
              lookalike harvest --index catalog.lkidx --photos DIR [--into catalog.feedback]
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

# command -> (module of lookalike.cli, its function): a command's module is imported when it runs, and imports the
# library's heavy parts (torch, timm, ...) only once its arguments are read
COMMANDS = {
    "train": ("train", "main"),
    "evaluate": ("evaluate", "main"),
    "pretrained": ("pretrained", "main"),
    "download": ("download", "main"),
    "export": ("export", "main"),
    "index": ("index", "main"),
    "search": ("search", "main"),
    "calibrate": ("calibrate", "main"),
    "serve": ("serve", "main"),
    "duplicates": ("search", "main_duplicates"),
    "confusers": ("search", "main_confusers"),
    "harvest": ("harvest", "main"),
    "pseudo-labels": ("pseudo_labels", "main"),
    "demo-data": ("demo_data", "main"),
    "runs": ("runs", "main"),
    "augment-preview": ("augment_preview", "main"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"lookalike: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    try:
        module, function = COMMANDS[command]
        getattr(importlib.import_module(f"lookalike.cli.{module}"), function)(rest)
    except LookalikeError as e:
        print(f"lookalike: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"lookalike: error: the disk is full ({e.filename or e.strerror}): free some space and run the command "
              "again; the files it was writing were left as they were (lookalike writes them whole or not at all)",
              file=sys.stderr)
        sys.exit(2)
