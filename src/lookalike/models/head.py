"""The projection head that maps pooled backbone features to the embedding."""

from __future__ import annotations

from torch import nn

from lookalike.errors import LookalikeError


def projection_head(in_features: int, embedding_size: int | None, hidden_size: int | None = None,
                    batchnorm: bool = False) -> nn.Module:
    """Linear (or MLP with ``hidden_size``) projection, optionally followed by BatchNorm.

    ``embedding_size=None`` keeps the pooled backbone features (no projection).
    """
    if embedding_size is None:
        return nn.Identity()
    if embedding_size <= 0:
        raise LookalikeError(f"model.head.embedding_size must be a positive number or null, not {embedding_size}")
    layers: list[nn.Module] = []
    if hidden_size:
        layers += [nn.Linear(in_features, hidden_size), nn.BatchNorm1d(hidden_size), nn.ReLU(inplace=True)]
        in_features = hidden_size
    linear = nn.Linear(in_features, embedding_size)
    nn.init.orthogonal_(linear.weight)
    nn.init.zeros_(linear.bias)
    layers.append(linear)
    if batchnorm:
        layers.append(nn.BatchNorm1d(embedding_size))
    return nn.Sequential(*layers)
