"""A catalogue in a Milvus collection: the vector-database backend (``--backend milvus``).

One client for every size: a local file (``catalog.db``: Milvus Lite, the embedded engine, for tests and small
catalogues; one process at a time) or a server or cluster (``http://host:19530``). The collection holds per item
its id, embedding, path and label, and the manifest's extra columns as dynamic fields (each as text, plus typed
copies for numeric and true/false filters: :func:`lookalike.catalogue.filters.milvus_fields`); the collection's
``lookalike.meta`` property holds what a ``.lkidx`` file's meta.json holds (the embedder's fingerprint, the index
type and its search parameters) and the calibrated threshold of the embedder file it was built with. FAISS index
types map to Milvus's own: ``Flat`` -> FLAT, ``HNSW32`` -> HNSW (M 32), ``IVF1024,Flat`` -> IVF_FLAT, ``IVF1024,PQ32`` ->
IVF_PQ, ``IVF1024,SQ8`` -> IVF_SQ8; inner product on normalised embeddings, as the file. A catalogue's local
features are kept twice, as the file keeps them: for matching, packed in the item's row (``features``: its
places and codes as text, read back by the item's id); for the votes, as rows of ``<collection>_local`` (its item,
its descriptor's code as a float vector: the type Milvus Lite takes), indexed as the file's vote index is (IVF_SQ8,
lists growing with them). An item's id is a hash of
its image path (53 bits: exact in JSON and JavaScript), so re-inserting after an interruption and two writers
adding at once never duplicate an item.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from lookalike.choices import DEFAULT_COLLECTION
from lookalike.errors import LookalikeError
from lookalike.files import locked, number_field
from lookalike.catalogue.build import BuildInputs, BuildOptions, catalogue_meta, embed_catalogue
from lookalike.embedder.file import calibrated_threshold, embedder_hash
from lookalike.catalogue.filters import NUMBER, TRUTH, Condition, milvus_expression, milvus_fields
from lookalike.catalogue.sharded import Processes, Share
from lookalike.catalogue.base import Catalogue, SearchHit, check_meta
from lookalike.catalogue.local import build_local, check_local_meta, feature_options, local_codes
from lookalike.retrieval.knn import default_search_params
from lookalike.verification.features import NONE, FeatureOptions, LocalFeatures
from lookalike.verification.store import packed, packed_size, unpacked
from lookalike.verification.votes import MAX_CELLS, NEIGHBOURS, PROBE, outgrown, tally, vote_lists

FORMAT = "lookalike-milvus/1"
META = "lookalike.meta"
INSERT_BATCH = 1000  # rows per insert call
MAX_TOP_K = 16384  # Milvus's limit on results per query
MAX_PATH, MAX_LABEL = 4096, 1024
RESERVED = {"id", "vector", "path", "label", "features"}
MAX_TEXT = 65535  # the longest text a Milvus field holds: an item's packed features, as base64
LOCAL = "_local"  # the collection of a catalogue's local features: <collection>_local, one row per feature
OWNER = "lookalike_local"  # the property of <collection>_local naming the build it belongs to (its key)
LOCAL_ROWS = 16000  # feature rows written per call
IVF_FROM = 128  # vote lists from which the local features are indexed in lists (Milvus Lite trains at least 128)
_LITE_CLIENTS: Counter[str] = Counter()  # the open clients of each Milvus Lite database in this process


def item_id(path: str) -> int:
    """An item's id: 53 bits of the SHA-256 of its image path."""
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big") >> 11


def index_spec(factory: str) -> tuple[str, dict[str, int]]:
    """Milvus's index type and build parameters for a FAISS factory string."""
    if factory == "Flat":
        return "FLAT", {}
    if found := re.fullmatch(r"HNSW(\d+)", factory):
        return "HNSW", {"M": int(found.group(1)), "efConstruction": 200}
    if found := re.fullmatch(r"IVF(\d+),(Flat|SQ8|PQ(\d+))", factory):
        cells = {"nlist": int(found.group(1))}
        if found.group(2) == "Flat":
            return "IVF_FLAT", cells
        if found.group(2) == "SQ8":
            return "IVF_SQ8", cells
        return "IVF_PQ", {**cells, "m": int(found.group(3)), "nbits": 8}
    raise LookalikeError(f"--factory {factory}: the milvus backend builds Flat, HNSW<M>, IVF<n>,Flat, IVF<n>,SQ8 or "
                         f"IVF<n>,PQ<m> (binary codes and other FAISS types: --backend faiss)")


