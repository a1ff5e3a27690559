"""Backbones: offline Lite0 weights, local checkpoints and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from lookalike.data.images import load_rgb
from lookalike.data.synthetic import catalogue_picture, random_watch
from lookalike.data.transforms import eval_transform, normalize_images
from lookalike.errors import LookalikeError
from lookalike.models import backbone as bb
from lookalike.models.embedder import Embedder, resolve_preprocessing

CLOCKS = {409: "analog clock", 892: "wall clock", 826: "stopwatch", 531: "digital watch"}


def test_lite0_offline_weights_load_every_tensor_of_the_file() -> None:
    path = bb.offline_weights_file("tf_efficientnet_lite0")
    assert path is not None and path.is_file()
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0")  # with its ImageNet classifier
    init = {k: v.clone() for k, v in model.state_dict().items()}
    bb.load_offline_weights(model, "tf_efficientnet_lite0")
    loaded = model.state_dict()
    assert len(source) == len(loaded) == 296
    assert sum(v.numel() for v in source.values()) == 4_694_073
    for (_, want), (key, got) in zip(source.items(), loaded.items()):
        assert torch.equal(want, got), key
    changed = [k for k in loaded if loaded[k].is_floating_point() and not torch.equal(loaded[k], init[k])]
    assert len(changed) >= 240  # every weight and BN statistic moved off its initial value


def test_lite0_pretrained_weights_recognise_a_watch(tmp_path: Path) -> None:
    """Real ImageNet weights call the synthetic catalogue watch a clock; random weights would not."""
    model = timm.create_model("tf_efficientnet_lite0").eval()
    bb.load_offline_weights(model, "tf_efficientnet_lite0")
    catalogue_picture(random_watch(__import__("numpy").random.default_rng(0)), 224).save(tmp_path / "w.png")
    pre = resolve_preprocessing(model, 224)
    x = eval_transform(pre)(image=load_rgb(str(tmp_path / "w.png")))["image"][None]
    x = normalize_images(x, *(torch.tensor(pre[k]).view(1, 3, 1, 1) for k in ("mean", "std")))
    with torch.no_grad():
        top5 = model(x).topk(5).indices[0].tolist()
    assert set(top5) & set(CLOCKS), top5


def test_embedder_with_offline_weights_has_preprocessing_and_unit_embeddings() -> None:
    e = Embedder({"name": "tf_efficientnet_lite0", "pretrained": True}, {"embedding_size": 32}, image_size=64).eval()
    assert e.preprocessing["input_size"] == [3, 64, 64] and e.preprocessing["mean"] == [0.5, 0.5, 0.5]
    out = e(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 32)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_gem_pooling_and_mlp_head() -> None:
    e = Embedder({"name": "test_resnet", "pretrained": False, "pool": "gem"},
                 {"embedding_size": 8, "hidden_size": 16, "batchnorm": True}).eval()
    assert isinstance(e.pool, bb.GeM)
    assert e(torch.randn(3, 3, 32, 32)).shape == (3, 8)


def test_local_checkpoint_loads_and_wrong_file_is_explained(tmp_path: Path) -> None:
    source = timm.create_model("test_resnet", num_classes=10)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "ok.pth")
    model, _ = bb.create_backbone("test_resnet", checkpoint=str(tmp_path / "ok.pth"))
    assert torch.equal(model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])

    torch.save(timm.create_model("test_efficientnet").state_dict(), tmp_path / "other.pth")
    with pytest.raises(LookalikeError, match="does not fit this backbone"):
        bb.create_backbone("test_resnet", checkpoint=str(tmp_path / "other.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(LookalikeError, match="not a readable PyTorch state dict"):
        bb.create_backbone("test_resnet", checkpoint=str(tmp_path / "junk.pth"))
    with pytest.raises(LookalikeError, match="no file"):
        bb.create_backbone("test_resnet", checkpoint=str(tmp_path / "missing.pth"))


def test_offline_hub_fails_at_once_with_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(bb, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(LookalikeError) as e:
        bb.create_backbone("resnet50", pretrained=True)
    assert "model.backbone.checkpoint" in str(e.value) and "resnet50" in str(e.value)


def test_unknown_backbone_and_pool_are_explained() -> None:
    with pytest.raises(LookalikeError, match="not a timm model"):
        bb.create_backbone("resnet5000")
    with pytest.raises(LookalikeError, match="pool"):
        bb.create_backbone("test_resnet", pretrained=False, pool="median")


@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_lite1_and_lite2_offline_weights(name: str) -> None:
    """The `offline-weights` extra (installed with `dev`) maps Lite1/Lite2 the same way."""
    path = bb.offline_weights_file(name)
    assert path is not None, f"install the offline-weights extra for {name}"
    model = timm.create_model(name)
    bb.load_offline_weights(model, name)
    source = torch.load(path, map_location="cpu", weights_only=True)
    assert all(torch.equal(a, b) for a, b in zip(source.values(), model.state_dict().values()))
