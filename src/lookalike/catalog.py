"""A searchable catalogue: embeddings of catalogue images in a FAISS index, with their metadata.

A ``.lkidx`` file is a zip holding ``index.faiss`` (the FAISS index), ``items.json`` (id, path and
label of each item) and ``meta.json`` (format, embedder hash, dimension, index type). It is written
atomically, and it refuses queries embedded by another embedder than the one it was built with.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lookalike.data.image_folder import IMAGE_SUFFIXES
from lookalike.errors import LookalikeError
from lookalike.data.manifest import read_rows
from lookalike.export import embedder_from_payload, read_embedder_file
from lookalike.files import atomic_write
from lookalike.models.embedder import Embedder, ImageLike
from lookalike.retrieval.grid import search_grid
from lookalike.retrieval.embed import embed_files
from lookalike.retrieval.knn import FaissIndex, default_search_params

FORMAT = "lookalike-index/2"


def embedder_hash(payload: dict[str, Any]) -> str:
    """A fingerprint of an embedder file's weights and preprocessing (not of its provenance or calibration)."""
    digest = hashlib.sha256(json.dumps([payload["model"], payload["preprocessing"]], sort_keys=True).encode())
    for key, tensor in sorted(payload["state_dict"].items()):
        digest.update(key.encode())
        digest.update(tensor.float().numpy().tobytes())
    return digest.hexdigest()[:16]


def list_images(source: str | Path) -> list[dict[str, Any]]:
    """Catalogue items (absolute paths) from a folder (recursively; the sub-folder is the label) or a
    CSV/parquet manifest (paths relative to it)."""
    source = Path(source).expanduser().resolve()
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


class BuildCheckpoint:
    """Embeddings of a build in progress, saved chunk by chunk beside the output so that an interrupted
    build continues where it stopped (with the same embedder and the same list of images)."""

    def __init__(self, folder: Path, key: str):
        self.folder, self.key = folder, key
        key_file = folder / "key.json"
        if folder.is_dir() and (not key_file.is_file() or json.loads(key_file.read_text()) != key):
            warnings.warn(f"Ignoring '{folder}': it is from a build with other images or another embedder")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(key_file, lambda tmp: Path(tmp).write_text(json.dumps(key)))

    def load(self) -> tuple[int, list[np.ndarray], list[np.ndarray], list[str]]:
        """(images done, positions, vectors, errors) of the chunks saved so far."""
        done, positions, vectors, errors = 0, [], [], []
        for chunk in sorted(self.folder.glob("chunk_*.npz")):
            with np.load(chunk) as z:
                if int(z["start"]) != done:
                    break
                done = int(z["end"])
                positions.append(z["positions"])
                vectors.append(z["vectors"])
                errors.extend(str(e) for e in z["errors"])
        return done, positions, vectors, errors

    def save(self, start: int, end: int, positions: list[np.ndarray], vectors: list[np.ndarray],
             errors: list[str], dim: int) -> None:
        """Save the images ``start..end`` as one chunk (atomically)."""
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, start=start, end=end, errors=np.array(errors, dtype=str),
                         positions=np.concatenate(positions) if positions else np.zeros(0, np.int64),
                         vectors=np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32))

        atomic_write(self.folder / f"chunk_{start:012d}.npz", write)


def embed_catalogue(payload: dict[str, Any], items: list[dict[str, Any]], batch_size: int = 64,
                    num_workers: int | None = None, checkpoint: Path | None = None,
                    checkpoint_every: int = 4096) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Embed the items' images; unreadable ones are left out with one warning each. With ``checkpoint``
    (a folder), progress is saved every ``checkpoint_every`` images and an earlier run's is reused."""
    embedder = embedder_from_payload(payload)
    paths = [it["path"] for it in items]
    store = None
    done, positions, vectors, errors = 0, [], [], []
    if checkpoint is not None:
        key = hashlib.sha256(json.dumps([embedder_hash(payload), paths]).encode()).hexdigest()
        store = BuildCheckpoint(checkpoint, key)
        done, positions, vectors, errors = store.load()
        if done:
            print(f"resuming: {done} of {len(paths)} images were embedded before")
    pending: tuple[list, list, list] = ([], [], [])  # positions, vectors, errors since the last save
    saved = consumed = done
    for pos, vec, errs in embed_files(embedder, paths, done, batch_size, num_workers):
        pending[0].append(pos)
        pending[1].append(vec)
        pending[2].extend(errs)
        consumed += len(pos) + len(errs)
        if store is not None and (consumed - saved >= checkpoint_every or consumed == len(paths)):
            store.save(saved, consumed, *pending, dim=embedder.embedding_size)
            saved = consumed
        if store is None or saved == consumed:
            positions += pending[0]
            vectors += pending[1]
            errors += pending[2]
            pending = ([], [], [])
    for error in errors:
        warnings.warn(f"skipped: {error}")
    if errors:
        print(f"skipped {len(errors)} unreadable image(s) of {len(paths)}")
    keep = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    if len(keep) == 0:
        raise LookalikeError("None of the images could be read")
    return [items[i] for i in keep], np.concatenate(vectors)