def search_spec(params: str) -> dict[str, int]:
    """FAISS-style search parameters (``efSearch=256``, ``nprobe=64``) as Milvus's (``ef``, ``nprobe``)."""
    names = {"efSearch": "ef", "nprobe": "nprobe"}
    spec = {}
    for part in filter(None, (p.strip() for p in params.split(","))):
        name, _, value = part.partition("=")
        if name not in names or not value.isdigit():
            raise LookalikeError(f"Search parameter {part!r}: the milvus backend takes efSearch=N and nprobe=N")
        spec[names[name]] = int(value)
    return spec


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names a Milvus server (else a Milvus Lite file)."""
    return uri.startswith(("http://", "https://", "tcp://"))


def connect(uri: str, token: str | None = None) -> Any:
    """A Milvus client for a local file (Milvus Lite) or a server URI (``token``: default ``$MILVUS_TOKEN``);
    one message when it cannot be had. The client's and gRPC's informational chatter is kept off the terminal.

    Each client has a connection of its own, closed with it: pymilvus otherwise keeps a closed client's connection
    for the next client of the same URI, pinging while idle, and Milvus Lite's server turns such a connection away
    after a minute or two ("too many pings"), so a client made later (a build connecting again after its
    extraction) could not connect."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # read when gRPC first loads
    logging.getLogger("pymilvus").setLevel(logging.ERROR)
    logging.getLogger("milvus_lite").setLevel(logging.CRITICAL)  # its server's start and stop, and its tracebacks
    # of databases it cannot open (the one message below says so)
    try:
        from pymilvus import MilvusClient
    except ImportError as e:
        raise LookalikeError("The milvus backend needs pymilvus (and milvus-lite for local files): "
                             "pip install 'lookalike[milvus]'") from e
    remote = is_remote(uri)
    if not remote:
        local = Path(uri).expanduser().resolve()
        if local.exists() and not local.is_dir():  # Milvus Lite keeps a database as a folder
            raise LookalikeError(f"'{uri}' is not a Milvus Lite database (a folder made by `lookalike index build "
                                 f"--backend milvus`): it is damaged or something else; build the catalogue again, "
                                 f"into another --out")
        local.parent.mkdir(parents=True, exist_ok=True)
    try:
        token = token or os.environ.get("MILVUS_TOKEN")
        where = uri if remote else str(Path(uri).expanduser().resolve())
        client = MilvusClient(where, dedicated=True, **({"token": token} if token else {}))
    except Exception as e:  # pymilvus raises its own exception types, some from the engine below it
        hint = ("a Milvus Lite database serves one process at a time: stop the other one (a `lookalike serve`?), "
                "or run a Milvus server and pass its URI; or it is damaged: build it again") if not remote \
            else "is the server running and reachable?"
        raise LookalikeError(f"Cannot open Milvus at {uri!r}: {e}. {hint}") from e
    if not remote:
        _LITE_CLIENTS[where] += 1
    return client


def disconnect(client: Any, uri: str) -> None:
    """Close a client of :func:`connect`; the last one of a Milvus Lite database in this process also stops the
    database's server, so that another process can open it (a search process after a build)."""
    client.close()
    if is_remote(uri):
        return
    where = str(Path(uri).expanduser().resolve())
    _LITE_CLIENTS[where] -= 1
    if _LITE_CLIENTS[where] <= 0:
        del _LITE_CLIENTS[where]
        from milvus_lite.server_manager import server_manager_instance
        server_manager_instance.release_server(where)


