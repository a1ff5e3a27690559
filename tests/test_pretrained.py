"""Starting from off-the-shelf features: `lookalike pretrained` embedder files (vision transformers too), and
`lookalike evaluate` of embedder files and checkpoints side by side."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import lightning as L

from lookalike.cli import main as lookalike
from lookalike.evaluate import evaluate
from lookalike.embedder.file import load_embedder, read_embedder_file
from lookalike.models.embedder import Embedder
from tests.helpers import TINY_DATA, compose_config, module_and_data


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_a_vision_transformer_embeds_and_trains_at_lookalikes_sizes(pool: str, image_folder: Path,
                                                                    tmp_path: Path) -> None:
    embedder = Embedder({"name": "test_vit", "pretrained": False, "pool": pool}, {"embedding_size": None}, 48)
    assert embedder.preprocessing["input_size"] == [3, 48, 48]  # not the model's own 160 px
    out = embedder.embed(torch.randint(0, 255, (3, 3, 48, 48), dtype=torch.uint8))
    assert out.shape == (3, embedder.backbone.num_features) and torch.allclose(out.norm(dim=1), torch.ones(3))
    cfg = compose_config(["model.backbone.name=test_vit", "model.backbone.pretrained=false", f"model.backbone.pool={pool}",
                          "model.image_size=48", "data=image_folder", f"data.root={image_folder}",
                          "data.source.train_classes=0.67", "data.batch_size=8", "data.val_classes=1",
                          "data.num_workers=0", f"paths.output_dir={tmp_path}"])
    module, dm = module_and_data(cfg)

    before = [p.detach().clone() for p in module.embedder.backbone.parameters()]
    L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module, datamodule=dm)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.embedder.backbone.parameters()))


def test_pretrained_writes_the_models_pooled_features_as_an_embedder_file(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    weights = tmp_path / "test_vit.pth"
    model = timm.create_model("test_vit", pretrained=False, num_classes=0, dynamic_img_size=True)
    torch.save(model.state_dict(), weights)
    out = tmp_path / "pretrained.pt"
    lookalike(["pretrained", "--model", "test_vit", "--pool", "token", "--checkpoint", str(weights),
               "--image-size", "32", "--out", str(out)])
    assert "test_vit pretrained, token pooling, 64-d, 32 px" in capsys.readouterr().out
    embedder = load_embedder(out)
    x = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        want = F.normalize(model.eval()((x.float() / 255 - 0.5) / 0.5), dim=-1)
    assert torch.allclose(embedder.embed(x), want, atol=1e-5)  # the model's own class token, normalised
    assert read_embedder_file(out)["provenance"]["pretrained"]["model"] == "test_vit"


def test_evaluate_reports_pretrained_and_trained_embedders_side_by_side(trained: dict, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    pretrained = tmp_path / "pretrained.pt"
    lookalike(["pretrained", "--image-size", "64", "--out", str(pretrained)])  # offline Lite0 weights
    capsys.readouterr()
    cfg = compose_config([f"ckpt=[{pretrained},{trained['embedder']},{trained['best_checkpoint']}]",
                          f"paths.output_dir={tmp_path / 'eval'}", "num_workers=0", "grid.queries=2", "verify=0"],
                         name="eval")
    report = evaluate(cfg)  # no data=: the data the trained ones were trained on
    printed = capsys.readouterr().out
    assert [Path(r["checkpoint"]).name for r in report["rows"]] == ["pretrained.pt", "embedder.pt", "best.ckpt"]
    assert "pretrained.pt" in printed and "best.ckpt" in printed
    after = trained["test"]["after training (best checkpoint)"]
    for row in report["rows"][1:]:  # the embedder file of a run and its best checkpoint are the same weights
        assert row["metrics"]["map@r"] == pytest.approx(after["map@r"], abs=1e-6)
    assert report["rows"][0]["metrics"]["map@r"] != pytest.approx(after["map@r"], abs=1e-6)
    assert {"retrieval_grid_0.png", "retrieval_grid_2.png"} <= {p.name for p in (tmp_path / "eval").iterdir()}
    alone = compose_config([f"ckpt={pretrained}", f"paths.output_dir={tmp_path / 'alone'}"], name="eval")
    from lookalike.errors import LookalikeError

    with pytest.raises(LookalikeError, match="give it, e.g. data=image_folder"):
        evaluate(alone)
    on_data = compose_config([f"ckpt={pretrained}", f"paths.output_dir={tmp_path / 'data'}", "num_workers=0",
                              "data=synthetic", f"data.root={Path(trained['embedder']).parents[1] / 'cache'}",
                              *(f"data.source.{k}={v}" for k, v in TINY_DATA.items()), "grid.queries=0"], name="eval")
    assert evaluate(on_data)["metrics"] == report["rows"][0]["metrics"]
