"""k-nearest-neighbour search by inner product (cosine on unit vectors): FAISS or exact torch.

``backend="faiss"`` builds a FAISS index from a factory string (``"Flat"`` exact; ``"IVF1024,Flat"``,
``"IVF1024,PQ32"``, ``"HNSW32"`` approximate) on the CPU and copies it to the GPUs when
``faiss.get_num_gpus() > 0`` (CPU wheels report 0, so one code path serves both).
``backend="torch"`` is an exact chunked ``mm`` + ``topk`` on the embeddings' device, the choice for
embeddings on a GPU that FAISS cannot use. ``backend="auto"`` picks torch for GPU tensors without
FAISS GPUs (or without FAISS), FAISS otherwise.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import torch

from lookalike.errors import LookalikeError

FAISS_GPU_MAX_K = 2048
BACKENDS = ("auto", "faiss", "torch")


def faiss_module():
    """The faiss module, or a clear error if it is not installed."""
    try:
        import faiss
    except ImportError as e:
        raise LookalikeError("FAISS is not installed: pip install faiss-cpu (or faiss-gpu-cu12), "
                             "or use index.backend=torch") from e
    return faiss


def faiss_num_gpus() -> int:
    """GPUs FAISS can use (0 for CPU builds or without FAISS)."""
    return faiss_module().get_num_gpus() if importlib.util.find_spec("faiss") else 0


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend ``auto`` stands for, given where the embeddings are."""
    if backend not in BACKENDS:
        raise LookalikeError(f"index.backend={backend!r} is not one of {BACKENDS}")
    if backend != "auto":
        return backend
    if importlib.util.find_spec("faiss") is None or (device.type == "cuda" and faiss_num_gpus() == 0):
        return "torch"
    return "faiss"


class FaissIndex:
    """A FAISS inner-product index from a factory string, on the GPUs when FAISS has any."""

    def __init__(self, dim: int, factory: str = "Flat", gpu: bool | str = "auto", search_params: str = ""):
        faiss = faiss_module()
        self.factory = factory
        self.cpu_index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        self.search_params = search_params
        self.use_gpu = faiss_num_gpus() > 0 if gpu == "auto" else bool(gpu)
        self._index = None

    @property
    def index(self):
        """The index searches run on: a GPU copy when GPUs are used, else the CPU index."""
        if self._index is None:
            faiss = faiss_module()
            if self.use_gpu:
                self._index = faiss.index_cpu_to_all_gpus(self.cpu_index)
                space = faiss.GpuParameterSpace()
            else:
                self._index = self.cpu_index
                space = faiss.ParameterSpace()
            if self.search_params:
                space.set_index_parameters(self._index, self.search_params)
        return self._index

    def add(self, vectors: np.ndarray) -> None:
        """Train the index if its type needs it, then add the vectors (ids 0..n-1 in order)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not self.cpu_index.is_trained:
            self.cpu_index.train(vectors)
        self.cpu_index.add(vectors)
        self._index = None

    def search(self, queries: np.ndarray, k: int, chunk_size: int = 16384) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids) of the top ``k``, best first; ids are -1 where fewer exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        index = self.index
        if self.use_gpu and k > FAISS_GPU_MAX_K:
            warnings.warn(f"FAISS on GPU caps k at {FAISS_GPU_MAX_K}; searching k={k} on the CPU")
            index = self.cpu_index
        parts = [index.search(queries[s:s + chunk_size], k) for s in range(0, len(queries), chunk_size)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _torch_knn(queries: torch.Tensor, gallery: torch.Tensor, k: int, exclude: torch.Tensor | None,
               chunk_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if chunk_size is None:
        chunk_size = max(1, min(len(queries), (1 << 26) // max(1, len(gallery))))  # ~256 MB of float32
    sims, idx = [], []
    for start in range(0, len(queries), chunk_size):
        block = queries[start:start + chunk_size] @ gallery.T
        if exclude is not None:
            ex = exclude[start:start + chunk_size]
            rows = torch.nonzero(ex >= 0).squeeze(1)
            block[rows, ex[rows]] = float("-inf")
        s, i = block.topk(k, dim=1)
        sims.append(s)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def _drop_excluded(sims: np.ndarray, ids: np.ndarray, exclude: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From k+1 results per row keep k: without the excluded id, or without the last if it is absent."""
    drop = ids == exclude[:, None]
    missing = ~drop.any(1)
    drop[missing, -1] = True
    keep = ~drop
    return sims[keep].reshape(len(ids), k), ids[keep].reshape(len(ids), k)


def knn(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    exclude: torch.Tensor | None = None,
    backend: str = "torch",
    factory: str = "Flat",
    search_params: str = "",
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` gallery items for every query: (similarities, gallery indices), best first.

    ``exclude[i]`` is a gallery index query ``i`` must not retrieve (itself, in the leave-one-out
    protocol) or -1. The torch backend holds at most ``chunk_size x len(gallery)`` similarities.
    """
    has_exclude = exclude is not None and bool((exclude >= 0).any())
    k = min(k, len(gallery) - (1 if has_exclude else 0))
    backend = resolve_backend(backend, queries.device)
    if backend == "torch":
        return _torch_knn(queries, gallery.to(queries.device), k, exclude if has_exclude else None, chunk_size)
    index = FaissIndex(gallery.shape[1], factory, search_params=search_params)
    index.add(gallery.detach().float().cpu().numpy())
    q = queries.detach().float().cpu().numpy()
    if has_exclude:
        sims, ids = _drop_excluded(*index.search(q, k + 1), exclude.cpu().numpy(), k)
    else:
        sims, ids = index.search(q, k)
    return torch.from_numpy(sims).to(queries.device), torch.from_numpy(ids).long().to(queries.device)
