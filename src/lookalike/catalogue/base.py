"""The one interface every catalogue operation goes through (:class:`Catalogue`): reading (counts, columns, items,
listing), searching (with filters), adding images, selecting and removing items, near-duplicate groups and
confusers, and the checks of embedders, queries and meta. What is the same for both backends is written here once;
each backend stores and searches its own way: the ``.lkidx`` file with its FAISS index
(:mod:`lookalike.catalogue.file`, the default) and a Milvus collection (:mod:`lookalike.catalogue.milvus`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from lookalike.boxes.finder import BoxFinder
from lookalike.catalogue.build import embed_catalogue
from lookalike.catalogue.filters import Condition
from lookalike.catalogue.local import (calibrated, catalogue_features, comparison_picture, feature_options, local_codes,
                                      local_meta)
from lookalike.data.listing import labelled_images
from lookalike.embedder.file import embedder_hash, read_embedder_file
from lookalike.errors import LookalikeError
from lookalike.files import MAX_DIM, number_field, text_field
from lookalike.verification.appearance import Bounds, covered, placed
from lookalike.verification.features import LocalFeatures
from lookalike.verification.matching import Verdict, verify


DUPLICATE, VARIANT = "duplicate", "variant"
COVER = 0.5  # a duplicate's pictures each cover at least this share of the other (a crop still does)
PAIR_BATCH = 256  # pictures whose pairs are verified together


@dataclass
class Pair:
    """Two catalogue pictures that verify against each other: ``inliers`` (the fewer of both ways), the share of
    their cells that differ after alignment (``disagreement``: the larger of both ways), how much of each other
    they cover (the smaller share) and their ``kind``: a duplicate (the same picture re-encoded, resized,
    cropped) or a variant (they share print but differ: another colour, other words)."""

    a: int
    b: int
    inliers: int
    disagreement: float
    cover: float
    kind: str


def groups_of(links: Sequence[tuple[int, int]]) -> list[list[int]]:
    """The groups of ids that ``links`` join (connected components of two or more), largest first."""
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in links:
        parent[root(b)] = root(a)
    groups: dict[int, list[int]] = {}
    for i in sorted(parent):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=len, reverse=True)


def _pair(first: dict[str, Any], own: LocalFeatures, second: dict[str, Any], other: LocalFeatures, there: Verdict,
          back: Verdict, bounds: Bounds) -> Pair:
    """Two pictures that verified (``there``: the second found in the first; ``back``: the first in the second),
    compared after alignment both ways."""
    shown = [comparison_picture(first["path"], own.size), comparison_picture(second["path"], other.size)]
    if back.quad is None or there.quad is None or None in shown:
        return Pair(first["id"], second["id"], min(there.inliers, back.inliers), 1.0, 0.0, VARIANT)
    differ = max(placed(shown[1], other.size, shown[0], own.size, there.quad, light=False).changed(bounds),
                 placed(shown[0], own.size, shown[1], other.size, back.quad, light=False).changed(bounds))
    cover = min(covered(there.quad), covered(back.quad))
    kind = DUPLICATE if differ <= bounds.copy and cover >= COVER else VARIANT
    return Pair(first["id"], second["id"], min(there.inliers, back.inliers), differ, cover, kind)


@dataclass
class SearchHit:
    """One result: catalogue item and cosine similarity."""

    id: int
    path: str
    label: str
    score: float
    fields: dict[str, str] | None = None
    group: str | None = None  # grouped searches: the value of the grouping column
    pictures: int = 1  # grouped searches: this group's pictures among the candidates
    verified: bool | None = None  # verified searches: whether local features confirm it (None: not checked)
    inliers: int | None = None  # verified searches: matches agreeing on one transformation
    quad: list[list[float]] | None = None  # the picture's outline where it was found in the photo (fractions)
    lookalike_of: int | None = None  # verified searches: the item this one is a look-alike of (a sibling: it verifies
    # where that one does, but its colours or words disagree with the photo), not verified itself


def hit_value(hit: SearchHit, column: str) -> str:
    """A result's ``label`` or manifest field ``column`` (empty when the item has none)."""
    return hit.label if column == "label" else (hit.fields or {}).get(column, "")


