"""k-nearest-neighbour search by inner product (cosine on unit vectors): FAISS or exact torch.

``backend="faiss"`` builds a FAISS index from a factory string (``"Flat"`` exact; ``"IVF1024,Flat"``,
``"IVF1024,PQ32"``, ``"HNSW32"`` approximate) on the CPU and copies it to the GPUs when
``faiss.get_num_gpus() > 0`` (CPU wheels report 0, so one code path serves both).
``backend="torch"`` is an exact chunked ``mm`` + ``topk`` on the embeddings' device, the choice for
embeddings on a GPU that FAISS cannot use; on a GPU it finds candidates with bfloat16 similarities on
the tensor cores and re-scores them in float32 (``precision="auto"``; ``"fp32"``: float32 throughout).
``backend="auto"`` picks torch for GPU tensors without FAISS GPUs (or without FAISS), FAISS otherwise.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch

from lookalike.errors import LookalikeError

FAISS_GPU_MAX_K = 2048
BACKENDS = ("auto", "faiss", "torch")
PRECISIONS = ("auto", "fp32", "bf16")


def faiss_module():
    """The faiss module, or a clear error if it is not installed."""
    try:
        import faiss
    except ImportError as e:
        raise LookalikeError("FAISS is not installed: pip install faiss-cpu (or faiss-gpu-cu12), "
                             "or use knn.backend=torch") from e
    return faiss


def faiss_reason(e: Exception) -> str:
    """FAISS's message without the C++ function and file it comes from."""
    text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return text.split("Error: ", 1)[-1].split(": ", 1)[-1][:200] if "Error" in text and ": " in text else text[:200]


def faiss_num_gpus() -> int:
    """GPUs FAISS can use (0 for CPU builds or without FAISS)."""
    return faiss_module().get_num_gpus() if importlib.util.find_spec("faiss") else 0


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend ``auto`` stands for, given where the embeddings are."""
    if backend not in BACKENDS:
        raise LookalikeError(f"knn.backend={backend!r} is not one of {BACKENDS}")
    if backend != "auto":
        return backend
    if importlib.util.find_spec("faiss") is None or (device.type == "cuda" and faiss_num_gpus() == 0):
        return "torch"
    return "faiss"


def is_binary(factory: str) -> bool:
    """Binary (Hamming) factory strings start with ``B``: ``BFlat``, ``BHNSW32``, ``BIVF1024``."""
    return factory.startswith("B")


def is_lossy(factory: str) -> bool:
    """Whether the index keeps compressed codes instead of the vectors (product or scalar quantisation, sign bits),
    so that its scores are approximate and worth re-scoring with the exact vectors."""
    return is_binary(factory) or any(part in factory for part in ("PQ", "SQ", "LSH"))


def rescore(queries: np.ndarray, candidates: np.ndarray, rows: np.ndarray, vectors: np.ndarray,
            k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank each query's candidate ids by their exact inner product: ``rows`` are the candidates' rows in
    ``vectors`` (-1 for none), which may be a memory map (only the candidates' rows are read). Best ``k`` first."""
    valid = rows >= 0
    gathered = vectors[np.where(valid, rows, 0).ravel()].reshape(*rows.shape, -1)
    scores = np.einsum("qcd,qd->qc", gathered.astype(np.float32, copy=False), queries.astype(np.float32))
    scores[~valid] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(scores, order, 1)
    ids = np.where(np.isfinite(best), np.take_along_axis(candidates, order, 1), -1)
    return best.astype(np.float32), ids


def ivf_cells(factory: str) -> int:
    """The number of inverted-list cells of an IVF factory string (``IVF1024,Flat`` -> 1024), else 0."""
    found = re.search(r"IVF(\d+)", factory)
    return int(found.group(1)) if found else 0


def default_search_params(factory: str) -> str:
    """Search parameters for an approximate factory string when none are given (FAISS's own defaults,
    efSearch 16 and nprobe 1, lose many neighbours): those of conf/knn/hnsw.yaml and ivf_*.yaml."""
    if "HNSW" in factory:
        return "efSearch=128"
    if "IVF" in factory:
        return "nprobe=32"
    return ""


