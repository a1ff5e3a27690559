"""A searchable catalogue: embeddings of catalogue images in a FAISS index, with their metadata.

A ``.lkidx`` file is a zip holding ``index.faiss`` (the FAISS index), ``items.json`` (id, path and
label of each item) and ``meta.json`` (format, embedder hash, dimension, index type). It is written
atomically, and it refuses queries embedded by another embedder than the one it was built with.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from lookalike.data.image_folder import IMAGE_SUFFIXES
from lookalike.errors import LookalikeError
from lookalike.data.manifest import read_rows
from lookalike.export import embedder_from_payload, read_embedder_file
from lookalike.files import atomic_write
from lookalike.models.embedder import Embedder, ImageLike
from lookalike.retrieval.grid import search_grid
from lookalike.retrieval.knn import FaissIndex, faiss_module

FORMAT = "lookalike-index/1"


def embedder_hash(payload: dict[str, Any]) -> str:
    """A fingerprint of an embedder file's weights and preprocessing (not of its provenance or calibration)."""
    digest = hashlib.sha256(json.dumps([payload["model"], payload["preprocessing"]], sort_keys=True).encode())
    for key, tensor in sorted(payload["state_dict"].items()):
        digest.update(key.encode())
        digest.update(tensor.float().numpy().tobytes())
    return digest.hexdigest()[:16]


def list_images(source: str | Path) -> list[dict[str, Any]]:
    """Catalogue items from a folder (recursively; the sub-folder is the label) or a CSV/parquet manifest."""
    source = Path(source).expanduser()
    if source.is_file() and source.suffix.lower() in (".csv", ".parquet"):
        rows = read_rows(source)
        if not rows or "path" not in rows[0]:
            raise LookalikeError(f"Manifest '{source}' needs a path column (and optionally label)")
        return [{"path": str(source.parent / r["path"]), "label": r.get("label", "")} for r in rows]
    if not source.is_dir():
        raise LookalikeError(f"--images: '{source}' is neither a folder of images nor a manifest .csv/.parquet")
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise LookalikeError(f"--images: no images under '{source}'")
    return [{"path": str(p), "label": p.parent.name if p.parent != source else ""} for p in files]


@dataclass
class SearchHit:
    """One result: catalogue item and cosine similarity."""

    id: int
    path: str
    label: str
    score: float


