"""lookalike: train image embedders for visual similarity search with metric learning."""

import logging

from lookalike.errors import LookalikeError

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # FAISS's CPU-feature probing is noise

__version__ = "0.1.0"
__all__ = ["LookalikeError", "__version__"]