class MilvusCatalogue(Catalogue):
    """Catalogue items in one Milvus collection (see the module's text)."""

    def __init__(self, client: Any, collection: str, meta: dict[str, Any], uri: str):
        self.client, self.collection, self.meta, self.uri = client, collection, meta, uri
        client.load_collection(collection)  # a reopened collection starts released
        if meta.get("local") is not None:
            client.load_collection(collection + LOCAL)
        self._params = search_spec(meta.get("search_params", ""))

    @classmethod
    def open(cls, uri: str, collection: str = DEFAULT_COLLECTION, token: str | None = None) -> MilvusCatalogue:
        """The catalogue in ``collection`` at ``uri``; refused unless lookalike built it and finished building."""
        client = connect(uri, token)
        try:
            meta = _finished_meta(client, uri, collection)
        except LookalikeError:
            disconnect(client, uri)
            raise
        return cls(client, collection, meta, uri)

    @classmethod
    def build(cls, uri: str, embedder_path: str | Path, images: str | Path, collection: str = DEFAULT_COLLECTION,
              options: BuildOptions = BuildOptions(), checkpoint: Path | None = None,
              processes: Processes | None = None, token: str | None = None) -> MilvusCatalogue | None:
        """Embed the catalogue images as ``options`` say and insert them into a new collection; the same call after
        an interruption continues (embeddings saved in ``checkpoint``, rows already inserted skipped). Under DDP
        (``processes``) the processes share the embedding and the local features, and only rank 0 inserts and
        gets the catalogue; the others None."""
        if options.rerank or options.dba_k:
            raise LookalikeError("--rerank and --dba are the FAISS backend's (--backend faiss)")
        if options.local is not None:
            _check_fits(options.local)
        inputs = BuildInputs.read(embedder_path, images, options.boxes)
        index_spec(options.factory)
        search_spec(options.params)
        _check_columns(inputs.items)
        finder = inputs.finder
        key = hashlib.sha256(json.dumps([embedder_hash(inputs.payload), [it["path"] for it in inputs.items]]
                                        + ([finder.path] if finder else [])).encode()).hexdigest()
        if processes is None or processes.count <= 1:  # DDP's other ranks cannot open a Lite file rank 0 holds
            with _writing(uri):
                client = connect(uri, token)  # refused now, before the embedding work
                _check_new(client, uri, collection, key)
                if options.local is not None:
                    _claim_local(client, uri, collection, key)
                disconnect(client, uri)
        items, vectors = embed_catalogue(inputs.payload, inputs.items, options.batch_size, options.num_workers,
                                         checkpoint, processes=processes, finder=finder)
        share = Share.current()
        local = None
        if options.local is not None:
            found = build_local([item_id(it["path"]) for it in items], [it["path"] for it in items], options.local,
                                checkpoint, options.num_workers, share)
            local = None if found is None else (found[0], found[2])
        if not share.leads:
            return None
        return cls.create(uri, collection, items, vectors, embedder_hash(inputs.payload), str(inputs.embedder_path),
                          options.factory, options.params, token, key, calibrated_threshold(inputs.payload),
                          finder and finder.path, local)

    @classmethod
    def create(cls, uri: str, collection: str, items: list[dict[str, Any]], vectors: np.ndarray, embedder: str,
               embedder_path: str, factory: str = "Flat", search_params: str | None = None, token: str | None = None,
               key: str = "", threshold: float | None = None, boxes: str | None = None,
               local: tuple[list[LocalFeatures], dict[str, Any]] | None = None) -> MilvusCatalogue:
        """A collection of ``items`` (path, label, fields) and their embeddings made by the embedder of
        fingerprint ``embedder`` (``threshold``: its calibrated match threshold, kept for other readers of the
        collection; ``boxes``: the box file the images were cropped with; ``local``: the items' local features
        and their meta, kept in ``<collection>_local``); continues a collection left ``building`` with the same
        ``key``."""
        kind, build_params = index_spec(factory)
        if local is not None:
            _check_fits(feature_options(local[1]))
        search_params = default_search_params(factory) if search_params is None else search_params
        meta = {"format": FORMAT, **catalogue_meta(embedder, embedder_path, int(vectors.shape[1]), factory,
                                                   search_params, boxes),
                "threshold": threshold, "key": key,
                "columns": sorted({"label", *(c for it in items for c in it.get("fields") or {})}),
                "state": "building", "index": {"type": kind, "params": build_params},
                "local": None if local is None else local[1],
                "vote_lists": None if local is None else vote_lists(sum(map(len, local[0])))}
        with _writing(uri):
            client = connect(uri, token)
            continued = _check_new(client, uri, collection, key)
            if local is not None:
                _claim_local(client, uri, collection, key)
            if continued:
                _ensure_index(client, collection, meta)
                meta["writing"] = True  # the interrupted build may have left feature rows
            else:
                _create(client, collection, meta)
            if local is not None:
                _create_local(client, collection + LOCAL, key, int(local[1]["codes"]["dims"]), meta["vote_lists"])
            catalogue = cls(client, collection, meta, uri)
            catalogue.insert(items, vectors, skip_present=True, local=None if local is None else local[0])
            meta["state"] = "ready"
            catalogue.save_meta()
        return catalogue

    def save_meta(self) -> None:
        """Write ``meta`` to the collection's property."""
        self.client.alter_collection_properties(self.collection, properties={META: json.dumps(self.meta)})

    def insert(self, items: list[dict[str, Any]], vectors: np.ndarray, skip_present: bool = False,
               local: list[LocalFeatures] | None = None) -> int:
        """Insert items (path, label, fields) with their embeddings and (a catalogue that keeps them) their local
        features in batches, with progress; ``skip_present``: leave out the ids already stored (a build continued).
        Returns how many were inserted."""
        _check_columns(items)
        if self.keeps_local and (local is None or len(local) != len(items)):
            raise LookalikeError("This catalogue keeps local features: new items need theirs")
        inserted, replacing = 0, local is not None and self._begin_writing()
        with tqdm(total=len(items), desc="inserting into milvus", unit="item",
                  disable=len(items) < INSERT_BATCH) as bar:
            for start in range(0, len(items), INSERT_BATCH):
                chunk, chunk_vectors = items[start:start + INSERT_BATCH], vectors[start:start + INSERT_BATCH]
                chunk_local = None if local is None else local[start:start + INSERT_BATCH]
                if chunk_local is not None:  # the features first: an item is there once its row is
                    self._insert_local([item_id(it["path"]) for it in chunk], chunk_local, replacing)
                rows = [{"id": item_id(it["path"]), "vector": v.tolist(), "path": it["path"], "label": it["label"],
                         **milvus_fields({"label": it["label"], **(it.get("fields") or {})})}
                        for it, v in zip(chunk, chunk_vectors)]
                if chunk_local is not None:
                    for row, features in zip(rows, chunk_local):
                        row["features"] = base64.b64encode(packed(features)).decode()
                stored = self._stored_paths([r["id"] for r in rows])
                clash = [r["path"] for r in rows if r["id"] in stored and stored[r["id"]] != r["path"]]
                if clash:
                    raise LookalikeError(f"Two image paths share an item id (hash collision): {clash[0]!r} and "
                                         f"{stored[item_id(clash[0])]!r}; rename one of the files")
                rows = [r for r in rows if not (skip_present and r["id"] in stored)]
                if rows:
                    self.client.upsert(self.collection, rows)
                inserted += len(rows)
                bar.update(len(chunk))
        self._seal()
        columns = set(self.meta["columns"]) | {c for it in items for c in it.get("fields") or {}}
        if columns != set(self.meta["columns"]) or local is not None:
            self.meta.update(columns=sorted(columns), writing=False)
            self.save_meta()
        return inserted

    def _seal(self) -> None:
        """Seal what was written (Milvus's flush): a Milvus server indexes a segment once it is sealed and searches
        the growing ones without their index: a photo's votes among 757,000 feature rows took 13.6 s unsealed, 2.1 s
        sealed (experiments/scale.py)."""
        for name in (self.collection, self.collection + LOCAL) if self.keeps_local else (self.collection,):
            self.client.flush(name)

    def _begin_writing(self) -> bool:
        """Mark the collection as being written and say whether a write was interrupted before it: an item's feature
        rows go in before its row, so only then can feature rows of the items written now be left over (to be
        replaced). Finding them is a scan of every feature row (Milvus Lite filters by reading them all), which
        each batch of a large ``index add`` would otherwise pay."""
        if self.meta.get("writing"):
            return True
        self.meta["writing"] = True
        self.save_meta()
        return False

    def known_paths(self, paths: Sequence[str]) -> set[str]:
        return set(self._stored_paths([item_id(p) for p in paths]).values()) & set(paths)

    def add_items(self, items: list[dict[str, Any]], vectors: np.ndarray,
                  local: list[LocalFeatures] | None = None) -> list[dict[str, Any]]:
        self.insert(items, vectors, local=local)
        if self.keeps_local:
            self._grow_vote_lists()
        return [{**it, "id": item_id(it["path"])} for it in items]

    def _grow_vote_lists(self) -> None:
        """Once the features outgrew the inverted lists of their index (:func:`~lookalike.verification.votes.
        outgrown`), index them anew with as many lists as they need now: Milvus trains them from the stored
        vectors, as the file's vote index is trained anew from its stored features."""
        name, lists = self.collection + LOCAL, int(self.meta["vote_lists"])
        rows = self.feature_rows()
        if outgrown(rows, lists):
            self.client.release_collection(name)
            self.client.drop_index(name, "vector")
            self.meta["vote_lists"] = vote_lists(rows)
            _index_local(self.client, name, self.meta["vote_lists"])
            self.client.load_collection(name)
            self.save_meta()

    def feature_rows(self) -> int:
        """How many feature rows the descriptor votes search (a pass over them all in Milvus Lite)."""
        found = self.client.query(self.collection + LOCAL, filter="", output_fields=["count(*)"])
        return int(found[0]["count(*)"])

    def remove(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Remove items by id; returns the removed items."""
        found = {it["id"]: it for it in self._get(list(ids), ["path", "label", "$meta"])}
        unknown = sorted(set(ids) - found.keys())
        if unknown:
            raise LookalikeError(f"No catalogue item has the id(s) {unknown[:10]}")
        for start in range(0, len(ids), INSERT_BATCH):
            self.client.delete(self.collection, ids=list(ids[start:start + INSERT_BATCH]))
            if self.keeps_local:
                self.client.delete(self.collection + LOCAL, filter=f"item in {list(ids[start:start + INSERT_BATCH])}")
        return [found[i] for i in ids]

    def _insert_local(self, ids: list[int], features: list[LocalFeatures], replacing: bool) -> None:
        """Store these items' descriptor codes for the votes, a row each (``replacing`` what an interrupted write
        may have left of theirs)."""
        if replacing:
            self.client.delete(self.collection + LOCAL, filter=f"item in {ids}")
        rows = [{"item": i, "vector": d}
                for i, f in zip(ids, features) for d in f.descriptors.astype(np.float32).tolist()]
        for start in range(0, len(rows), LOCAL_ROWS):
            self.client.insert(self.collection + LOCAL, rows[start:start + LOCAL_ROWS])

    def local_features(self, ids: Sequence[int]) -> list[LocalFeatures]:
        """The stored local features of the items ``ids`` (packed in their rows, read by id), in that order."""
        self.check_local()
        dims, source = int(self.meta["local"]["codes"]["dims"]), f"{self.uri} ({self.collection})"
        found = {r["id"]: unpacked(_bytes(r.get("features"), source), dims, source)
                 for r in self._get([int(i) for i in ids], ["features"])}
        none = local_codes(self.meta["local"]).encode(NONE)
        return [found.get(int(i), none) for i in ids]

    def vote_candidates(self, query: LocalFeatures, top: int, where: Condition | None = None) -> list[tuple[int, int]]:
        """Milvus searches the photo's descriptors among the catalogue's; they vote as in
        :class:`~lookalike.verification.votes.DescriptorVotes` (:func:`~lookalike.verification.votes.tally`), then
        ``where`` keeps the allowed items."""
        self.check_local()
        if len(query) == 0:
            return []
        descriptors = query.descriptors.astype(np.float32).tolist()
        found = self.client.search(self.collection + LOCAL, data=descriptors, limit=NEIGHBOURS + 1,
                                   output_fields=["item"], anns_field="vector",
                                   search_params={"metric_type": "COSINE", "params": {"nprobe": PROBE}})
        sims = np.full((len(found), NEIGHBOURS + 1), -1.0, np.float32)
        owners = np.full((len(found), NEIGHBOURS + 1), -1, np.int64)
        for i, row in enumerate(found):
            for j, hit in enumerate(row):
                sims[i, j], owners[i, j] = hit["distance"], hit["entity"]["item"]
        ranked = tally(sims, owners, len(owners) * NEIGHBOURS)
        if where is not None and ranked:
            allowed = {int(r["id"]) for r in self.client.query(
                self.collection, filter=f"id in {[i for i, _ in ranked]} and ({milvus_expression(where)})",
                output_fields=["id"], limit=len(ranked))}
            ranked = [c for c in ranked if c[0] in allowed]
        return ranked[:top]

    def ids_of(self, paths: Sequence[str]) -> dict[str, int]:
        stored = self._stored_paths([item_id(p) for p in paths])
        return {p: item_id(p) for p in paths if stored.get(item_id(p)) == p}

    def count(self, where: Condition | None = None) -> int:
        found = self.client.query(self.collection, filter="" if where is None else milvus_expression(where),
                                  output_fields=["count(*)"])
        return int(found[0]["count(*)"])

    def columns(self) -> set[str]:
        return set(self.meta["columns"])

    def item(self, item_id: int) -> dict[str, Any] | None:
        found = self._get([item_id], ["path", "label", "$meta"])
        return found[0] if found else None

    def listing(self) -> Iterator[dict[str, Any]]:
        rows = [r for batch in self._scan(["path", "label", "$meta"]) for r in batch]
        for row in sorted(rows, key=lambda r: r["id"]):
            yield {"id": int(row["id"]), "path": row["path"], "label": row["label"],
                   **({"fields": extra} if (extra := _fields(row)) else {})}

    def set_search_params(self, params: str) -> None:
        """Search with other parameters (``efSearch=512``, ``nprobe=64``) from the next search on."""
        self._params = search_spec(params)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, where: Condition | None = None,
                       rerank: int | None = None) -> list[list[SearchHit]]:
        """Top-``k`` items per query vector by inner product, only among those passing ``where`` (given to Milvus
        as its own filter expression). Re-scoring is the FAISS file's (``rerank`` must be 0 or None)."""
        self.check_query(k)
        self.check_vectors(vectors)
        if rerank:
            raise LookalikeError("Re-scoring with exact vectors is the FAISS backend's: rerank=0 with --backend milvus")
        found = self.client.search(
            self.collection, data=np.asarray(vectors, np.float32).tolist(), limit=min(k, MAX_TOP_K),
            filter="" if where is None else milvus_expression(where), output_fields=["path", "label", "$meta"],
            search_params={"metric_type": "IP", "params": self._params})
        return [[SearchHit(int(hit["id"]), hit["entity"]["path"], hit["entity"]["label"], float(hit["distance"]),
                           _fields(hit["entity"])) for hit in row] for row in found]

    def vectors_of(self, ids: Sequence[int]) -> np.ndarray:
        by_id = {r["id"]: r["vector"] for r in self._get(list(ids), ["vector"])}
        return np.array([by_id[i] for i in ids], dtype=np.float32).reshape(len(ids), self.meta["dim"])

    def batches(self, size: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for rows in self._scan(["vector"], size):
            yield (np.array([r["id"] for r in rows], dtype=np.int64),
                   np.array([r["vector"] for r in rows], dtype=np.float32).reshape(len(rows), self.meta["dim"]))

    def close(self) -> None:
        disconnect(self.client, self.uri)

    def _get(self, ids: list[int], fields: list[str]) -> list[dict[str, Any]]:
        out = []
        for start in range(0, len(ids), INSERT_BATCH):
            for row in self.client.get(self.collection, ids=ids[start:start + INSERT_BATCH], output_fields=fields):
                item = {"id": int(row["id"]),
                        **{f: row[f] for f in ("path", "label", "vector", "features") if f in row}}
                if "$meta" in fields and (extra := _fields(row)):
                    item["fields"] = extra
                out.append(item)
        return out

    def _stored_paths(self, ids: list[int]) -> dict[int, str]:
        return {r["id"]: r["path"] for r in self._get(ids, ["path"])}

    def _scan(self, fields: list[str], size: int = 4096) -> Iterator[list[dict[str, Any]]]:
        iterator = self.client.query_iterator(self.collection, batch_size=size, filter="", output_fields=fields)
        try:
            while rows := iterator.next():
                yield rows
        finally:
            iterator.close()


def _bytes(text: Any, source: str) -> bytes:
    """An item's packed features from their text in its row."""
    try:
        return base64.b64decode(text, validate=True)
    except (TypeError, ValueError) as e:
        raise LookalikeError(f"'{source}' holds damaged local features (an item's text): build the catalogue "
                             "again") from e


def _check_fits(options: FeatureOptions) -> None:
    """A picture's packed features must fit in one text field of a row."""
    most = packed_size(options.count, options.dims)
    if 4 * -(-most // 3) > MAX_TEXT:
        fits = ((MAX_TEXT // 4 * 3) - 4) // (4 + options.dims)
        raise LookalikeError(f"The milvus backend keeps a picture's local features in one field of {MAX_TEXT:,} "
                             f"characters: {options.count} features with {options.dims}-byte codes do not fit; "
                             f"use at most {fits} features at that --local-dims (or fewer dims)")


def _owner(client: Any, name: str) -> str | None:
    """The key of the build a ``<collection>_local`` belongs to; None where lookalike did not mark it."""
    properties = client.describe_collection(name).get("properties") or {}
    try:
        owner = json.loads(properties.get(OWNER, "null"))
    except json.JSONDecodeError:
        return None
    return owner.get("key") if isinstance(owner, dict) and owner.get("format") == FORMAT else None


def _claim_local(client: Any, uri: str, collection: str, key: str) -> None:
    """Make way for the build ``key``'s ``<collection>_local``: one it left is continued, one an earlier build of a
    catalogue since dropped left behind is dropped, anything else (another build's, or not lookalike's) refused."""
    name = collection + LOCAL
    if not client.has_collection(name):
        return
    owner = _owner(client, name)
    if owner == key:
        return
    if owner is not None and not client.has_collection(collection):
        client.drop_collection(name)  # its catalogue is gone: its features would vote for items that are not
        return
    raise LookalikeError(f"Collection {name!r} already exists at {uri!r} and is not this build's: lookalike keeps "
                         f"a catalogue's local features in <collection>{LOCAL}; build into another --collection")


def _create_local(client: Any, name: str, key: str, dims: int, lists: int) -> None:
    """The collection of a catalogue's local features (their codes of ``dims``, as the float vectors both Milvus
    Lite and a server take), marked as the build ``key``'s (kept when a continued build finds it), indexed in
    ``lists`` inverted lists (:func:`_index_local`). A build killed between its steps left what the same build
    finishes."""
    from pymilvus import DataType, MilvusClient

    if not client.has_collection(name):
        schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("item", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dims)
        client.create_collection(name, schema=schema, consistency_level="Strong",
                                 properties={OWNER: json.dumps({"format": FORMAT, "key": key})})
    if not client.list_indexes(name):
        _index_local(client, name, lists)
    client.load_collection(name)


def _index_local(client: Any, name: str, lists: int) -> None:
    """The local features' vector index: as the file's vote index, ``lists`` inverted lists of 8-bit codes
    (Milvus's IVF_SQ8, in Milvus Lite as on a server) under cosine similarity (the codes as unit vectors); exact
    (FLAT) below ``IVF_FROM`` lists, where Milvus would train more lists than the features fill (and say so on
    the terminal)."""
    params = client.prepare_index_params()
    if lists >= IVF_FROM:
        params.add_index("vector", index_type="IVF_SQ8", metric_type="COSINE", params={"nlist": lists})
    else:
        params.add_index("vector", index_type="FLAT", metric_type="COSINE")
    client.create_index(name, params)


def _check_new(client: Any, uri: str, collection: str, key: str) -> bool:
    """Whether a build with ``key`` continues a collection it left unfinished (False: there is none yet); refused
    when another collection of that name exists."""
    if not client.has_collection(collection):
        return False
    existing = _meta(client, collection)
    if existing is None or existing.get("key") != key or existing.get("state") != "building":
        raise LookalikeError(f"Collection {collection!r} already exists at {uri!r}: add to it with "
                             f"`lookalike index add`, or build into another --collection")
    return True


def _finished_meta(client: Any, uri: str, collection: str) -> dict[str, Any]:
    """The meta of a collection lookalike built and finished building; else one message saying what to do."""
    if not client.has_collection(collection):
        raise LookalikeError(f"No collection {collection!r} at {uri!r} (make one with `lookalike index build "
                             f"--backend milvus --out {uri}`)")
    meta = _meta(client, collection)
    if meta is None:
        raise LookalikeError(f"Collection {collection!r} at {uri!r} was not made by lookalike (no {META} "
                             f"property of format {FORMAT}): choose another --collection")
    if meta.get("state") != "ready":
        raise LookalikeError(f"The build of collection {collection!r} at {uri!r} did not finish: run the same "
                             f"`lookalike index build` again to continue it")
    if meta.get("local") is not None:
        check_local_meta(meta["local"], f"{uri} ({collection})")
        number_field(meta.get("vote_lists"), "vote_lists", f"{uri} ({collection})", 1, MAX_CELLS, integer=True)
        if "features" not in {f["name"] for f in client.describe_collection(collection)["fields"]}:
            raise LookalikeError(f"Collection {collection!r} at {uri!r} keeps its local features in an older form "
                                 f"(in {collection + LOCAL!r} alone): build the catalogue again")
        if not client.has_collection(collection + LOCAL):
            raise LookalikeError(f"Collection {collection!r} at {uri!r} keeps local features, but its collection "
                                 f"{collection + LOCAL!r} is gone: build the catalogue again")
        if _owner(client, collection + LOCAL) != meta.get("key"):
            raise LookalikeError(f"Collection {collection!r} at {uri!r} keeps local features, but "
                                 f"{collection + LOCAL!r} holds another build's: build the catalogue again")
    return check_meta(meta, f"{uri} ({collection})")


def _fields(entity: dict[str, Any]) -> dict[str, str] | None:
    """An item's manifest columns from a stored row (without the typed copies)."""
    fields = {k: v for k, v in entity.items() if k not in RESERVED and not k.endswith((NUMBER, TRUTH))}
    return fields or None


def _check_columns(items: list[dict[str, Any]]) -> None:
    for column in {c for it in items for c in it.get("fields") or {}}:
        if column in RESERVED or column.endswith((NUMBER, TRUTH)) or column.startswith("$"):
            raise LookalikeError(f"Manifest column {column!r}: the milvus backend keeps id, vector, path, label "
                                 f"and features for itself and names typed copies *{NUMBER} / *{TRUTH}: rename the "
                                 "column")
    long = [it["path"] for it in items if len(it["path"]) > MAX_PATH or len(it["label"]) > MAX_LABEL]
    if long:
        raise LookalikeError(f"Path or label too long for the milvus backend ({MAX_PATH} / {MAX_LABEL} characters): "
                             f"{long[0][:200]!r}")


def _meta(client: Any, collection: str) -> dict[str, Any] | None:
    properties = client.describe_collection(collection).get("properties") or {}
    try:
        meta = json.loads(properties.get(META, "null"))
    except json.JSONDecodeError:
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _create(client: Any, collection: str, meta: dict[str, Any]) -> None:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=meta["dim"])
    schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH)
    schema.add_field("label", DataType.VARCHAR, max_length=MAX_LABEL)
    if meta.get("local") is not None:
        schema.add_field("features", DataType.VARCHAR, max_length=MAX_TEXT)
    # the meta goes in with the collection, in one call: a build killed at any point leaves a collection that the
    # same build recognises (state "building", its key) and finishes
    client.create_collection(collection, schema=schema, consistency_level="Strong", properties={META: json.dumps(meta)})
    _ensure_index(client, collection, meta)


def _ensure_index(client: Any, collection: str, meta: dict[str, Any]) -> None:
    """The vector index of a collection being built (made now if a killed build left it without one)."""
    if client.list_indexes(collection):
        return
    params = client.prepare_index_params()
    params.add_index("vector", index_type=meta["index"]["type"], metric_type="IP", params=meta["index"]["params"])
    client.create_index(collection, params)


def _writing(uri: str):
    """Writers of one Milvus Lite file take turns (its lock file); a server keeps its own guarantees."""
    return nullcontext() if is_remote(uri) else locked(Path(uri).expanduser().resolve())


@contextmanager
def edit(uri: str, collection: str = DEFAULT_COLLECTION, token: str | None = None) -> Iterator[MilvusCatalogue]:
    """``with edit(uri) as catalogue: ...``: open the collection to change it, taking turns with other writers
    of the same local file, and close it after."""
    with _writing(uri):
        catalogue = MilvusCatalogue.open(uri, collection, token)
        try:
            yield catalogue
        finally:
            catalogue.close()
