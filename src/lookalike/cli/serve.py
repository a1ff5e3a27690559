"""``lookalike serve --index catalog.lkidx [--host 127.0.0.1] [--port 8000]``: the search page and JSON API."""

from __future__ import annotations

import argparse
from pathlib import Path

from lookalike.choices import MAX_K
from lookalike.cli.options import PORT, POSITIVE, add_backend_options, integer
from lookalike.errors import LookalikeError


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lookalike serve", description="Serve a search page for a catalogue index.")
    parser.add_argument("--index", required=True, help="catalogue index (.lkidx), or the Milvus file / URI")
    add_backend_options(parser)
    parser.add_argument("--embedder", help="embedder file (default: the one the index was built with)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only; "
                        "0.0.0.0 exposes the page to the network)")
    parser.add_argument("--port", type=PORT, default=8000)
    parser.add_argument("--max-upload-mb", type=float, default=10.0)
    parser.add_argument("--slots", type=POSITIVE, default=4, help="ordinary searches at once, and uploads read at "
                        "once (at most half of them one client address's); more wait their turn, fairly between "
                        "clients, or get 503 with Retry-After")
    parser.add_argument("--verify-budget", type=POSITIVE, default=800, help="verification work of costly searches "
                        "at once, in photos x candidates (default 800: one search of 8 photos at --verify 100); "
                        "a search of more than 100 is costly and waits its turn in this budget")
    parser.add_argument("--feedback", help="folder the page's 'same' / 'not the same' marks go to (default: "
                        "catalog.feedback/ beside catalog.lkidx or catalog.db, <collection>.feedback/ here for a "
                        "server; train with data.feedback=FOLDER/feedback.csv)")
    parser.add_argument("--no-feedback", action="store_true", help="take no marks (nothing is written)")
    parser.add_argument("--learn", action="store_true", help="also keep the photo of every one-photo search whose "
                        "first result verified unambiguously (as lookalike harvest does) as a harvested mark in the "
                        "feedback folder, re-encoded, with its box; bounded like the marks (10,000 photos)")
    parser.add_argument("--qe", type=integer(0, MAX_K), default=0, help="alpha query expansion with this many "
                        "nearest items for requests that do not say (0: off; database-side augmentation is an index "
                        "build option)")
    parser.add_argument("--boxes", help="box model for crop=auto and the page's detected box (default: the one the "
                        "catalogue was cropped with, else box.pt beside the embedder file, if there is one; python "
                        "train.py experiment=box makes one)")
    args = parser.parse_args(argv)
    from lookalike.data.feedback import feedback_folder
    from lookalike.catalogue.milvus import is_remote
    from lookalike.serve.app import LOOPBACK_NAMES, create_app
    from lookalike.serve.admission import AdmissionOptions
    from lookalike.serve.page import PageOptions

    if args.max_upload_mb <= 0:
        raise LookalikeError("--max-upload-mb must be above 0")
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    beside = Path(f"{args.collection}.lkidx") if args.backend == "milvus" and is_remote(args.index) else args.index
    feedback = None if args.no_feedback else (args.feedback or feedback_folder(beside))
    app = create_app(args.index, PageOptions(
        embedder=args.embedder, max_upload_mb=args.max_upload_mb,
        admission=AdmissionOptions(slots=args.slots, work=args.verify_budget),
        allowed_hosts=LOOPBACK_NAMES if loopback else None, feedback=feedback, qe=args.qe, backend=args.backend,
        collection=args.collection, boxes=args.boxes, learn=args.learn))
    try:
        import uvicorn

        from lookalike.serve.protocol import HeaderDeadline
    except ImportError as e:
        raise LookalikeError("lookalike serve needs the serve extra: pip install 'lookalike[serve]'") from e
    host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address in a URL
    print(f"searching {args.index} at http://{host}:{args.port}/ (API docs: /docs)")
    if feedback is not None:
        print(f"marks on results go to {feedback}/feedback.csv" + (", with the photos of unambiguous verified "
                                                                  "searches (--learn)" if args.learn else ""))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", http=HeaderDeadline)