class Index:
    """Catalogue items, their FAISS index (keyed by item id) and the fingerprint of the embedder that
    made them. Items can be added and removed; ids are never reused."""

    def __init__(self, faiss_index: FaissIndex, items: list[dict[str, Any]], meta: dict[str, Any]):
        self.faiss = faiss_index
        self.items = items
        self.meta = meta
        self.by_id = {it["id"]: it for it in items}

    @classmethod
    def build(cls, embedder_path: str | Path, images: str | Path, factory: str = "Flat", batch_size: int = 64,
              num_workers: int | None = None, checkpoint: Path | None = None,
              checkpoint_every: int = 4096, search_params: str | None = None) -> Index:
        """Embed every catalogue image with the embedder file and index the embeddings (see
        :func:`embed_catalogue` for ``checkpoint``). ``search_params`` (FAISS syntax, e.g. ``efSearch=256``
        or ``nprobe=64``) are stored with the index; by default :func:`default_search_params`."""
        payload = read_embedder_file(embedder_path)
        items, vectors = embed_catalogue(payload, list_images(images), batch_size, num_workers, checkpoint,
                                         checkpoint_every)
        search_params = default_search_params(factory) if search_params is None else search_params
        index = FaissIndex(vectors.shape[1], factory, search_params=search_params, ids=True)
        for i, item in enumerate(items):
            item["id"] = i
        index.add(vectors, np.arange(len(items)))
        meta = {"format": FORMAT, "embedder_hash": embedder_hash(payload), "dim": int(vectors.shape[1]),
                "factory": factory, "search_params": search_params, "count": len(items), "next_id": len(items),
                "embedder": str(Path(embedder_path).resolve())}
        return cls(index, items, meta)

    def add_images(self, payload: dict[str, Any], images: str | Path, batch_size: int = 64,
                   num_workers: int | None = None) -> list[dict[str, Any]]:
        """Embed and add the images not yet in the catalogue (by path); returns the new items."""
        known = {it["path"] for it in self.items}
        new = [it for it in list_images(images) if it["path"] not in known]
        if not new:
            return []
        new, vectors = embed_catalogue(payload, new, batch_size, num_workers)
        ids = np.arange(self.meta["next_id"], self.meta["next_id"] + len(new))
        for item, i in zip(new, ids):
            item["id"] = int(i)
        self.faiss.add(vectors, ids)
        self._set_items(self.items + new)
        self.meta["next_id"] = int(ids[-1]) + 1
        return new

    def remove(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Remove items by id; returns the removed items."""
        unknown = sorted(set(ids) - self.by_id.keys())
        if unknown:
            raise LookalikeError(f"No catalogue item has the id(s) {unknown[:10]}")
        removed = [self.by_id[i] for i in ids]
        self.faiss.remove(np.array(list(ids), dtype=np.int64))
        gone = set(ids)
        self._set_items([it for it in self.items if it["id"] not in gone])
        return removed

    def _set_items(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.by_id = {it["id"]: it for it in items}
        self.meta["count"] = len(items)

    def save(self, path: str | Path) -> Path:
        """Write the ``.lkidx`` file atomically."""
        blob = self.faiss.to_bytes()

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
            raise LookalikeError(f"'{path}' is not a lookalike index of this version (expected format {FORMAT}, "
                                 f"found {meta.get('format')}): build it again with `lookalike index build`")
        index = FaissIndex.from_bytes(blob, meta["dim"], meta["factory"], meta.get("search_params", ""))
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
        allowed = None
        if category is not None:
            allowed = np.array([it["id"] for it in self.items if it["label"] == category], dtype=np.int64)
            if len(allowed) == 0:
                raise LookalikeError(f"No catalogue item has the category {category!r}")
        scores, ids = self.faiss.search(vectors, min(k, len(self.items) if allowed is None else len(allowed)),
                                        allowed=allowed)
        return [[SearchHit(int(i), self.by_id[i]["path"], self.by_id[i]["label"], float(s))
                 for s, i in zip(row_s, row_i) if i >= 0] for row_s, row_i in zip(scores, ids)]

    def search(self, embedder: Embedder, images: Sequence[ImageLike], k: int = 10,
               category: str | None = None) -> list[list[SearchHit]]:
        """Embed ``images`` with ``embedder`` and search the catalogue."""
        return self.search_vectors(embedder.embed(list(images)).numpy(), k, category)

    def vectors(self) -> np.ndarray:
        """The stored embeddings in item order (Flat, HNSW and BFlat indexes keep them)."""
        return self.faiss.reconstruct(np.array([it["id"] for it in self.items], dtype=np.int64))

    def duplicate_groups(self, threshold: float, k: int = 20) -> list[list[int]]:
        """Groups of item ids linked by similarity >= ``threshold`` (each item to its ``k`` nearest)."""
        scores, ids = self.faiss.search(self.vectors(), min(k + 1, len(self.items)))
        parent = {it["id"]: it["id"] for it in self.items}

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for item, row_s, row_i in zip(self.items, scores, ids):
            for s, j in zip(row_s, row_i):
                if j >= 0 and j != item["id"] and s >= threshold:
                    parent[root(int(j))] = root(item["id"])
        groups: dict[int, list[int]] = {}
        for item in self.items:
            groups.setdefault(root(item["id"]), []).append(item["id"])
        return sorted((g for g in groups.values() if len(g) > 1), key=len, reverse=True)


def main_index(argv: list[str]) -> None:
    """``lookalike index build|add|remove``: make and maintain a catalogue index."""
    parser = argparse.ArgumentParser(prog="lookalike index", description="Build and maintain a catalogue index.")
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="embed catalogue images and index them (an interrupted build resumes)")
    build.add_argument("--embedder", required=True, help="embedder file (embedder.pt of a run, or lookalike export)")
    build.add_argument("--images", required=True, help="folder of images (sub-folder = label) or manifest .csv")
    build.add_argument("--out", required=True, help="index file to write (.lkidx)")
    build.add_argument("--factory", default="Flat", help="FAISS index type: Flat, HNSW32, IVF1024,Flat, "
                       "IVF1024,PQ32, or binary (sign bits, Hamming): BFlat, BHNSW32, BIVF1024")
    build.add_argument("--search-params", help="FAISS search parameters stored with the index, e.g. efSearch=256 "
                       "or nprobe=64 (default: efSearch=128 for HNSW, nprobe=32 for IVF)")
    add = sub.add_parser("add", help="embed and add images not yet in the index")
    add.add_argument("--images", required=True, help="folder of images or manifest .csv")
    remove = sub.add_parser("remove", help="remove items by id or path, or those whose file is gone")
    remove.add_argument("--ids", type=int, nargs="+", default=[])
    remove.add_argument("--paths", nargs="+", default=[])
    remove.add_argument("--missing", action="store_true", help="remove items whose image file no longer exists")
    for p in (build, add):
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--workers", type=int, help="decoding processes (default: up to 4)")
    for p in (add, remove):
        p.add_argument("--index", required=True, help="index file to update (rewritten atomically)")
    add.add_argument("--embedder", help="embedder file (default: the one the index was built with)")
    args = parser.parse_args(argv)
    if args.action == "build":
        partial = Path(args.out).with_name(Path(args.out).name + ".partial")
        index = Index.build(args.embedder, args.images, args.factory, args.batch_size, args.workers, partial,
                            search_params=args.search_params)
        index.save(args.out)
        shutil.rmtree(partial, ignore_errors=True)
        params = f", {index.meta['search_params']}" if index.meta["search_params"] else ""
        print(f"indexed {index.meta['count']} images ({index.meta['factory']}{params}, {index.meta['dim']}-d) "
              f"into {args.out}")
        return
    index = Index.load(args.index)
    if args.action == "add":
        payload = index.check_embedder(args.embedder or index.meta["embedder"])
        changed = index.add_images(payload, args.images, args.batch_size, args.workers)
        verb = "added"
    else:
        by_path = {it["path"]: it["id"] for it in index.items}
        paths = [str(Path(p).expanduser().resolve()) for p in args.paths]
        unknown = [p for p in paths if p not in by_path]
        if unknown:
            raise LookalikeError(f"Not in the index: {unknown[:10]}")
        ids = set(args.ids) | {by_path[p] for p in paths}
        if args.missing:
            ids |= {it["id"] for it in index.items if not Path(it["path"]).is_file()}
        changed = index.remove(sorted(ids))
        verb = "removed"
    index.save(args.index)
    print(f"{verb} {len(changed)} item(s); the index now holds {index.meta['count']}")


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
    parser.add_argument("--search-params", help="FAISS search parameters for this search instead of the index's, "
                        "e.g. efSearch=512 (more recall, slower)")
    args = parser.parse_args(argv)
    index = Index.load(args.index)
    if args.search_params is not None:
        index.faiss.set_search_params(args.search_params)
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
        print(json.dumps([[index.by_id[i] for i in g] for g in groups], indent=2))
        return
    print(f"{len(groups)} groups of near-duplicates (similarity >= {threshold:.4f}) among {len(index.items)} items")
    for n, group in enumerate(groups, 1):
        print(f"group {n}:")
        for i in group:
            print(f"  {index.by_id[i]['path']}  {index.by_id[i]['label']}")
