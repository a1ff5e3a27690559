"""The values users choose among for lookalike's options, in a module that imports nothing: the commands offer them
(so ``--help`` answers without loading torch) and the modules that act on them check against them."""

from __future__ import annotations

CATALOGUE_BACKENDS = ("faiss", "milvus")  # where a catalogue lives: a .lkidx file, or a Milvus collection
DEFAULT_COLLECTION = "lookalike"  # the Milvus collection a catalogue goes to unless --collection says
FUSIONS = ("mean", "max")  # several photos of one item: their mean embedding, or each item's best photo
EXPORT_FORMATS = ("native", "torchscript", "onnx")
POOLS = ("avg", "max", "avgmax", "gem", "token")  # token: a vision transformer's class token
MAX_K = 100  # results (and query-expansion neighbours) one request to the page may ask for
