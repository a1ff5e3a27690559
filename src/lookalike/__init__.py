"""lookalike: train image embedders for visual similarity search with metric learning."""

from lookalike.errors import LookalikeError

__version__ = "0.1.0"
__all__ = ["LookalikeError", "__version__"]
