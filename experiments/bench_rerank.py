"""Benchmark: exact re-scoring behind compressed catalogue indexes (binary sign bits, IVF-PQ).

Through the catalogue index itself (`lookalike.catalogue.file.FileCatalogue`, saved and loaded again, so the exact
vectors are the memory-mapped `vectors.npy` of the .lkidx): N clustered 128-d unit vectors (`make_data` of
common.py, as bench_search.py), 1,000 queries drawn from them (their class-mates stay in the catalogue). For
each re-scoring depth (candidates re-scored with the exact vectors; 0: the compressed codes alone):
recall@10 (share of the exact top-10 found) and recall@1 against exact search (Flat, in the same run),
p50/p99 of one-query searches, and the bytes per item held in memory (the FAISS codes) and on disk
(codes + exact vectors).

    python experiments/bench_rerank.py --sizes 10000 1000000 --out experiments/results/search.md
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from common import machine, make_data, report

K = 10
DEPTHS = (0, 50, 100, 200, 500)


def rows_for(n: int, factory: str, queries_n: int, single: int) -> list[dict]:
    from lookalike.catalogue.file import FORMAT, FileCatalogue
    from lookalike.retrieval.knn import FaissIndex, default_search_params

    x, _ = make_data(n + queries_n, 128, noise=0.6)
    pick = np.zeros(len(x), bool)
    pick[np.random.default_rng(1).choice(len(x), queries_n, replace=False)] = True
    gallery, queries = x[~pick], x[pick]
    flat = FaissIndex(128, "Flat")
    flat.add(gallery)
    exact = flat.search(queries, K)[1]
    items = [{"id": i, "path": f"/item{i}.jpg", "label": ""} for i in range(len(gallery))]
    meta = {"format": FORMAT, "embedder_hash": "bench", "dim": 128, "factory": factory,
            "search_params": default_search_params(factory), "count": 0, "next_id": len(items), "embedder": "-",
            "rerank": 1, "dba": None}
    t0 = time.perf_counter()
    index = FileCatalogue(FaissIndex(128, factory, search_params=meta["search_params"], ids=True), [], meta,
                  np.zeros((0, 128), np.float32))
    index.add_vectors(items, gallery)
    build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "c.lkidx")
        disk = (Path(tmp) / "c.lkidx").stat().st_size
        loaded = FileCatalogue.load(Path(tmp) / "c.lkidx")
        codes = len(loaded.faiss.to_bytes())
        rows = []
        for depth in DEPTHS:
            found = np.array([[h.id for h in hits] for hits in loaded.search_vectors(queries, K, rerank=depth)])
            times = []
            for q in queries[:single]:
                t = time.perf_counter()
                loaded.search_vectors(q[None], K, rerank=depth)
                times.append(time.perf_counter() - t)
            rows.append({"n": n, "index": factory, "rerank": depth, "build_s": build,
                         "recall@10": float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, exact)])),
                         "recall@1": float(np.mean(found[:, 0] == exact[:, 0])),
                         "p50_ms": float(np.percentile(times, 50) * 1e3), "p99_ms": float(np.percentile(times, 99) * 1e3),
                         "memory_bytes_per_item": codes / n, "disk_bytes_per_item": disk / n})
            print(json.dumps(rows[-1]), flush=True)
        del loaded
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    p.add_argument("--factories", nargs="+", default=["BFlat", "IVF{nlist},PQ16"],
                   help="{nlist}: 4 sqrt(N) rounded to a power of two, as bench_search.py")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--single", type=int, default=200)
    p.add_argument("--out", help="append a Markdown section with the results to this file")
    args = p.parse_args()
    rows = []
    for n in args.sizes:
        nlist = 1 << int(round(np.log2(4 * np.sqrt(n))))
        for factory in args.factories:
            rows += rows_for(n, factory.format(nlist=nlist), args.queries, args.single)
    table = ["| N | index | re-scored | recall@10 | recall@1 | p50 (ms) | p99 (ms) | memory B/item | disk B/item |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {r['n']:,} | {r['index']} | {r['rerank']} | {r['recall@10']:.3f} | {r['recall@1']:.3f} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['memory_bytes_per_item']:.0f} | "
              f"{r['disk_bytes_per_item']:.0f} |" for r in rows]
    command = " ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                       for k, v in vars(args).items() if v is not None and k != "out")
    report([f"## {date.today()}: exact re-scoring behind compressed indexes", "", f"Machine: {machine()}  ",
            f"Command: `python experiments/bench_rerank.py {command}`", "", *table, ""], args.out)


if __name__ == "__main__":
    main()
