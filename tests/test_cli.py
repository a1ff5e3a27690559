"""The ``lookalike`` command line: help and argument errors answer at once, without the library's heavy parts."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from lookalike.cli import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print(sorted(m for m in ("torch", "timm", "lightning", "cv2", "faiss", "torchvision") if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [["--help"], ["search", "--help"], ["index", "build", "--help"], ["serve", "--help"],
                                  ["export", "--help"], ["confusers", "--help"], ["harvest", "--help"], ["serve", "--index", "x",
                                                                                  "--port", "0"]])
def test_help_and_argument_errors_import_neither_torch_nor_timm(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
    assert "usage" in (done.stdout + done.stderr).lower()


def test_train_and_evaluate_have_help_of_their_own() -> None:
    evaluate = subprocess.run([sys.executable, "-m", "lookalike.cli", "evaluate", "--help"], capture_output=True,
                              text=True, timeout=120)
    assert evaluate.returncode == 0 and "ckpt=[pretrained.pt," in evaluate.stdout and "--crop auto" in evaluate.stdout
    assert "== Config groups (group=option) ==" in evaluate.stdout and "knn: flat, hnsw" in evaluate.stdout
    train = subprocess.run([sys.executable, "-m", "lookalike.cli", "train", "--help"], capture_output=True,
                           text=True, timeout=120)
    assert train.returncode == 0 and "ckpt_path=last" in train.stdout and "loss: arcface" in train.stdout
