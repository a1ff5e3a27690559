"""A searchable catalogue: embeddings of catalogue images in a FAISS index, with their metadata.

A ``.lkidx`` file is a zip holding ``index.faiss`` (the FAISS index), ``items.json`` (id, path, label and
manifest fields of each item), ``meta.json`` (format, embedder hash, dimension, index type) and, for compressed
index types, ``vectors.npy``: the exact float embeddings in item order, stored uncompressed so that searches
memory-map it and re-score their candidates with it. A catalogue that keeps local features adds their arrays
(``local_*.npy``) and their vote index (``votes.faiss``). Every member is stored uncompressed and read in place: the
arrays and both FAISS indexes are memory-mapped, so a search process holds only the pages it touches. It is written
atomically, its large members a piece at a time, and it refuses queries embedded by another embedder than the one it
was built with.
"""

from __future__ import annotations

import json
import logging
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from lookalike.catalogue.base import Catalogue, SearchHit, check_meta
from lookalike.catalogue.build import BuildInputs, BuildOptions, embed_catalogue, finish, partial_folder
from lookalike.catalogue.filters import Columns, Condition, mask
from lookalike.catalogue.local import build_local, check_local_meta
from lookalike.catalogue.sharded import Processes, Share
from lookalike.embedder.file import embedder_from_payload
from lookalike.errors import LookalikeError
from lookalike.files import atomic_write, locked, text_field
from lookalike.models.embedder import Embedder, ImageLike
from lookalike.retrieval.expansion import database_augmentation
from lookalike.retrieval.knn import FaissIndex, is_lossy, ivf_cells, rescore
from lookalike.verification.features import LocalFeatures
from lookalike.verification.store import FeatureStore, layout
from lookalike.verification.votes import DescriptorVotes

log = logging.getLogger(__name__)

FORMAT = "lookalike-index/2"
META_KEYS = ("format", "embedder_hash", "dim", "factory", "count", "next_id", "embedder")
# Members of a .lkidx are stored uncompressed (what reading one takes is bounded by the file's size); meta.json is
# at most this large, items.json at most the file, the FAISS index at most what its count of items can take.
MAX_META_BYTES = 1 << 20
# A loaded vote index's descriptors are checked to belong to its items in this many of its lists (all of them would
# read every id: seconds at a million items; a vote for an id no item has is skipped at search time anyway)
OWNERS_CHECKED = 64
FILTER_CACHE = 32  # filter expressions whose matching ids a FileCatalogue keeps
DEFAULT_RERANK = 200  # candidates a compressed index re-scores with the exact vectors (results/search.md)
# A filter keeping at most this many items is searched exactly among them (approximate indexes lose most of a
# small filtered set's neighbours: HNSW32 at 1% of 100k items kept 0.23-0.36 of exact recall@10, search.md)
EXACT_SUBSET = 20_000


