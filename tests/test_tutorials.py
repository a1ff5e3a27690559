"""The tutorials' commands run as written from a fresh clone: the walk-through (pretrained features, train, export,
index, search), read from the page the docs site shows (docs/tutorials/walkthrough.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


PAGE = ROOT / "docs" / "tutorials" / "walkthrough.md"


def walkthrough() -> str:
    """The bash block after the page's ``<!-- walkthrough -->`` marker."""
    found = re.search(r"<!-- walkthrough -->\n```bash\n(.*?)```", PAGE.read_text(), re.S)
    assert found, f"{PAGE} has no walk-through block"
    return found.group(1)


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "train.py").symlink_to(ROOT / "train.py")
    env = {**os.environ, "LOOKALIKE_CACHE": str(tmp_path / "cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", walkthrough()], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "after training (best checkpoint)" in out and (tmp_path / "runs/quickstart/latest/embedder.pt").is_file()
    assert out.count("max abs difference from PyTorch") == 2
    assert "indexed 40 images" in out and (tmp_path / "results.png").stat().st_size > 10_000
    assert "pretrained.pt" in out and out.count("wrote pretrained.pt") == 1 and (tmp_path / "pretrained.lkidx").is_file()
    side_by_side = out[out.index("test split (40 classes, 320 images"):]
    assert "pretrained.pt" in side_by_side and "embedder.pt" in side_by_side
    assert "held-out classes" in out and '"match":' in out and "groups of near-duplicates" in out
    assert "removed 1 item(s); the index now holds 39" in out and "added 1 item(s); the index now holds 40" in out
