"""``lookalike search`` (the catalogue items most like photos) and ``lookalike duplicates`` (groups of
near-duplicate catalogue images)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from lookalike.errors import LookalikeError
from lookalike.inference.catalog import Index
from lookalike.inference.embedder_file import calibrated_threshold, embedder_from_payload, match_threshold
from lookalike.retrieval.grid import search_grid


def main(argv: list[str]) -> None:
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
    index.check_query(args.k)
    if args.search_params is not None:
        index.faiss.set_search_params(args.search_params)
    payload = index.check_embedder(args.embedder or index.meta["embedder"])
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


def main_duplicates(argv: list[str]) -> None:
    """``lookalike duplicates --index FILE.lkidx [--threshold T] [--json]``."""
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
