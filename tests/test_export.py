"""`lookalike export`: native, TorchScript and ONNX files that match PyTorch; the embed() API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lookalike.errors import LookalikeError
from lookalike.embedder.file import load_embedder
from lookalike.embedder.export import TOLERANCE, export


@pytest.mark.parametrize("fmt", ["native", "torchscript", "onnx"])
def test_exports_match_pytorch(trained: dict, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"embedder.{fmt}"
    diff = export(trained["best_checkpoint"], out, fmt, samples=3)
    assert out.is_file() and diff <= TOLERANCE
    x = torch.randn(5, 3, 32, 32)  # another batch size than the export example
    want = load_embedder(trained["embedder"])(x).detach().numpy()
    if fmt == "torchscript":
        extra = {"lookalike.json": ""}
        got = torch.jit.load(str(out), _extra_files=extra)(x).detach().numpy()
        assert json.loads(extra["lookalike.json"])["preprocessing"]["input_size"] == [3, 32, 32]
    elif fmt == "onnx":
        import onnx
        import onnxruntime as ort

        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(meta["lookalike"])["model"]["backbone"]["name"] == "test_efficientnet"
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    else:
        got = load_embedder(out)(x).detach().numpy()
    assert np.abs(got - want).max() <= TOLERANCE


def test_embed_accepts_paths_pil_arrays_and_tensors(trained: dict, tmp_path: Path) -> None:
    embedder = load_embedder(trained["embedder"])
    Image.new("RGB", (60, 40), (30, 160, 90)).save(tmp_path / "a.png")
    pil = Image.open(tmp_path / "a.png")
    out = embedder.embed([tmp_path / "a.png", str(tmp_path / "a.png"), pil, np.asarray(pil)])
    assert out.shape == (4, 16) and torch.allclose(out, out[0].expand_as(out), atol=1e-6)
    tensor = embedder.embed(torch.zeros(2, 3, 32, 32))
    assert tensor.shape == (2, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))


@pytest.mark.slow  # several seconds: in the slow suite (CI runs both)
def test_export_errors(tmp_path: Path) -> None:
    with pytest.raises(LookalikeError, match="No embedder file"):
        export(tmp_path / "missing.pt", tmp_path / "out.pt")
    done = subprocess.run([sys.executable, "-m", "lookalike.cli", "export", str(tmp_path / "none.ckpt"),
                           "--out", str(tmp_path / "o.pt")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "No checkpoint" in done.stderr and "Traceback" not in done.stderr
