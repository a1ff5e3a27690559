"""``lookalike search`` (the catalogue items most like photos) and ``lookalike duplicates`` (groups of
near-duplicate catalogue images)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from typing import Any

from lookalike.choices import FUSIONS
from lookalike.cli.options import NON_NEGATIVE, POSITIVE, add_backend_options
from lookalike.errors import LookalikeError


def add_search_options(parser: argparse.ArgumentParser) -> None:
    """The options of one search (``lookalike.catalogue.query.SearchOptions``)."""
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--fuse", choices=FUSIONS, help="several photos of one item: one answer for all, by their "
                        "mean embedding or each item's best photo (default: one answer per photo)")
    parser.add_argument("--group-by", help="one result per product: label, or a manifest column (e.g. sku)")
    parser.add_argument("--category", help="search only items of this category, or 'auto': decide it first by "
                        "the vote of the nearest items (classify-then-search)")
    parser.add_argument("--category-by", default="label", help="the column holding the category (default: label)")
    parser.add_argument("--filter", help='only items whose metadata match, e.g. \'brand == "acme" and price < 100\' '
                        "(label and manifest columns; == != < <= > >= in, and / or / not)")
    parser.add_argument("--votes", type=POSITIVE, default=10, help="nearest items voting for --category auto")
    parser.add_argument("--qe", type=NON_NEGATIVE, default=0, help="alpha query expansion with this many nearest items")
    parser.add_argument("--rerank", type=NON_NEGATIVE, help="candidates re-scored with the exact vectors (default: the "
                        "index's: 200 for compressed index types, 0 for the others)")
    parser.add_argument("--search-params", help="FAISS search parameters for this search instead of the index's, "
                        "e.g. efSearch=512 (more recall, slower)")
    parser.add_argument("--verify", type=NON_NEGATIVE, help="verify this many candidates of the embedding and as "
                        "many of the local descriptors' votes against the whole photo (local features and a "
                        "homography); verified ones come first. Default: 50 where the catalogue keeps local "
                        "features; 0: off")


def options_from(args: argparse.Namespace) -> Any:
    """The search options (:class:`~lookalike.catalogue.query.SearchOptions`) of parsed ``add_search_options``
    arguments."""
    from lookalike.catalogue.query import SearchOptions

    return SearchOptions(k=args.k, fuse=args.fuse, group_by=args.group_by, category=args.category,
                         category_by=args.category_by, votes=args.votes, qe=args.qe, rerank=args.rerank,
                         filter=args.filter, verify=args.verify).check()


def main(argv: list[str]) -> None:
    """``lookalike search --index FILE.lkidx photo.jpg [...] [-k 10] [--fuse mean] [--group-by label] [--json]``."""
    parser = argparse.ArgumentParser(prog="lookalike search", description="Find the catalogue items most like a photo.")
    parser.add_argument("photos", nargs="+")
    parser.add_argument("--index", required=True, help="catalogue index (.lkidx), or the Milvus file / URI")
    parser.add_argument("--embedder", help="embedder file (default: the one the index was built with)")
    add_backend_options(parser)
    add_search_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--out", help="also write a picture of the queries and their results")
    parser.add_argument("--crop", help="search with this part of every photo: auto (the box model finds the "
                        "product; the whole photo where it is not sure), x,y,width,height in pixels, or none (the "
                        "whole photo). Default: auto when there is a box model (--boxes, the catalogue's, or box.pt "
                        "beside the embedder file), else none")
    parser.add_argument("--boxes", help="box model for --crop auto (default: the one the catalogue was cropped "
                        "with, else box.pt beside the embedder file; python train.py experiment=box makes one)")
    args = parser.parse_args(argv)
    from lookalike.data.images import cut, load_rgb, parse_box
    from lookalike.catalogue.backends import open_catalogue
    from lookalike.boxes.finder import BoxFinder, resolve_box_file
    from lookalike.embedder.file import calibrated_threshold, embedder_from_payload
    from lookalike.catalogue.local import photo_features
    from lookalike.catalogue.query import search_catalogue
    from lookalike.catalogue.verified import verify_count
    from lookalike.retrieval.grid import search_grid

    options = options_from(args)
    box = None if args.crop in (None, "none", "auto") else parse_box(args.crop, "--crop")
    index = open_catalogue(args.index, args.backend, args.collection)
    index.check_query(args.k)
    if args.search_params is not None:
        index.set_search_params(args.search_params)
    embedder_path = args.embedder or index.meta["embedder"]
    payload = index.check_embedder(embedder_path)
    threshold = calibrated_threshold(payload)
    boxes = resolve_box_file(args.boxes, embedder_path, index.meta.get("boxes"), required=args.crop == "auto")
    if boxes is not None and args.crop in (None, "auto"):  # by default where there is one: it helped on real photos
        photos = BoxFinder.load(boxes).crop([load_rgb(p) for p in args.photos])
    else:
        photos = args.photos if box is None else [cut(load_rgb(p), box, f"--crop of {p}") for p in args.photos]
    vectors = embedder_from_payload(payload).embed(photos).numpy()
    local = None
    if verify_count(index, options.verify):  # the whole photo: the crop helps the embedding, not the geometry
        local = photo_features([load_rgb(p) for p in args.photos], index.meta["local"])
    answers = search_catalogue(index, vectors, options, local)
    queries = [" + ".join(args.photos)] if options.fuse else args.photos
    if args.json:
        print(json.dumps([{"query": q, "category": a.category, "category_confidence": a.category_confidence,
                           "results": [{**asdict(h), "match": None if threshold is None else h.score >= threshold}
                                       for h in a.hits]} for q, a in zip(queries, answers)], indent=2))
    else:
        for query, answer in zip(queries, answers):
            print(f"{query}:")
            if answer.category is not None:
                share = "" if answer.category_confidence is None else f" ({answer.category_confidence:.0%} of the vote)"
                print(f"  {options.category_by}: {answer.category}{share}")
            for rank, h in enumerate(answer.hits, 1):
                flag = "" if threshold is None else ("  match" if h.score >= threshold else "")
                flag += f"  verified ({h.inliers} inliers)" if h.verified else ""
                flag += f"  look-alike of item {h.lookalike_of} (shares its print, differs from the photo)" \
                    if h.lookalike_of is not None else ""
                pictures = f"  [{h.pictures} picture{'s' * (h.pictures > 1)}]" if h.group is not None else ""
                print(f"  {rank:>3}. {h.score:.4f}  {h.label:<20} {h.path}{pictures}{flag}")
    if args.out:
        firsts = args.photos[:1] if options.fuse else args.photos
        search_grid(firsts, [[(h.path, h.label, h.score) for h in a.hits] for a in answers],
                    verified=[[bool(h.verified) for h in a.hits] for a in answers],
                    outlines=[next((h.quad for h in a.hits if h.verified), None) for a in answers]).save(args.out)


def main_duplicates(argv: list[str]) -> None:
    """``lookalike duplicates --index FILE.lkidx [--threshold T] [--no-verify] [--json]``."""
    parser = argparse.ArgumentParser(prog="lookalike duplicates", description="List near-duplicate catalogue images "
                                     "(re-uploads, re-encodes, resizes, crops), and apart from them the variants: "
                                     "pictures that share print but differ (another colour, other words).")
    parser.add_argument("--index", required=True, help="catalogue index (.lkidx), or the Milvus file / URI")
    add_backend_options(parser)
    parser.add_argument("--threshold", type=float, help="embedding similarity (default: the embedder's calibrated "
                        "threshold, if it has one): with local features, only neighbours at least this similar join "
                        "the descriptor votes as candidate pairs (without one: the 5 nearest), and pictures too plain "
                        "to match are duplicates when this similar; --no-verify: groups of pictures this similar")
    parser.add_argument("--no-verify", action="store_true", help="group by embedding similarity alone (the default, "
                        "where the catalogue keeps local features, finds pairs by their descriptors' votes and the "
                        "embedding, matches them geometrically and compares them after alignment)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from lookalike.catalogue.backends import open_catalogue

    index = open_catalogue(args.index, args.backend, args.collection)
    verified = index.keeps_local and not args.no_verify
    found = _verified_groups(index, args.threshold) if verified else _embedding_groups(index, args.threshold)
    if args.json:
        print(json.dumps(found, indent=2))
        return
    duplicates = [f for f in found if f["kind"] == "duplicates"]
    variants = [f for f in found if f["kind"] == "variants"]
    how = "matched by local features and compared after alignment" if verified else "by embedding similarity"
    print(f"{len(duplicates)} groups of near-duplicates ({how}) among {index.count()} items")
    for n, group in enumerate(duplicates, 1):
        print(f"group {n}:")
        for item in group["items"]:
            print(f"  {item['path']}  {item['label']}")
    if verified:
        print(f"{len(variants)} pairs of variants (they share print but differ: not merged)")
        for pair in variants:
            a, b = pair["items"]
            print(f"  {a['path']}  {a['label']}\n    ~ {b['path']}  {b['label']}  ({pair['inliers']} matches, "
                  f"disagreeing by {pair['disagreement']:.2f})")


def _embedding_groups(index: Any, threshold: float | None) -> list[dict[str, Any]]:
    from lookalike.embedder.file import match_threshold

    threshold = threshold if threshold is not None else match_threshold(index.meta["embedder"])
    if threshold is None:
        raise LookalikeError("No threshold: pass --threshold, or run `lookalike calibrate` on the embedder first "
                             "(or build the catalogue with local features: then none is needed)")
    return [{"kind": "duplicates", "items": [index.item(i) for i in group]}
            for group in index.duplicate_groups(threshold)]


def _verified_groups(index: Any, threshold: float | None) -> list[dict[str, Any]]:
    from lookalike.catalogue.base import DUPLICATE, groups_of
    from lookalike.embedder.file import match_threshold

    if threshold is None:
        try:  # optional here: without one the plain pictures' duplicates are not looked for
            threshold = match_threshold(index.meta["embedder"])
        except LookalikeError:
            threshold = None
    pairs = index.verified_pairs(threshold=threshold)
    groups = groups_of([(p.a, p.b) for p in pairs if p.kind == DUPLICATE])
    return [{"kind": "duplicates", "items": [index.item(i) for i in group]} for group in groups] + [
        {"kind": "variants", "items": [index.item(p.a), index.item(p.b)], "inliers": p.inliers,
         "disagreement": round(p.disagreement, 4), "cover": round(p.cover, 4)} for p in pairs if p.kind != DUPLICATE]


def main_confusers(argv: list[str]) -> None:
    """``lookalike confusers --index FILE.lkidx [--backend milvus] [--by label] [--top 50] [--json]``."""
    parser = argparse.ArgumentParser(prog="lookalike confusers", description="List the most similar pairs of "
                                     "catalogue pictures with different labels: likely catalogue mistakes, or the "
                                     "pairs to collect feedback on.")
    parser.add_argument("--index", required=True, help="catalogue index (.lkidx), or the Milvus file / URI")
    add_backend_options(parser)
    parser.add_argument("--by", default="label", help="the column that should differ (default: label)")
    parser.add_argument("--top", type=POSITIVE, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from lookalike.catalogue.backends import open_catalogue
    from lookalike.catalogue.base import item_value

    index = open_catalogue(args.index, args.backend, args.collection)
    variants = []
    if index.keeps_local:  # pictures that verify against each other and differ: the pairs a shop must show apart
        from lookalike.catalogue.base import DUPLICATE

        for p in index.verified_pairs():
            a, b = index.item(p.a), index.item(p.b)
            if p.kind != DUPLICATE and item_value(a, args.by) != item_value(b, args.by):
                variants.append({"kind": "verified variants", "inliers": p.inliers,
                                 "disagreement": round(p.disagreement, 4), "a": a, "b": b})
    known = {(v["a"]["id"], v["b"]["id"]) for v in variants}
    pairs = [{"kind": "similar", "similarity": s, "a": index.item(a), "b": index.item(b)}
             for s, a, b in index.confusers(args.by, args.top) if (a, b) not in known]
    found = (variants + pairs)[:args.top]
    if args.json:
        print(json.dumps(found, indent=2))
        return
    print(f"{len(found)} pairs with different {args.by} among {index.count()} items: verified variants (they share "
          "print) first, then the most similar by embedding")
    for pair in found:
        how = f"{pair['inliers']} matches" if "inliers" in pair else f"{pair['similarity']:.4f}"
        print(f"  {how:<12} {item_value(pair['a'], args.by):<16} {pair['a']['path']}")
        print(f"  {'':<12} {item_value(pair['b'], args.by):<16} {pair['b']['path']}")