class Index:
    """Catalogue items, their FAISS index and the fingerprint of the embedder that made them."""

    def __init__(self, faiss_index: FaissIndex, items: list[dict[str, Any]], meta: dict[str, Any]):
        self.faiss = faiss_index
        self.items = items
        self.meta = meta

    @classmethod
    def build(cls, embedder_path: str | Path, images: str | Path, factory: str = "Flat",
              batch_size: int = 64) -> Index:
        """Embed every catalogue image with the embedder file and index the embeddings."""
        payload = read_embedder_file(embedder_path)
        embedder = embedder_from_payload(payload)
        items = list_images(images)
        vectors = np.concatenate([
            embedder.embed([it["path"] for it in items[s:s + batch_size]], batch_size).numpy()
            for s in tqdm(range(0, len(items), batch_size), desc="embedding catalogue")])
        index = FaissIndex(vectors.shape[1], factory)
        index.add(vectors)
        for i, item in enumerate(items):
            item["id"] = i
        meta = {"format": FORMAT, "embedder_hash": embedder_hash(payload), "dim": int(vectors.shape[1]),
                "factory": factory, "count": len(items), "embedder": str(Path(embedder_path).resolve())}
        return cls(index, items, meta)

    def save(self, path: str | Path) -> Path:
        """Write the ``.lkidx`` file atomically."""
        faiss = faiss_module()
        blob = faiss.serialize_index(self.faiss.cpu_index).tobytes()

        def write(tmp: str) -> None:
            with zipfile.ZipFile(tmp, "w") as z:
                z.writestr("meta.json", json.dumps(self.meta))
                z.writestr("items.json", json.dumps(self.items))
                z.writestr("index.faiss", blob)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> Index:
        """Read a ``.lkidx`` file, or fail with one message if it is missing, corrupt or foreign."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise LookalikeError(f"No index file at '{path}' (make one with `lookalike index build`)")
        try:
            with zipfile.ZipFile(path) as z:
                meta = json.loads(z.read("meta.json"))
                items = json.loads(z.read("items.json"))
                blob = z.read("index.faiss")
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as e:
            raise LookalikeError(f"'{path}' is not a readable lookalike index ({e})") from e
        if meta.get("format") != FORMAT:
            raise LookalikeError(f"'{path}' is not a lookalike index (expected format {FORMAT})")
        index = FaissIndex(meta["dim"], meta["factory"])
        index.cpu_index = faiss_module().deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        return cls(index, items, meta)

    def check_embedder(self, embedder_path: str | Path) -> dict[str, Any]:
        """Refuse an embedder other than the one the index was built with; returns the file's contents."""
        payload = read_embedder_file(embedder_path)
        found = embedder_hash(payload)
        if found != self.meta["embedder_hash"]:
            raise LookalikeError(f"This index was built with embedder {self.meta['embedder_hash']}, but "
                                 f"'{embedder_path}' is {found}: rebuild the index with it, or search with the "
                                 f"embedder the index was built with")
        return payload

    def search_vectors(self, vectors: np.ndarray, k: int = 10, category: str | None = None) -> list[list[SearchHit]]:
        """Top-``k`` catalogue items for each query vector, only among items labelled ``category`` if given
        (the classify-then-search design)."""
        if vectors.shape[1] != self.meta["dim"]:
            raise LookalikeError(f"Query embeddings have {vectors.shape[1]} dimensions, the index {self.meta['dim']}")
        if category is None:
            scores, ids = self.faiss.search(vectors, min(k, len(self.items)))
        else:
            allowed = np.array([it["id"] for it in self.items if it["label"] == category], dtype=np.int64)
            if len(allowed) == 0:
                raise LookalikeError(f"No catalogue item has the category {category!r}")
            faiss = faiss_module()
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
            index = self.faiss.cpu_index
            # faiss.contrib.torch_utils (imported by PML) wraps `search` without `params`; the
            # original stays reachable as `search_numpy`
            search = getattr(index, "search_numpy", index.search)
            scores, ids = search(np.ascontiguousarray(vectors, dtype=np.float32), min(k, len(allowed)), params=params)
        return [[SearchHit(int(i), self.items[i]["path"], self.items[i]["label"], float(s))
                 for s, i in zip(row_s, row_i) if i >= 0] for row_s, row_i in zip(scores, ids)]

    def search(self, embedder: Embedder, images: Sequence[ImageLike], k: int = 10,
               category: str | None = None) -> list[list[SearchHit]]:
        """Embed ``images`` with ``embedder`` and search the catalogue."""
        return self.search_vectors(embedder.embed(list(images)).numpy(), k, category)

    def vectors(self) -> np.ndarray:
        """The stored embeddings (exact for Flat and HNSW indexes)."""
        try:
            return self.faiss.cpu_index.reconstruct_n(0, len(self.items))
        except RuntimeError as e:
            raise LookalikeError(f"A {self.meta['factory']} index does not keep its vectors; build with "
                                 f"--factory Flat or HNSW32 for this") from e

    def duplicate_groups(self, threshold: float, k: int = 20) -> list[list[int]]:
        """Groups of item ids linked by similarity >= ``threshold`` (each item to its ``k`` nearest)."""
        scores, ids = self.faiss.search(self.vectors(), min(k + 1, len(self.items)))
        parent = list(range(len(self.items)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i, (row_s, row_i) in enumerate(zip(scores, ids)):
            for s, j in zip(row_s, row_i):
                if j >= 0 and j != i and s >= threshold:
                    parent[root(int(j))] = root(i)
        groups: dict[int, list[int]] = {}
        for i in range(len(self.items)):
            groups.setdefault(root(i), []).append(i)
        return sorted((g for g in groups.values() if len(g) > 1), key=len, reverse=True)



def main_index(argv: list[str]) -> None:
    """``lookalike index build --embedder FILE --images DIR_OR_CSV --out FILE.lkidx [--factory Flat]``."""
    parser = argparse.ArgumentParser(prog="lookalike index", description="Build a searchable catalogue index.")
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="embed catalogue images and index them")
    build.add_argument("--embedder", required=True, help="embedder file (embedder.pt of a run, or lookalike export)")
    build.add_argument("--images", required=True, help="folder of images (sub-folder = label) or manifest .csv")
    build.add_argument("--out", required=True, help="index file to write (.lkidx)")
    build.add_argument("--factory", default="Flat", help="FAISS index type: Flat, HNSW32, IVF1024,Flat, ...")
    args = parser.parse_args(argv)
    index = Index.build(args.embedder, args.images, args.factory)
    index.save(args.out)
    print(f"indexed {index.meta['count']} images ({index.meta['factory']}, {index.meta['dim']}-d) into {args.out}")


def main_search(argv: list[str]) -> None:
    """``lookalike search --index FILE.lkidx photo.jpg [...] [-k 10] [--json] [--out grid.png]``."""
    parser = argparse.ArgumentParser(prog="lookalike search", description="Find the catalogue items most like a photo.")
    parser.add_argument("photos", nargs="+")
    parser.add_argument("--index", required=True)
    parser.add_argument("--embedder", help="embedder file (default: the one the index was built with)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--out", help="also write a picture of the queries and their results")
    parser.add_argument("--category", help="search only items with this label (classify-then-search)")
    args = parser.parse_args(argv)
    index = Index.load(args.index)
    embedder_path = args.embedder or index.meta["embedder"]
    payload = index.check_embedder(embedder_path)
    threshold = calibrated_threshold(payload)
    results = index.search(embedder_from_payload(payload), args.photos, args.k, args.category)
    if args.json:
        print(json.dumps([{"query": q, "results": [{**asdict(h), "match": None if threshold is None else
                                                    h.score >= threshold} for h in hits]}
                          for q, hits in zip(args.photos, results)], indent=2))
    else:
        for query, hits in zip(args.photos, results):
            print(f"{query}:")
            for rank, h in enumerate(hits, 1):
                flag = "" if threshold is None else ("  match" if h.score >= threshold else "")
                print(f"  {rank:>3}. {h.score:.4f}  {h.label:<20} {h.path}{flag}")
    if args.out:
        search_grid(args.photos, [[(h.path, h.label, h.score) for h in hits] for hits in results]).save(args.out)


def calibrated_threshold(payload: dict[str, Any]) -> float | None:
    """The threshold `lookalike calibrate` stored in an embedder file's contents, if any."""
    calibration = payload.get("calibration")
    return calibration["threshold"] if calibration else None


def match_threshold(embedder_path: str | Path) -> float | None:
    """The threshold `lookalike calibrate` stored in the embedder file, if any."""
    return calibrated_threshold(read_embedder_file(embedder_path))


def main_duplicates(argv: list[str]) -> None:
    """``lookalike duplicates --index FILE.lkidx [--threshold T]``: groups of near-duplicate catalogue images."""
    parser = argparse.ArgumentParser(prog="lookalike duplicates", description="List near-duplicate catalogue images.")
    parser.add_argument("--index", required=True)
    parser.add_argument("--threshold", type=float, help="similarity (default: the embedder's calibrated threshold)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    index = Index.load(args.index)
    threshold = args.threshold if args.threshold is not None else match_threshold(index.meta["embedder"])
    if threshold is None:
        raise LookalikeError("No threshold: pass --threshold, or run `lookalike calibrate` on the embedder first")
    groups = index.duplicate_groups(threshold)
    if args.json:
        print(json.dumps([[index.items[i] for i in g] for g in groups], indent=2))
        return
    print(f"{len(groups)} groups of near-duplicates (similarity >= {threshold:.4f}) among {len(index.items)} items")
    for n, group in enumerate(groups, 1):
        print(f"group {n}:")
        for i in group:
            print(f"  {index.items[i]['path']}  {index.items[i]['label']}")
