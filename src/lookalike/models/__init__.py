"""Models: timm backbones with offline weights, projection heads, the Embedder and its LightningModule."""

from lookalike.models.embedder import Embedder

__all__ = ["Embedder"]