def item_value(item: dict[str, Any], column: str) -> str:
    """An item's ``label`` or manifest field ``column`` (empty when it has none)."""
    return item.get("label", "") if column == "label" else (item.get("fields") or {}).get(column, "")


MAX_ITEMS = 1 << 40  # items a catalogue's meta may claim


def check_meta(meta: dict[str, Any], source: str) -> dict[str, Any]:
    """A catalogue's meta read from a file or a collection, once every field both backends use is of its type and
    range (one message otherwise)."""
    number_field(meta.get("dim"), "dim", source, 1, MAX_DIM, integer=True)
    number_field(meta.get("count", 0), "count", source, 0, MAX_ITEMS, integer=True)
    number_field(meta.get("next_id", 0), "next_id", source, 0, 1 << 62, integer=True)
    number_field(meta.get("rerank") or 0, "rerank", source, 0, 1 << 20, integer=True)
    for name in ("embedder_hash", "embedder", "search_params", "boxes"):
        if meta.get(name) is not None or name in ("embedder_hash", "embedder"):
            text_field(meta.get(name), name, source, 4096)
    return meta


class Catalogue(ABC):
    """A searchable catalogue: items (id, path, label, manifest fields) with their embeddings and ``meta`` (the
    embedder's fingerprint, the index type and search parameters, ...)."""

    meta: dict[str, Any]

    def box_finder(self) -> BoxFinder | None:
        """The box model the catalogue's images were cropped with (``index build --crop auto``), for the images
        added to it; None for a catalogue of whole images."""
        path = self.meta.get("boxes")
        if not path:
            return None
        if not Path(path).is_file():
            raise LookalikeError(f"This catalogue's images were cropped by the box model '{path}', which is gone: "
                                 "put it back, or build the catalogue anew (index build, with or without --crop auto)")
        return BoxFinder.load(path)

    # -- changing it: the same steps for both backends, their own storage -------------------------------------------
    def add_images(self, payload: dict[str, Any], images: str | Path, batch_size: int = 64,
                   num_workers: int | None = None) -> list[dict[str, Any]]:
        """Embed (cut as the catalogue's images were) and add the images not yet in the catalogue, by path;
        returns the new items with their ids."""
        listed = labelled_images(images)
        known = self.known_paths([it["path"] for it in listed])
        new = [it for it in listed if it["path"] not in known]
        if not new:
            return []
        new, vectors = embed_catalogue(payload, new, batch_size, num_workers, finder=self.box_finder())
        local = None
        if self.keeps_local:
            meta = self.meta["local"]
            local = catalogue_features([it["path"] for it in new], feature_options(meta), local_codes(meta))
        return self.add_items(new, vectors, local)

    def select(self, ids: Sequence[int] = (), paths: Sequence[str | Path] = (), missing: bool = False) -> list[int]:
        """The ids of the items named by id, by image path, or (``missing``) whose image file is gone."""
        resolved = [str(Path(p).expanduser().resolve()) for p in paths]
        found = self.ids_of(resolved)
        unknown = [p for p in resolved if p not in found]
        if unknown:
            raise LookalikeError(f"Not in the index: {unknown[:10]}")
        chosen = set(ids) | set(found.values())
        if missing:
            chosen |= {it["id"] for it in self.listing() if not Path(it["path"]).is_file()}
        return sorted(chosen)

    @abstractmethod
    def known_paths(self, paths: Sequence[str]) -> set[str]:
        """Those of ``paths`` that items of the catalogue have."""

    @abstractmethod
    def ids_of(self, paths: Sequence[str]) -> dict[str, int]:
        """The item id of each of ``paths`` the catalogue has."""

    @abstractmethod
    def add_items(self, items: list[dict[str, Any]], vectors: np.ndarray,
                  local: list[LocalFeatures] | None = None) -> list[dict[str, Any]]:
        """Store new items (path, label, fields) with their embeddings and (a catalogue that keeps them) their local
        features; returns them with their ids."""

    @abstractmethod
    def remove(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Remove items by id; returns the removed items (one message for an unknown id)."""

    def close(self) -> None:
        """Let go of what the catalogue holds open (a database connection); a file holds nothing."""

    # -- reading it ----------------------------------------------------------------------------------------------
    @abstractmethod
    def count(self, where: Condition | None = None) -> int:
        """How many items there are (``where``: that pass the condition)."""

    @abstractmethod
    def columns(self) -> set[str]:
        """``label`` and every manifest column an item has."""

    @abstractmethod
    def item(self, item_id: int) -> dict[str, Any] | None:
        """One item (id, path, label, fields), or None."""

    @abstractmethod
    def listing(self) -> Iterator[dict[str, Any]]:
        """Every item's path, label and manifest fields, in id order (what re-embedding needs)."""

    @abstractmethod
    def search_vectors(self, vectors: np.ndarray, k: int = 10, where: Condition | None = None,
                       rerank: int | None = None) -> list[list[SearchHit]]:
        """Top-``k`` items for each query vector, only among those passing ``where``."""

    @property
    def keeps_local(self) -> bool:
        """Whether the catalogue keeps its pictures' local features (built with them: the default)."""
        return self.meta.get("local") is not None

    def check_local(self) -> dict[str, Any]:
        """The local features' meta, or one message for a catalogue built without them."""
        if not self.keeps_local:
            raise LookalikeError("This catalogue keeps no local features, so its matches cannot be verified: build it "
                                 "again with `lookalike index build` (local features are on unless --no-local), or "
                                 "search with --verify 0")
        return self.meta["local"]

    @abstractmethod
    def local_features(self, ids: Sequence[int]) -> list[LocalFeatures]:
        """The stored local features of the items ``ids``, in that order."""

    @abstractmethod
    def vote_candidates(self, query: LocalFeatures, top: int, where: Condition | None = None) -> list[tuple[int, int]]:
        """The ``top`` items (among those passing ``where``) most voted for by the photo's descriptors, as (item id,
        votes), most first (:class:`~lookalike.verification.votes.DescriptorVotes`)."""

    @abstractmethod
    def set_search_params(self, params: str) -> None:
        """Search with other parameters (FAISS syntax: ``efSearch=512``, ``nprobe=64``) from the next search on."""

    @abstractmethod
    def vectors_of(self, ids: Sequence[int]) -> np.ndarray:
        """The stored embeddings of the items ``ids``, in that order."""

    @abstractmethod
    def batches(self, size: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every item as (ids, embeddings), ``size`` at a time."""

    def check_embedder(self, embedder_path: str | Path) -> dict[str, Any]:
        """Refuse an embedder other than the one the catalogue was built with; returns the file's contents."""
        payload = read_embedder_file(embedder_path)
        found = embedder_hash(payload)
        if found != self.meta["embedder_hash"]:
            raise LookalikeError(f"This index was built with embedder {self.meta['embedder_hash']}, but "
                                 f"'{embedder_path}' is {found}: rebuild the index with it, or search with the "
                                 f"embedder the index was built with")
        return payload

    def check_vectors(self, vectors: np.ndarray) -> None:
        """Refuse query embeddings of another size than the catalogue's."""
        if vectors.ndim != 2 or vectors.shape[1] != self.meta["dim"]:
            raise LookalikeError(f"Query embeddings have {vectors.shape[-1]} dimensions, the index {self.meta['dim']}")

    def check_query(self, k: int) -> None:
        """Refuse a search that cannot answer (``k`` below 1, an empty catalogue) before any embedding work."""
        if k < 1:
            raise LookalikeError(f"k={k}: ask for at least one result (-k 1 or more)")
        if not self.count():
            raise LookalikeError("The catalogue index is empty: add images with `lookalike index add`")

    def check_columns(self, *columns: str | None) -> None:
        """Refuse a column no item has."""
        known = self.columns()
        for column in columns:
            if column is not None and column not in known:
                raise LookalikeError(f"Catalogue items have no column {column!r}; they have: "
                                     f"{', '.join(sorted(known))}")

    def neighbourhoods(self, k: int) -> Iterator[tuple[int, list[SearchHit]]]:
        """Every item's id with its ``k`` nearest items (itself among them), a batch of items at a time."""
        total = self.count()
        for ids, vectors in self.batches():
            yield from zip((int(i) for i in ids), self.search_vectors(vectors, min(k, total)))

    def duplicate_groups(self, threshold: float, k: int = 20) -> list[list[int]]:
        """Groups of item ids linked by similarity >= ``threshold`` (each item to its ``k`` nearest), largest first."""
        links = []
        for item, found in self.neighbourhoods(k + 1):
            links += [(item, hit.id) for hit in found if hit.id != item and hit.score >= threshold]
        return groups_of(links)

    def verified_pairs(self, votes: int = 5, k: int = 5, threshold: float | None = None) -> list[Pair]:
        """Pairs of catalogue pictures that verify against each other, found without a similarity threshold: each
        picture's descriptors vote for ``votes`` others and its ``k`` nearest by embedding (with similarity at
        least ``threshold``, when given) join them; each pair is matched both ways and compared after alignment
        (:class:`Pair`: a duplicate when they agree within the catalogue's copy bound and cover most of each other,
        else a variant). Pictures too plain to verify (fewer features than the threshold's inliers) are duplicates
        when their embeddings are at least ``threshold`` similar (none without one)."""
        local = self.check_local()
        needed, bounds = int(local["threshold"]), Bounds.of(local.get("appearance"))
        items = {it["id"]: it for it in self.listing()}
        ids = sorted(items)
        wanted: dict[int, set[int]] = {i: set() for i in ids}
        similar: set[tuple[int, int]] = set()  # pairs at least ``threshold`` similar by embedding
        for item, found in self.neighbourhoods(k + 1):
            near = {h.id for h in found if h.id != item and (threshold is None or h.score >= threshold)}
            wanted[item] |= near
            if threshold is not None:
                similar |= {(min(item, other), max(item, other)) for other in near}
        pairs = []
        for start in tqdm(range(0, len(ids), PAIR_BATCH), desc="verifying pairs", unit="batch", disable=None):
            batch = ids[start:start + PAIR_BATCH]
            for item, own in zip(batch, self.local_features(batch)):
                others = wanted[item] | {i for i, _ in self.vote_candidates(own, votes + 1) if i != item}
                others = sorted(i for i in others if i > item and i in items)  # each pair once
                pictures = self.local_features(others)
                for other, picture, verdict in zip(others, pictures, verify(own, pictures, needed=needed)):
                    if verdict.inliers >= needed:
                        back = verify(picture, [own], needed=needed)[0]
                        pairs.append(_pair(items[item], own, items[other], picture, verdict, back, bounds))
                    elif min(len(own), len(picture)) < needed and (item, other) in similar:  # too plain to match:
                        pairs.append(Pair(item, other, 0, 0.0, 1.0, DUPLICATE))  # the embedding alone decides
        return sorted(pairs, key=lambda p: (p.kind != DUPLICATE, -p.inliers))

    def recalibrate(self) -> dict[str, Any]:
        """Calibrate the verification threshold anew on the catalogue as it is now (after many items were added
        or removed); returns the new ``local`` meta, kept with the catalogue."""
        meta = self.check_local()
        options, codes = feature_options(meta), local_codes(meta)
        items = list(self.listing())
        calibration = calibrated([it["id"] for it in items], [it["path"] for it in items], self.local_features,
                                 self.vote_candidates, options, codes)
        self.meta["local"] = local_meta(options, codes, calibration)
        self.save_meta()
        return self.meta["local"]

    def save_meta(self) -> None:
        """Keep a change of ``meta`` (the file catalogue writes it with the rest when it is saved)."""

    def confusers(self, column: str = "label", top: int = 50, k: int = 10) -> list[tuple[float, int, int]]:
        """The ``top`` most similar pairs of items whose ``column`` differs, as (similarity, id, id), most similar
        first: likely mistakes in the catalogue, or the pairs to collect feedback on (each item to its ``k``
        nearest)."""
        self.check_columns(None if column == "label" else column)
        if self.count() < 2:
            return []
        pairs: dict[tuple[int, int], float] = {}
        for item, found in self.neighbourhoods(k + 1):
            own = next((h for h in found if h.id == item), None)
            value = hit_value(own, column) if own is not None else item_value(self.item(item) or {}, column)
            for hit in found:
                if hit.id != item and hit_value(hit, column) != value:
                    pairs[(min(item, hit.id), max(item, hit.id))] = hit.score
        return sorted(((s, a, b) for (a, b), s in pairs.items()), reverse=True)[:top]