def sign_codes(vectors: np.ndarray) -> np.ndarray:
    """Sign-quantised vectors packed 8 dimensions a byte: the codes of a binary index."""
    return np.packbits(vectors > 0, axis=1)


class FaissIndex:
    """A FAISS inner-product index from a factory string, on the GPUs when FAISS has any.

    ``ids=True`` stores caller-chosen int64 ids (``IDMap2``), so that items can be added and
    removed later. A binary factory (``BFlat``, ``BHNSW32``, ``BIVF1024``) indexes sign-quantised
    vectors (dim/8 bytes each) and scores by Hamming distance ``h`` as ``1 - 2h/dim``, which is
    ``cos`` for ±1 vectors; binary indexes search on the CPU (popcount is cheap there).
    """

    def __init__(self, dim: int, factory: str = "Flat", gpu: bool | str = "auto", search_params: str = "",
                 ids: bool = False, cpu_index: object | None = None):
        faiss = faiss_module()
        self.dim, self.factory, self.binary = dim, factory, is_binary(factory)
        if cpu_index is None:
            cpu_index = self._new_index(faiss, dim, factory, ids)
        self.cpu_index = cpu_index
        self.search_params = search_params
        self._mapped: np.ndarray | None = None  # the memory map a mapped index is read from (:meth:`from_bytes`)
        self.use_gpu = not self.binary and (faiss_num_gpus() > 0 if gpu == "auto" else bool(gpu))
        self._index = None
        if search_params:
            self._apply_search_params(faiss.ParameterSpace(), cpu_index)  # a bad one is refused now, not at search

    def _apply_search_params(self, space, index) -> None:
        try:
            space.set_index_parameters(index, self.search_params)
        except RuntimeError as e:
            raise LookalikeError(f"FAISS search parameters {self.search_params!r} do not fit a {self.factory} index "
                                 f"({faiss_reason(e)}): e.g. efSearch=128 for HNSW, nprobe=32 for IVF") from e

    @staticmethod
    def _new_index(faiss, dim: int, factory: str, ids: bool):
        if is_binary(factory) and dim % 8:
            raise LookalikeError(f"A binary index needs a dimension divisible by 8, not {dim}")
        try:
            if is_binary(factory):
                index = faiss.index_binary_factory(dim, factory)
                return faiss.IndexBinaryIDMap2(index) if ids else index
            return faiss.index_factory(dim, ("IDMap2," if ids else "") + factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise LookalikeError(f"FAISS cannot make an index from factory string {factory!r}: use e.g. Flat, "
                                 f"HNSW32, IVF1024,Flat, IVF1024,PQ32 or, binary, BFlat, BHNSW32, BIVF1024") from e

    def to_bytes(self) -> bytes:
        """The CPU index serialized by FAISS."""
        faiss = faiss_module()
        serialize = faiss.serialize_index_binary if self.binary else faiss.serialize_index
        return serialize(self.cpu_index).tobytes()

    def write(self, out: Callable[[bytes], Any]) -> None:
        """The CPU index serialized by FAISS as :meth:`to_bytes`, handed to ``out`` a piece at a time (a large
        index is never copied whole in memory)."""
        faiss = faiss_module()
        (faiss.write_index_binary if self.binary else faiss.write_index)(self.cpu_index, faiss.PyCallbackIOWriter(out))

    @classmethod
    def from_bytes(cls, blob: bytes | np.ndarray, dim: int, factory: str, search_params: str = "",
                   mapped: bool = False) -> FaissIndex:
        """Rebuild an index from :meth:`to_bytes`. A damaged or hostile blob gets one error, and the rebuilding may
        take no more than a few times the blob's size in memory (a header claiming more is refused). ``mapped``:
        ``blob`` is a memory map (uint8) that the index's codes, ids and links are read in place from, not copied
        (pages are read as searches touch them); the index keeps it open and is copied before it changes."""
        faiss = faiss_module()
        buffer = np.frombuffer(blob, dtype=np.uint8) if isinstance(blob, bytes) else blob
        try:
            with _memory_bound(2 * buffer.size + (256 << 20)):
                if mapped:
                    reader = faiss.ZeroCopyIOReader(faiss.swig_ptr(buffer), buffer.size)
                    cpu_index = (faiss.read_index_binary if is_binary(factory) else faiss.read_index)(reader)
                else:
                    cpu_index = (faiss.deserialize_index_binary if is_binary(factory) else faiss.deserialize_index)(
                        buffer)
        except (RuntimeError, MemoryError) as e:
            raise LookalikeError(f"its FAISS index cannot be read ({faiss_reason(e)})") from e
        if cpu_index.d != dim:
            raise LookalikeError(f"its FAISS index has {cpu_index.d} dimensions, not {dim}")
        index = cls(dim, factory, search_params=search_params, cpu_index=cpu_index)
        index._mapped = buffer if mapped else None
        return index

    def _owned(self):
        """The CPU index, made a copy of its own first if it is read in place from a memory map (FAISS cannot
        change an index whose arrays it does not own)."""
        if self._mapped is not None:
            self.cpu_index = FaissIndex.from_bytes(self.to_bytes(), self.dim, self.factory, self.search_params).cpu_index
            self._mapped, self._index = None, None
        return self.cpu_index

    def set_search_params(self, params: str) -> None:
        """Search with other parameters (FAISS syntax, e.g. ``efSearch=512``) from the next search on."""
        self.search_params = params
        self._index = None

    @property
    def ntotal(self) -> int:
        return int(self.cpu_index.ntotal)

    @property
    def index(self):
        """The index searches run on: a GPU copy when GPUs are used, else the CPU index."""
        if self._index is None:
            faiss = faiss_module()
            if self.use_gpu:
                try:
                    self._index = faiss.index_cpu_to_all_gpus(self.cpu_index)
                    space = faiss.GpuParameterSpace()
                except RuntimeError as e:  # an index type (or id map) this FAISS build cannot put on a GPU
                    warnings.warn(f"FAISS cannot move a {self.factory} index to the GPU ({e}); searching on the CPU")
                    self.use_gpu = False
            if not self.use_gpu:
                self._index = self.cpu_index
                space = faiss.ParameterSpace()
            if self.search_params:
                self._apply_search_params(space, self._index)
        return self._index

    def _codes(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        return sign_codes(vectors) if self.binary else vectors

    def add(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Train the index if its type needs it, then add the vectors (with ``ids``, or 0..n-1 in order)."""
        codes = self._codes(vectors)
        index = self._owned()
        if not index.is_trained:
            try:
                index.train(codes)
            except RuntimeError as e:
                raise LookalikeError(f"A {self.factory} index cannot be trained on {len(codes)} vectors "
                                     f"({faiss_reason(e)}): use Flat or HNSW32, or fewer IVF cells "
                                     f"(about 40 images per cell, e.g. IVF{max(1, len(codes) // 40)},Flat)") from e
        if ids is None:
            index.add(codes)
        else:
            index.add_with_ids(codes, np.ascontiguousarray(ids, dtype=np.int64))
        self._index = None

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (for a binary index: the ±1/sqrt(dim) vectors of their codes)."""
        try:
            rows = [self.cpu_index.reconstruct(int(i)) for i in ids]
        except RuntimeError as e:
            raise LookalikeError(f"A {self.factory} index does not keep its vectors; use Flat, HNSW32 "
                                 f"or BFlat for this") from e
        if not self.binary:
            return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)
        bits = np.unpackbits(np.stack(rows), axis=1)[:, :self.dim] if rows else np.zeros((0, self.dim))
        return ((bits.astype(np.float32) * 2 - 1) / np.sqrt(self.dim)).astype(np.float32)

    def remove(self, ids: np.ndarray) -> None:
        """Remove items by id; index types that cannot (HNSW) are rebuilt from their stored vectors."""
        faiss = faiss_module()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        try:
            self._owned().remove_ids(faiss.IDSelectorBatch(ids))
        except RuntimeError:
            all_ids = faiss.vector_to_array(self.cpu_index.id_map)
            keep = all_ids[~np.isin(all_ids, ids)]
            vectors = self.reconstruct(keep)
            self.cpu_index = self._new_index(faiss, self.dim, self.factory, ids=True)
            self.add(vectors, keep)
        self._index = None

    def search(self, queries: np.ndarray, k: int, chunk_size: int = 16384,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids) of the top ``k``, best first; ids are -1 where fewer exist.

        ``allowed`` restricts the search to these ids (a FAISS ``IDSelector``, on the CPU index).
        """
        queries = self._codes(queries)
        index, params = self.index, None
        if allowed is not None:
            faiss = faiss_module()
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
            params = _selecting_params(faiss, self.cpu_index, selector) if not self.binary \
                else faiss.SearchParameters(sel=selector)
            index = self.cpu_index
        elif self.use_gpu and k > FAISS_GPU_MAX_K:
            warnings.warn(f"FAISS on GPU caps k at {FAISS_GPU_MAX_K}; searching k={k} on the CPU")
            index = self.cpu_index
        # faiss.contrib.torch_utils (imported by PML) wraps `search` without `params`; the
        # original stays reachable as `search_numpy`
        search = getattr(index, "search_numpy", index.search)
        try:
            parts = [search(queries[s:s + chunk_size], k, params=params) for s in range(0, len(queries), chunk_size)]
        except RuntimeError as e:
            if params is None:
                raise
            raise LookalikeError(f"A {self.factory} index cannot search a subset (--category); build it with "
                                 f"Flat, HNSW32, IVF...,Flat or BFlat") from e
        sims, ids = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        if self.binary:
            sims = 1 - 2 * sims.astype(np.float32) / self.dim
        return sims, ids


def _selecting_params(faiss, index, selector):
    """Search parameters restricting ``index`` to ``selector``'s ids, with the index's own nprobe / efSearch (a
    bare SearchParametersIVF / HNSW would search with FAISS's defaults, nprobe 1 and efSearch 16)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=inner.hnsw.efSearch)
    return faiss.SearchParameters(sel=selector)


@contextmanager
def _memory_bound(extra: int) -> Iterator[None]:
    """Within the block, the process may map at most ``extra`` more bytes of address space (Linux; elsewhere no
    bound): an allocation beyond fails at once instead of filling the memory."""
    try:
        import resource

        with open("/proc/self/status") as f:
            used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, StopIteration, ValueError):
        yield
        return
    bound = used + extra if hard == resource.RLIM_INFINITY else min(hard, used + extra)
    resource.setrlimit(resource.RLIMIT_AS, (bound, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _chunk_rows(queries: torch.Tensor, gallery: torch.Tensor, itemsize: int = 4) -> int:
    """Queries per block of similarities: ~256 MB on a CPU; on a GPU up to an eighth of its free memory
    (at most 4 GB), since small blocks re-read the whole gallery once per block."""
    budget = 1 << 28
    if queries.device.type == "cuda":
        budget = min(1 << 32, torch.cuda.mem_get_info(queries.device)[0] // 8)
    return max(1, min(len(queries), budget // itemsize // max(1, len(gallery))))


def candidate_count(k: int, n: int) -> int:
    """Candidates a reduced-precision search keeps per query for exact re-scoring: k plus a margin for
    the items that bfloat16 rounding (~0.4% of a similarity) may reorder across the k-th place."""
    return min(n, k + max(32, k // 2))


def _rescore(queries: torch.Tensor, gallery: torch.Tensor, cand: torch.Tensor, k: int,
             exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 similarities of each query's candidates, best ``k`` first (in slices of ~256 MB)."""
    rows = max(1, (1 << 28) // (4 * cand.shape[1] * gallery.shape[1]))
    sims, idx = [], []
    for start in range(0, len(queries), rows):
        c = cand[start:start + rows]
        s = torch.bmm(gallery[c], queries[start:start + rows, :, None]).squeeze(2)
        if exclude is not None:
            s.masked_fill_(c == exclude[start:start + rows, None], float("-inf"))
        s, order = s.topk(k, dim=1)
        sims.append(s)
        idx.append(c.gather(1, order))
    return torch.cat(sims), torch.cat(idx)


def _torch_knn(queries: torch.Tensor, gallery: torch.Tensor, k: int, exclude: torch.Tensor | None,
               chunk_size: int | None, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    if precision not in PRECISIONS:
        raise LookalikeError(f"knn.precision={precision!r} is not one of {PRECISIONS}")
    reduced = precision == "bf16" or (precision == "auto" and queries.device.type == "cuda")
    g32 = gallery.float()
    q, g = (queries.bfloat16(), g32.bfloat16()) if reduced else (queries.float(), g32)
    kk = candidate_count(k, len(gallery)) if reduced else k
    chunk_size = chunk_size or _chunk_rows(q, g, g.element_size())
    sims, idx = [], []
    for start in range(0, len(q), chunk_size):
        block = q[start:start + chunk_size] @ g.T
        if exclude is not None:  # each query's own column to -inf, without a round trip to the host
            ex = exclude[start:start + chunk_size, None]
            col = ex.clamp(min=0)
            block.scatter_(1, col, torch.where(ex >= 0, float("-inf"), block.gather(1, col)))
        s, i = block.topk(kk, dim=1)
        if reduced:
            ex = None if exclude is None else exclude[start:start + chunk_size]
            s, i = _rescore(queries[start:start + chunk_size].float(), g32, i, k, ex)
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
    precision: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` gallery items for every query: (similarities, gallery indices), best first.

    ``exclude[i]`` is a gallery index query ``i`` must not retrieve (itself, in the leave-one-out
    protocol) or -1. The torch backend holds at most ``chunk_size x len(gallery)`` similarities;
    ``precision`` (torch backend): ``fp32``, or ``bf16`` candidates re-scored in float32 (``auto``: bf16 on
    a GPU, where it runs on the tensor cores, fp32 elsewhere); ``search_params`` (FAISS backend): e.g.
    ``efSearch=128``. Either given to the other backend explicitly is an error.
    """
    if backend == "faiss" and precision != "auto":
        raise LookalikeError(f"knn.precision={precision} applies to the torch backend; FAISS searches in float32 "
                             "(set knn.backend=torch, or leave knn.precision=auto)")
    if backend == "torch" and search_params:
        raise LookalikeError(f"knn.search_params={search_params!r} are FAISS parameters; the torch backend searches "
                             "exactly (set knn.backend=faiss, or knn.search_params='')")
    has_exclude = exclude is not None and bool((exclude >= 0).any())
    k = min(k, len(gallery) - (1 if has_exclude else 0))
    if len(queries) == 0 or k <= 0:
        return torch.zeros(len(queries), 0, device=queries.device), torch.zeros(len(queries), 0, dtype=torch.long,
                                                                                device=queries.device)
    backend = resolve_backend(backend, queries.device)
    if backend == "torch":
        return _torch_knn(queries, gallery.to(queries.device), k, exclude if has_exclude else None, chunk_size,
                          precision)
    index = FaissIndex(gallery.shape[1], factory, search_params=search_params)
    index.add(gallery.detach().float().cpu().numpy())
    q = queries.detach().float().cpu().numpy()
    if has_exclude:
        sims, ids = _drop_excluded(*index.search(q, k + 1), exclude.cpu().numpy(), k)
    else:
        sims, ids = index.search(q, k)
    return torch.from_numpy(sims).to(queries.device), torch.from_numpy(ids).long().to(queries.device)
