"""``lookalike serve --index catalog.lkidx [--host 127.0.0.1] [--port 8000]``: the search page and JSON API."""

from __future__ import annotations

import argparse

from lookalike.errors import LookalikeError
from lookalike.serve.app import create_app


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lookalike serve", description="Serve a search page for a catalogue index.")
    parser.add_argument("--index", required=True, help="catalogue index (.lkidx)")
    parser.add_argument("--embedder", help="embedder file (default: the one the index was built with)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only; "
                        "0.0.0.0 exposes the page to the network)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-upload-mb", type=float, default=10.0)
    args = parser.parse_args(argv)
    app = create_app(args.index, args.embedder, args.max_upload_mb)
    try:
        import uvicorn
    except ImportError as e:
        raise LookalikeError("lookalike serve needs the serve extra: pip install 'lookalike[serve]'") from e
    print(f"searching {args.index} at http://{args.host}:{args.port}/ (API docs: /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
