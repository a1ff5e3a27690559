"""Benchmark: catalogue index build throughput and query latency (exact, approximate and binary indexes).

Build: `lookalike.catalog.FileCatalogue.build` on real JPEGs (decoding in worker processes, embedding, indexing),
in images/s, with an EfficientNet-Lite0 embedder (offline ImageNet weights, 128-d head) at --image-size.
Queries: `lookalike.retrieval.knn.FaissIndex` over N clustered 128-d unit vectors (as
experiments/bench_retrieval.py makes them, with two members of a class at cosine ~0.74 as in trained
embeddings; queries are held-out members of the same classes): build
time, single-query latency p50/p99 (k=10, one query at a time, as a search page sends them), batched
throughput, and recall@10 / recall@1 of each index against the exact top-10. `torch` is the exact
chunked mm + topk search on --device.

    python experiments/bench_search.py --images ../shared/datasets/flowers17 --sizes 10000 1000000 \
        --out experiments/results/search.md
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from common import machine, make_data, report

K = 10


def build_throughput(images: Path, image_size: int, batch_size: int, workers: int | None) -> dict:
    """Images/s of a whole index build (decode, resize, embed, add) on the available device."""
    from lookalike.data.listing import labelled_images
    from lookalike.catalogue.build import BuildOptions
    from lookalike.catalogue.file import FileCatalogue
    from lookalike.embedder.file import save_embedder
    from lookalike.models.embedder import Embedder

    embedder = Embedder({"name": "tf_efficientnet_lite0", "pretrained": False}, {"embedding_size": 128}, image_size)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_embedder(embedder, Path(tmp) / "embedder.pt")
        n = len(labelled_images(images))
        t0 = time.perf_counter()
        FileCatalogue.build(path, images, options=BuildOptions(batch_size=batch_size, num_workers=workers))
        seconds = time.perf_counter() - t0
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds, "image_size": image_size,
            "batch_size": batch_size, "device": "cuda" if torch.cuda.is_available() else "cpu"}


def factories(n: int) -> dict[str, tuple[str, str]]:
    """Index name -> (factory string, search parameters) for a catalogue of ``n`` items."""
    nlist = 1 << int(round(np.log2(4 * np.sqrt(n))))
    return {
        "Flat": ("Flat", ""),
        "HNSW32": ("HNSW32", "efSearch=64"),
        f"IVF{nlist},Flat": (f"IVF{nlist},Flat", "nprobe=16"),
        f"IVF{nlist},PQ16": (f"IVF{nlist},PQ16", "nprobe=16"),
        "BFlat": ("BFlat", ""),
    }


def latencies(search, queries: np.ndarray, single: int) -> tuple[float, float, float]:
    """(p50 ms, p99 ms) of one-query searches over the first ``single`` queries, and batched queries/s."""
    times = []
    for q in queries[:single]:
        t0 = time.perf_counter()
        search(q[None])
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    search(queries)
    batched = len(queries) / (time.perf_counter() - t0)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3), batched


def query_rows(n: int, num_queries: int, single: int, device: str, noise: float) -> list[dict]:
    """One row per index type over ``n`` items; the torch row runs last (its OpenMP threads would
    otherwise compete with FAISS's on a small CPU)."""
    from lookalike.retrieval.knn import FaissIndex, knn

    x, _ = make_data(n + num_queries, 128, noise=noise)
    held_out = np.zeros(len(x), bool)  # queries drawn at random: their class-mates stay in the gallery
    held_out[np.random.default_rng(1).choice(len(x), num_queries, replace=False)] = True
    gallery, queries = x[~held_out], x[held_out]
    exact, rows = None, []
    for name, (factory, params) in factories(n).items():
        t0 = time.perf_counter()
        index = FaissIndex(128, factory, search_params=params)
        index.add(gallery)
        build = time.perf_counter() - t0
        p50, p99, qps = latencies(lambda q: index.search(q, K), queries, single)
        ids = index.search(queries, K)[1]
        exact = ids if exact is None else exact  # Flat comes first
        rows.append({"n": n, "index": f"{name} ({params or 'exact'})" if name != "BFlat" else "BFlat (sign bits)",
                     "build_s": build, "p50_ms": p50, "p99_ms": p99, "queries_per_s": qps,
                     "recall@10": float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, exact)])),
                     "recall@1": float(np.mean(ids[:, 0] == exact[:, 0])), "bytes_per_item": len(index.to_bytes()) / n})
        print(json.dumps(rows[-1]), flush=True)
        del index
        gc.collect()
    on_device = torch.from_numpy(gallery).to(device)

    def torch_search(q: np.ndarray) -> np.ndarray:
        ids = knn(torch.from_numpy(q).to(device), on_device, K, backend="torch")[1].cpu().numpy()
        if device == "cuda":
            torch.cuda.synchronize()
        return ids

    p50, p99, qps = latencies(torch_search, queries, single)
    ids = torch_search(queries)
    rows.append({"n": n, "index": f"torch exact ({device})", "build_s": 0.0, "p50_ms": p50, "p99_ms": p99,
                 "queries_per_s": qps, "recall@10": float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, exact)])),
                 "recall@1": float(np.mean(ids[:, 0] == exact[:, 0])), "bytes_per_item": 512})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, help="folder of JPEGs to time index building on")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, help="decoding processes (default: the build's default)")
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 1_000_000],
                   help="catalogue sizes of the query rows (none: the build only)")
    p.add_argument("--queries", type=int, default=1000, help="queries for recall and batched throughput")
    p.add_argument("--single", type=int, default=300, help="one-at-a-time queries timed for p50/p99")
    p.add_argument("--noise", type=float, default=0.6, help="class spread of the vectors (see make_data)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="append a Markdown section with the results to this file")
    a = p.parse_args()

    lines = [f"\n## {date.today()}: device {a.device}\n", f"Machine: {machine()}  ",
             f"Command: `python experiments/bench_search.py {' '.join(sys.argv[1:])}`\n"]
    if a.images:
        b = build_throughput(a.images, a.image_size, a.batch_size, a.workers)
        print(json.dumps(b), flush=True)
        lines += ["FileCatalogue build (decode + resize + embed + add, `FileCatalogue.build`):\n",
                  "| images | image size | batch | device | seconds | images/s |", "|---:|---:|---:|---|---:|---:|",
                  f"| {b['images']:,} | {b['image_size']} | {b['batch_size']} | {b['device']} | {b['seconds']:.1f} | "
                  f"{b['images_per_s']:.1f} |\n"]
    if a.sizes:
        lines += [f"Queries (128-d, k={K}; p50/p99 of one-query searches, throughput of {a.queries:,} queries at "
                  "once; recall against the exact top-10):\n",
                  "| N | index | build (s) | p50 (ms) | p99 (ms) | queries/s (batched) | recall@10 | recall@1 | bytes/item |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in a.sizes:
        for r in query_rows(n, a.queries, a.single, a.device, a.noise):
            lines.append(f"| {r['n']:,} | {r['index']} | {r['build_s']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['queries_per_s']:,.0f} | {r['recall@10']:.3f} | {r['recall@1']:.3f} | "
                         f"{r['bytes_per_item']:.0f} |")
    report(lines, a.out)


if __name__ == "__main__":
    main()
