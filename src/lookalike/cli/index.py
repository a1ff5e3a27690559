"""``lookalike index build|reembed|add|remove|recalibrate``: make and maintain a catalogue index (a .lkidx file, or a Milvus
collection with ``--backend milvus``)."""

from __future__ import annotations

import argparse

from lookalike.cli.options import (add_backend_options, add_build_options, add_embedding_options, build_options,
                                   collection)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookalike index", description="Build and maintain a catalogue index.")
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="embed catalogue images and index them (an interrupted build resumes)")
    build.add_argument("--embedder", required=True, help="embedder file (embedder.pt of a run, or lookalike export)")
    build.add_argument("--images", required=True, help="folder of images (sub-folder = label) or manifest .csv")
    build.add_argument("--out", required=True, help="index file to write (.lkidx); --backend milvus: a Milvus Lite "
                       "file (catalog.db) or a server URI (http://host:19530)")
    build.add_argument("--crop", choices=("none", "auto"), default="none", help="auto: embed each image cut to the "
                       "product the box model finds in it (for catalogues of photos rather than clean pictures; "
                       "images added later are cut the same way); none: whole images (default)")
    build.add_argument("--boxes", help="box model for --crop auto (default: box.pt beside the embedder file; "
                       "python train.py experiment=box makes one)")
    reembed = sub.add_parser("reembed", help="embed every item of an index anew with another embedder, into a new "
                             "index (same items, labels and columns; an interrupted run resumes)")
    reembed.add_argument("--index", required=True, help="the index whose items to embed anew")
    reembed.add_argument("--embedder", required=True, help="the new embedder file")
    reembed.add_argument("--out", required=True, help="the new index (.lkidx), or the Milvus file / URI")
    reembed.add_argument("--out-collection", type=collection, help="--backend milvus: the new collection (default: "
                         "--collection; another name when --out is the same file or server)")
    add_build_options(build, reembed)
    add = sub.add_parser("add", help="embed and add images not yet in the index")
    add.add_argument("--images", required=True, help="folder of images or manifest .csv")
    remove = sub.add_parser("remove", help="remove items by id or path, or those whose file is gone")
    remove.add_argument("--ids", type=int, nargs="+", default=[])
    remove.add_argument("--paths", nargs="+", default=[])
    remove.add_argument("--missing", action="store_true", help="remove items whose image file no longer exists")
    recalibrate = sub.add_parser("recalibrate", help="calibrate anew how many local-feature matches verify a match "
                                 "(after many items were added or removed)")
    add_embedding_options(add)
    for p in (add, remove, recalibrate):
        p.add_argument("--index", required=True, help="index file to update (rewritten atomically), or the Milvus "
                       "file / URI")
    add_backend_options(build, reembed, add, remove, recalibrate)
    add.add_argument("--embedder", help="embedder file (default: the one the index was built with)")
    return parser


def main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    from lookalike.boxes.finder import resolve_box_file
    from lookalike.catalogue.backends import build_catalogue, editing, reembed
    from lookalike.catalogue.local import describe_local

    if args.action == "build":
        boxes = resolve_box_file(args.boxes, args.embedder, required=True) if args.crop == "auto" else None
        index = build_catalogue(args.out, args.embedder, args.images, args.backend, args.collection,
                                build_options(args, boxes))
        if index is None:  # a DDP process other than rank 0: rank 0 writes the index
            return
        params = f", {index.meta['search_params']}" if index.meta["search_params"] else ""
        params += f", re-scoring {index.meta['rerank']} candidates" if index.meta["rerank"] else ""
        print(f"indexed {index.count()} images ({index.meta['factory']}{params}, {index.meta['dim']}-d) "
              f"into {args.out}" + (f", collection {args.collection}" if args.backend == "milvus" else ""))
        print(describe_local(index.meta.get("local")))
        return
    if args.action == "reembed":
        index = reembed(args.index, args.embedder, args.out, args.backend, args.collection, args.out_collection,
                        build_options(args))
        print(f"embedded {index.count()} items anew into {args.out}")
        print(describe_local(index.meta.get("local")))
        return
    # another writer of the same catalogue waits until this one has saved
    with editing(args.index, args.backend, args.collection) as index:
        if args.action == "recalibrate":
            print(describe_local(index.recalibrate()))
            return
        if args.action == "add":
            payload = index.check_embedder(args.embedder or index.meta["embedder"])
            changed = index.add_images(payload, args.images, args.batch_size, args.workers)
            verb = "added"
        else:
            changed = index.remove(index.select(args.ids, args.paths, args.missing))
            verb = "removed"
        total = index.count()
    print(f"{verb} {len(changed)} item(s); the index now holds {total}")