class FileCatalogue(Catalogue):
    """Catalogue items, their FAISS index (keyed by item id) and the fingerprint of the embedder that
    made them. Items can be added and removed; ids are never reused."""

    def __init__(self, faiss_index: FaissIndex, items: list[dict[str, Any]], meta: dict[str, Any],
                 exact: np.ndarray | None = None, local: FeatureStore | None = None,
                 votes: DescriptorVotes | None = None):
        self.faiss = faiss_index
        self.meta = meta
        self.exact = exact  # float vectors in item order (a memory map once loaded), or None
        self.local, self.votes = local, votes  # local features in item order and their vote index, or None
        self._set_items(items)

    @classmethod
    def build(cls, embedder_path: str | Path, images: str | Path, options: BuildOptions = BuildOptions(),
              checkpoint: Path | None = None, checkpoint_every: int = 4096,
              processes: Processes | None = None) -> FileCatalogue | None:
        """Embed every catalogue image with the embedder file and index the embeddings as ``options`` say (see
        :func:`~lookalike.catalogue.build.embed_catalogue` for ``checkpoint`` and ``processes``; under DDP the
        processes share the local features too, and only rank 0 gets the catalogue, the others None)."""
        inputs = BuildInputs.read(embedder_path, images, options.boxes)
        embedder = embedder_from_payload(inputs.payload)
        index = FaissIndex(embedder.embedding_size, options.factory, search_params=options.params, ids=True)
        cells, listed = ivf_cells(options.factory), len(inputs.items)
        if cells > listed:
            raise LookalikeError(f"A {options.factory} index needs at least {cells} images to train its cells "
                                 f"({listed} listed; about 40 per cell is best): use Flat or HNSW32, or e.g. "
                                 f"IVF{max(1, listed // 40)},Flat")
        rerank = (DEFAULT_RERANK if is_lossy(options.factory) else 0) if options.rerank is None else options.rerank
        if rerank < 0 or options.dba_k < 0:
            raise LookalikeError(f"rerank={rerank}, dba_k={options.dba_k}: use 0 (off) or a positive number of items")
        items, vectors = embed_catalogue(inputs.payload, inputs.items, options.batch_size, options.num_workers,
                                         checkpoint, checkpoint_every, embedder, processes, inputs.finder)
        share = Share.current()
        for i, item in enumerate(items):
            item["id"] = i
        meta = {"format": FORMAT, **inputs.meta(options, int(vectors.shape[1])), "rerank": rerank,
                "count": len(items), "next_id": len(items),
                "dba": {"k": options.dba_k, "alpha": options.dba_alpha} if options.dba_k else None}
        built = cls(index, [], meta, np.zeros((0, vectors.shape[1]), np.float32) if rerank else None)
        local = None
        if options.local is not None:
            found = build_local(range(len(items)), [it["path"] for it in items], options.local, checkpoint,
                                options.num_workers, share)
            if found is None:
                return None
            local, built.votes, meta["local"] = found
            built.local = FeatureStore.empty(options.local.dims)
        if not share.leads:
            return None
        built.add_vectors(items, vectors, local, votes=False)
        return built

    def add_vectors(self, items: list[dict[str, Any]], vectors: np.ndarray, local: list[LocalFeatures] | None = None,
                    votes: bool = True) -> None:
        """Add items (with their ``id``), their embeddings and (a catalogue that keeps them) their local features
        (``votes``: into the vote index too; a new one holds them already); with database-side augmentation
        (``meta["dba"]``) each new vector is first augmented with its nearest items among the catalogue and the new
        ones."""
        if self.keeps_local:
            if local is None or len(local) != len(items):
                raise LookalikeError("This catalogue keeps local features: new items need theirs")
            self.local = self.local.appended(local)
            if votes:
                self.votes.add(np.array([it["id"] for it in items], np.int64), local)
                if self.votes.outgrown():  # trained anew from the stored features, not from the images
                    lists = self.votes.lists
                    self.votes = DescriptorVotes.build(np.array([it["id"] for it in self.items + items], np.int64),
                                                       self.local, self.local.dims)
                    log.info("the descriptor vote index outgrew its %d lists: trained anew with %d", lists,
                             self.votes.lists)
        dba = self.meta.get("dba")
        if dba and len(vectors):
            vectors = self._augmented(vectors, dba["k"], dba["alpha"])
        self.faiss.add(vectors, np.array([it["id"] for it in items], dtype=np.int64))
        if self.exact is not None:
            self.exact = np.concatenate([np.asarray(self.exact), vectors.astype(np.float32)])
        self._set_items(self.items + items)

    def _augmented(self, new: np.ndarray, k: int, alpha: float) -> np.ndarray:
        """DBA of ``new`` against the current catalogue and themselves (exact search)."""
        import torch

        pool = torch.from_numpy(np.concatenate([self.vectors(), new]) if self.items else new).float()
        augmented = database_augmentation(pool, min(k, len(pool) - 1), alpha) if len(pool) > 1 else pool
        return augmented[len(pool) - len(new):].numpy()

    @classmethod
    def build_file(cls, out: str | Path, embedder_path: str | Path, images: str | Path,
                   options: BuildOptions = BuildOptions()) -> FileCatalogue | None:
        """:meth:`build` and :meth:`save` to ``out``, keeping progress in ``<out>.partial/`` so that the same call
        after an interruption continues where it stopped (the folder goes once the catalogue is written), and with
        several processes their shards in ``<out>.shards/``; under DDP rank 0 writes, the others get None."""
        partial = partial_folder(Path(out))
        index = cls.build(embedder_path, images, options, partial, processes=options.processes(Path(out)))
        if index is None:
            return None
        with locked(out):
            index.save(out)
        finish(partial)
        return index

    @classmethod
    @contextmanager
    def edit(cls, path: str | Path) -> Iterator[FileCatalogue]:
        """``with FileCatalogue.edit(path) as index: ...``: load, change and save the index while holding its lock, so
        that two processes changing one file lose nothing (the second waits for the first)."""
        with locked(path):
            index = cls.load(path)
            yield index
            index.save(path)

    def known_paths(self, paths: Sequence[str]) -> set[str]:
        return {it["path"] for it in self.items} & set(paths)

    def add_items(self, items: list[dict[str, Any]], vectors: np.ndarray,
                  local: list[LocalFeatures] | None = None) -> list[dict[str, Any]]:
        for i, item in enumerate(items, self.meta["next_id"]):
            item["id"] = i
        self.add_vectors(items, vectors, local)
        self.meta["next_id"] = items[-1]["id"] + 1
        return items

    def remove(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Remove items by id; returns the removed items."""
        unknown = sorted(set(ids) - self.by_id.keys())
        if unknown:
            raise LookalikeError(f"No catalogue item has the id(s) {unknown[:10]}")
        removed = [self.by_id[i] for i in ids]
        self.faiss.remove(np.array(list(ids), dtype=np.int64))
        keep = ~np.isin(self.ids, np.array(list(ids), dtype=np.int64))
        if self.exact is not None:
            self.exact = np.asarray(self.exact)[keep]
        if self.local is not None:
            self.local = self.local.kept(keep)
            self.votes.remove(np.array(list(ids), dtype=np.int64))
        self._set_items([it for it, kept in zip(self.items, keep) if kept])
        return removed

    def ids_of(self, paths: Sequence[str]) -> dict[str, int]:
        by_path = {it["path"]: it["id"] for it in self.items}
        return {p: by_path[p] for p in paths if p in by_path}

    def _set_items(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.by_id = {it["id"]: it for it in items}
        self.ids = np.array([it["id"] for it in items], dtype=np.int64)  # ascending: ids only grow
        self.meta["count"] = len(items)
        self._matching: dict[Condition, np.ndarray] = {}  # filter condition -> ids (items changed: answers anew)
        self._values: Columns | None = None  # the items' column values, read at the first filter
        self._columns: set[str] | None = None

    def save(self, path: str | Path) -> Path:
        """Write the ``.lkidx`` file atomically (its large members a piece at a time)."""

        def write(tmp: str) -> None:
            with zipfile.ZipFile(tmp, "w") as z:  # members stored, not compressed: they are memory-mapped
                z.writestr("meta.json", json.dumps(self.meta))
                z.writestr("items.json", json.dumps(self.items))
                indexes = {"index.faiss": self.faiss, "votes.faiss": self.votes} if self.local is not None \
                    else {"index.faiss": self.faiss}
                for name, index in indexes.items():
                    with z.open(name, "w", force_zip64=True) as f:
                        index.write(f.write)
                arrays = {"vectors": self.exact} if self.exact is not None else {}
                if self.local is not None:
                    arrays.update({f"local_{name}": a for name, a in self.local.arrays().items()})
                for name, array in arrays.items():
                    with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array(f, np.ascontiguousarray(array))

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> FileCatalogue:
        """Read a ``.lkidx`` file, or fail with one message if it is missing, corrupt or foreign."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise LookalikeError(f"No index file at '{path}' (make one with `lookalike index build`)")
        try:
            with zipfile.ZipFile(path) as z:
                meta = json.loads(_member(z, "meta.json", MAX_META_BYTES))
                if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                    found = meta.get("format") if isinstance(meta, dict) else None
                    raise LookalikeError(f"'{path}' is not a lookalike index of this version (expected format "
                                         f"{FORMAT}, found {found}): build it again with `lookalike index build`")
                missing = [k for k in META_KEYS if k not in meta]
                if missing:
                    raise LookalikeError(f"'{path}' is a damaged lookalike index (meta.json lacks {missing})")
                count, dim = check_meta(meta, str(path))["count"], meta["dim"]
                text_field(meta["factory"], "factory", path)
                items = json.loads(_member(z, "items.json", path.stat().st_size))
                blob = _in_place(path, z, "index.faiss", max_index_bytes(meta["factory"], dim, count))
                exact = _mapped(path, z, "vectors.npy", (count, dim), np.float32) if "vectors.npy" in z.namelist() \
                    else None
                if not isinstance(items, list) or len(items) != count or not all(map(_well_formed, items)):
                    raise LookalikeError(f"'{path}' is a damaged lookalike index (items.json does not match "
                                         "meta.json, or an item is not an id, a path, a label and text columns)")
                if [it["id"] for it in items] != sorted({it["id"] for it in items}):
                    raise LookalikeError(f"'{path}' is a damaged lookalike index (item ids not unique and ascending)")
                local = votes = None
                if meta.get("local") is not None:
                    local, votes = _local_members(path, z, check_local_meta(meta["local"], str(path)),
                                                  np.array([it["id"] for it in items], np.int64))
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            raise LookalikeError(f"'{path}' is not a readable lookalike index ({e})") from e
        try:
            index = FaissIndex.from_bytes(blob, dim, meta["factory"], meta.get("search_params", ""), mapped=True)
        except LookalikeError as e:
            raise LookalikeError(f"'{path}' is a damaged lookalike index: {e}") from e
        if index.ntotal != count:
            raise LookalikeError(f"'{path}' is a damaged lookalike index ({index.ntotal} vectors for {count} items)")
        return cls(index, items, meta, exact, local, votes)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, where: Condition | None = None,
                       rerank: int | None = None) -> list[list[SearchHit]]:
        """Top-``k`` catalogue items for each query vector, only among the items passing ``where`` (FAISS id
        selectors over :meth:`matching`). ``rerank`` (default: the index's own): the index's best
        ``max(k, rerank)`` candidates are re-scored with the exact vectors kept in the file (compressed index types
        keep them; 0: no re-scoring)."""
        self.check_query(k)
        self.check_vectors(vectors)
        rerank = self.meta.get("rerank", 0) if rerank is None else rerank
        if rerank and self.exact is None:
            raise LookalikeError(f"This index keeps no exact vectors to re-score with: rerank=0, or build it with "
                                 f"--rerank {DEFAULT_RERANK}")
        allowed = None if where is None else self.matching(where)
        if allowed is not None and len(allowed) == 0:
            return [[] for _ in vectors]
        if allowed is not None and len(allowed) <= EXACT_SUBSET and self.meta["factory"] != "Flat" \
                and (self.exact is not None or not is_lossy(self.meta["factory"])):
            try:
                return self._search_among(vectors, k, allowed)
            except LookalikeError:  # an index that keeps no vectors to read back (IVF without exact ones)
                pass
        available = len(self.items) if allowed is None else len(allowed)
        scores, ids = self.faiss.search(vectors, min(max(k, rerank), available), allowed=allowed)
        if rerank:
            rows = np.where(ids >= 0, np.searchsorted(self.ids, np.maximum(ids, 0)), -1)
            scores, ids = rescore(vectors, ids, rows, self.exact, min(k, available))
        return [[self.hit(int(i), float(s)) for s, i in zip(row_s, row_i) if i >= 0]
                for row_s, row_i in zip(scores, ids)]

    def _search_among(self, vectors: np.ndarray, k: int, ids: np.ndarray) -> list[list[SearchHit]]:
        """Exact top-``k`` among the items ``ids`` (a small filtered set), with their stored vectors."""
        scores = np.asarray(vectors, np.float32) @ self.vectors_of(ids).T
        top = np.argsort(-scores, 1, kind="stable")[:, :k]
        return [[self.hit(int(ids[j]), float(row[j])) for j in order] for row, order in zip(scores, top)]

    def hit(self, item_id: int, score: float) -> SearchHit:
        """The result for one catalogue item."""
        item = self.by_id[item_id]
        return SearchHit(item_id, item["path"], item["label"], score, item.get("fields"))

    def count(self, where: Condition | None = None) -> int:
        """How many items there are (``where``: that pass the condition)."""
        return len(self.items) if where is None else len(self.matching(where))

    def item(self, item_id: int) -> dict[str, Any] | None:
        """One item by id, or None."""
        return self.by_id.get(item_id)

    def listing(self) -> Iterator[dict[str, Any]]:
        """Every item, in id order."""
        return iter(self.items)

    def columns(self) -> set[str]:
        """``label`` and every manifest column an item has (found once per change of the items)."""
        if self._columns is None:
            self._columns = {"label", *(k for it in self.items for k in (it.get("fields") or {}))}
        return self._columns

    def set_search_params(self, params: str) -> None:
        """Search with other FAISS parameters (``efSearch=512``, ``nprobe=64``) from the next search on."""
        self.faiss.set_search_params(params)

    def matching(self, where: Condition) -> np.ndarray:
        """The ids of the items passing a filter condition (:mod:`lookalike.catalogue.filters`); the last few
        conditions' answers are kept (a server answers the same filter many times)."""
        if where not in self._matching:
            if len(self._matching) >= FILTER_CACHE:
                self._matching.pop(next(iter(self._matching)))
            if self._values is None:
                self._values = Columns([{"label": it["label"], **(it.get("fields") or {})} for it in self.items])
            self._matching[where] = self.ids[mask(where, self._values)]
        return self._matching[where]

    def local_features(self, ids: Sequence[int]) -> list[LocalFeatures]:
        """The stored local features of the items ``ids``, in that order."""
        self.check_local()
        return self.local.features(np.searchsorted(self.ids, np.asarray(ids, dtype=np.int64)))

    def vote_candidates(self, query: LocalFeatures, top: int, where: Condition | None = None) -> list[tuple[int, int]]:
        self.check_local()
        allowed = None if where is None else self.matching(where)
        return self.votes.candidates(query, top, allowed)

    def search(self, embedder: Embedder, images: Sequence[ImageLike], k: int = 10) -> list[list[SearchHit]]:
        """Embed ``images`` with ``embedder`` and search the catalogue."""
        self.check_query(k)
        return self.search_vectors(embedder.embed(list(images)).numpy(), k)

    def vectors(self) -> np.ndarray:
        """The stored embeddings in item order: the exact ones where the file keeps them, else those the FAISS
        index holds (Flat, HNSW and BFlat indexes keep theirs)."""
        return np.asarray(self.exact) if self.exact is not None else self.faiss.reconstruct(self.ids)

    def vectors_of(self, ids: Sequence[int]) -> np.ndarray:
        """The stored embeddings of the items ``ids``, in that order."""
        rows = np.searchsorted(self.ids, np.asarray(ids, dtype=np.int64))
        if self.exact is not None:
            return np.asarray(self.exact[rows], dtype=np.float32)
        return self.faiss.reconstruct(self.ids[rows])

    def batches(self, size: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every item as (ids, embeddings), ``size`` at a time, in id order."""
        for start in range(0, len(self.items), size):
            ids = self.ids[start:start + size]
            yield ids, self.vectors_of(ids)


def _well_formed(item: Any) -> bool:
    """An item of items.json as lookalike writes it: a whole-number id, a path and a label, text columns."""
    fields = item.get("fields", {}) if isinstance(item, dict) else None
    return (isinstance(item, dict) and type(item.get("id")) is int and item["id"] >= 0
            and isinstance(item.get("path"), str) and isinstance(item.get("label"), str)
            and isinstance(fields, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()))


def _member(z: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """A member of the zip, refused unread when it is compressed (lookalike stores every member as it is, so what
    one takes to read is bounded by the file's own size) or larger than ``limit`` bytes."""
    info = z.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        raise LookalikeError(f"{name} is compressed, and lookalike stores a catalogue's members as they are (so that "
                             "reading one never takes more than the file's own size): not read")
    if info.file_size > limit:
        raise LookalikeError(f"{name} would be {info.file_size:,} bytes, more than an index of its size "
                             f"holds ({limit:,}): not read")
    return z.read(info)


def _data_offset(path: Path, z: zipfile.ZipFile, name: str) -> int:
    """Where the bytes of the member ``name`` begin in the file; refused unless it is stored uncompressed."""
    info = z.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        raise LookalikeError(f"'{path}' is a damaged lookalike index ({name} is compressed)")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise LookalikeError(f"'{path}' is a damaged lookalike index ({name} has no header)")
    offset = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
    if offset + info.file_size > path.stat().st_size:
        raise LookalikeError(f"'{path}' is a damaged lookalike index ({name} ends past the file)")
    return offset


def _in_place(path: Path, z: zipfile.ZipFile, name: str, limit: int) -> np.ndarray:
    """The bytes of the member ``name`` memory-mapped where they lie (a FAISS index is read from them in place),
    refused when larger than ``limit``."""
    offset, size = _data_offset(path, z, name), z.getinfo(name).file_size
    if size > limit:
        raise LookalikeError(f"{name} would be {size:,} bytes, more than an index of its size holds ({limit:,}): "
                             "not read")
    return np.memmap(path, np.uint8, "r", offset, (size,)) if size else np.zeros(0, np.uint8)


def _mapped(path: Path, z: zipfile.ZipFile, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The array member ``name`` memory-mapped in place (its pages are read only when a search touches them);
    refused unless it is stored uncompressed and holds exactly ``shape`` of ``dtype``."""
    with open(path, "rb") as f:
        f.seek(_data_offset(path, z, name))
        try:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"format version {version}")
            found, fortran, found_dtype = read_header(f)
        except ValueError as e:
            raise LookalikeError(f"'{path}' is a damaged lookalike index ({name}: {e})") from e
        offset = f.tell()
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if found != shape or fortran or found_dtype != np.dtype(dtype) or offset + size > path.stat().st_size:
        raise LookalikeError(f"'{path}' is a damaged lookalike index ({name} holds {found} {found_dtype}, "
                             f"not {shape} {np.dtype(dtype)})")
    return np.memmap(path, dtype, "r", offset, shape) if size else np.zeros(shape, dtype)


def _local_members(path: Path, z: zipfile.ZipFile, meta: dict[str, Any], ids: np.ndarray
                   ) -> tuple[FeatureStore, DescriptorVotes]:
    """The local features (memory-mapped) and their vote index, each checked against the items ``ids`` (the
    vote index holds each item's descriptors under its id, as many as it has)."""
    count = len(ids)
    names = {"local_counts.npy", "local_sizes.npy", "local_xy.npy", "local_descriptors.npy", "votes.faiss"}
    if not names <= set(z.namelist()):
        raise LookalikeError(f"'{path}' is a damaged lookalike index (it lacks {sorted(names - set(z.namelist()))})")
    counts = np.array(_mapped(path, z, "local_counts.npy", (count,), np.int32))
    if len(counts) and (counts.min() < 0 or counts.max() > meta["count"]):
        raise LookalikeError(f"'{path}' is a damaged lookalike index (local_counts.npy)")
    total, dims = int(counts.sum()), int(meta["codes"]["dims"])
    arrays = {name: _mapped(path, z, f"local_{name}.npy", (rows, *shape), dtype)
              for (name, (dtype, shape)), rows in zip(layout(dims).items(), (count, count, total, total))}
    store = FeatureStore.checked(arrays, count, dims, str(path))
    try:
        votes = DescriptorVotes.from_bytes(_in_place(path, z, "votes.faiss", (1 << 26) + total * 256), dims,
                                           mapped=True)
    except LookalikeError as e:
        raise LookalikeError(f"'{path}' is a damaged lookalike index: {e}") from e
    if votes.index.ntotal != total:
        raise LookalikeError(f"'{path}' is a damaged lookalike index ({votes.index.ntotal} descriptors in votes.faiss "
                             f"for {total} local features)")
    if not np.isin(votes.owners(OWNERS_CHECKED), ids[counts > 0]).all():
        raise LookalikeError(f"'{path}' is a damaged lookalike index (votes.faiss holds descriptors of other items "
                             f"than its local features)")
    return store, votes


def max_index_bytes(factory: str, dim: int, count: int) -> int:
    """The most bytes the FAISS index of ``count`` items of ``dim`` dimensions can take, for any index type
    lookalike builds: each vector with its graph links and id, plus IVF centroids and a fixed overhead."""
    return (1 << 26) + count * (4 * dim + 1024) + ivf_cells(factory) * 4 * dim
