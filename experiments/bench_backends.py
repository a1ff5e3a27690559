"""The two catalogue backends side by side on the same vectors: the FAISS file (``.lkidx``) and Milvus (Milvus
Lite, the embedded engine: the same client and index types a Milvus server runs).

For each size and dimension: insert rate (items/s, index built included), disk per million items, the memory a
process needs to search (resident set after opening the catalogue and one search, over a bare process), and for
searches without a filter and with filters keeping 1% and 50% of the items: p50 / p99 latency of one query
(k=10) and recall@10 against exact search. Vectors are clustered random unit vectors (a cluster of 10 per
"product"); queries are noisy copies of random items. Each measurement runs in its own process.

    python experiments/bench_backends.py --sizes 100000 1000000 --dims 128 512 \
        --out experiments/results/search.md

Finished measurements are appended to ``--runs`` (JSON lines): an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from common import machine

QUERIES, K = 200, 10  # queries: the first --queries of them are timed
FILTERS = {"none": None, "1%": "bucket < 1", "50%": "bucket < 50"}


def factories(n: int) -> list[str]:
    """The exact type, and the approximate one a catalogue of this size would use."""
    return ["Flat", "HNSW32" if n <= 200_000 else "IVF1024,Flat"]


def make_vectors(n: int, dim: int, work: Path) -> tuple[Path, Path]:
    """Catalogue vectors and queries, saved once per (n, dim)."""
    path, queries = work / f"v{n}_{dim}.npy", work / f"q{n}_{dim}.npy"
    if not path.exists():
        rng = np.random.default_rng(0)
        centres = rng.normal(size=(n // 10 + 1, dim)).astype(np.float32)
        out = np.lib.format.open_memmap(path, "w+", np.float32, (n, dim))
        for start in range(0, n, 100_000):
            rows = np.arange(start, min(n, start + 100_000))
            x = centres[rows // 10] + 0.6 * rng.normal(size=(len(rows), dim)).astype(np.float32)
            out[rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
        out.flush()
        picked = rng.choice(n, QUERIES, replace=False)
        q = np.asarray(out[picked]) + 0.4 * rng.normal(size=(QUERIES, dim)).astype(np.float32) / np.sqrt(dim) * 4
        np.save(queries, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))
    return path, queries


def exact_top(vectors: np.ndarray, queries: np.ndarray, keep: np.ndarray | None) -> list[set[int]]:
    """The exact top-K item positions per query, among ``keep`` positions if given."""
    best_s = np.full((len(queries), K), -np.inf, np.float32)
    best_i = np.zeros((len(queries), K), np.int64)
    for start in range(0, len(vectors), 200_000):
        block = np.asarray(vectors[start:start + 200_000])
        s = queries @ block.T
        if keep is not None:
            s[:, ~keep[start:start + len(block)]] = -np.inf
        s = np.concatenate([best_s, s], 1)
        i = np.concatenate([best_i, np.arange(start, start + len(block))[None].repeat(len(queries), 0)], 1)
        top = np.argsort(-s, 1)[:, :K]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return [set(row) for row in best_i]


def items(n: int) -> list[dict]:
    return [{"path": f"/shop/{i}.jpg", "label": f"p{i // 10}", "fields": {"bucket": str(i % 100)}} for i in range(n)]


def child_build(backend: str, factory: str, vectors_path: str, target: str) -> dict:
    """Build one catalogue from the saved vectors; insert rate and disk."""
    from lookalike.catalogue.file import FORMAT, FileCatalogue
    from lookalike.catalogue.milvus import MilvusCatalogue
    from lookalike.retrieval.knn import FaissIndex, default_search_params

    vectors = np.load(vectors_path, mmap_mode="r")
    n, dim = vectors.shape
    listed = items(n)
    started = time.perf_counter()
    if backend == "faiss":
        params = default_search_params(factory)
        meta = {"format": FORMAT, "embedder_hash": "bench", "dim": dim, "factory": factory, "search_params": params,
                "count": 0, "next_id": n, "embedder": "none", "rerank": 0, "dba": None}
        index = FileCatalogue(FaissIndex(dim, factory, search_params=params, ids=True), [], meta)
        index.add_vectors([{**it, "id": i} for i, it in enumerate(listed)], np.asarray(vectors))
        index.save(target)
    else:
        MilvusCatalogue.create(target, "bench", listed, np.asarray(vectors), "bench", "none", factory).close()
    seconds = time.perf_counter() - started
    disk = sum(f.stat().st_size for f in Path(target).rglob("*") if f.is_file()) if Path(target).is_dir() \
        else Path(target).stat().st_size
    return {"insert_per_s": n / seconds, "build_s": seconds, "disk_mb_per_million": disk / 2**20 * 1e6 / n}


def child_search(backend: str, target: str, queries_path: str, count: str) -> dict:
    """Open the catalogue in a fresh process and search: memory, latency per filter, found ids."""
    import resource

    from lookalike.catalogue.backends import open_catalogue
    from lookalike.catalogue.filters import parse_filter

    rss0 = resident()
    catalogue = open_catalogue(target, backend, "bench")
    queries = np.load(queries_path)[:int(count)]
    catalogue.search_vectors(queries[:1], K)
    rss = resident() - rss0
    out = {"memory_mb": rss / 2**20, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    for name, text in FILTERS.items():
        where = None if text is None else parse_filter(text, catalogue.columns()).condition
        started = time.perf_counter()
        catalogue.search_vectors(queries[:1], K, where)  # the first use (the file evaluates the filter once)
        first = time.perf_counter() - started
        times, found = [], []
        for q in queries:
            started = time.perf_counter()
            hits = catalogue.search_vectors(q[None], K, where)[0]
            times.append(time.perf_counter() - started)
            found.append([int(h.path[6:-4]) for h in hits])
        out[name] = {"p50_ms": 1e3 * float(np.percentile(times, 50)), "p99_ms": 1e3 * float(np.percentile(times, 99)),
                     "first_ms": 1e3 * first, "found": found}
    return out


def resident() -> int:
    """This process's resident set in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run_child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(n: int, dim: int, work: Path, runs: Path, backends: list[str], count: int) -> None:
    done = [json.loads(line) for line in runs.read_text().splitlines()] if runs.exists() else []
    vectors_path, queries_path = make_vectors(n, dim, work)
    truth = None
    for factory in factories(n):
        for backend in backends:
            if any(r["n"] == n and r["dim"] == dim and r["factory"] == factory and r["backend"] == backend
                   for r in done):
                continue
            if truth is None:
                vectors, queries = np.load(vectors_path, mmap_mode="r"), np.load(queries_path)
                bucket = np.arange(n) % 100
                truth = {name: exact_top(vectors, queries, None if text is None else bucket < int(text.split()[-1]))
                         for name, text in FILTERS.items()}
            target = work / (f"c{n}_{dim}.lkidx" if backend == "faiss" else f"c{n}_{dim}.db")
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
            row = {"n": n, "dim": dim, "factory": factory, "backend": backend, "queries": count,
                   **run_child("build", backend, factory, str(vectors_path), str(target))}
            searched = run_child("search", backend, str(target), str(queries_path), str(count))
            row["memory_mb"], row["peak_rss_mb"] = searched["memory_mb"], searched["peak_rss_mb"]
            for name in FILTERS:
                found = searched[name].pop("found")
                row[name] = {**searched[name], "recall@10": float(np.mean(
                    [len(set(f) & t) / K for f, t in zip(found, truth[name][:len(found)])]))}
            print(json.dumps(row), flush=True)
            with runs.open("a") as f:
                f.write(json.dumps(row) + "\n")
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)


def section(rows: list[dict]) -> str:
    lines = [f"\n## {date.today()}: catalogue backends, FAISS file vs Milvus (Lite), on the same vectors\n",
             f"Machine: {machine()}  ", f"Command: `python experiments/bench_backends.py {' '.join(sys.argv[1:])}`  ",
             f"Clustered random unit vectors (10 per product), noisy queries one at a time (200 a filter, at 1M items "
             f"the first 50: Milvus Lite takes seconds a query there), k={K}; filters "
             "on a numeric column `bucket` (`bucket < 1`: 1% of the items, `bucket < 50`: 50%). Insert: items/s "
             "from vectors to a searchable, saved catalogue (index built included). Memory: resident set a fresh "
             "process adds by opening the catalogue and searching once. Recall@10 against exact search with the "
             "same filter. p50 / p99 in ms; \"first\": the first search with that filter (the file evaluates a "
             "filter over its items once, then keeps its ids).\n",
             "| items | dim | type | backend | insert items/s | disk MB / 1M | memory MB | no filter p50 / p99 | "
             "recall@10 | 1% p50 / p99 (first) | recall@10 | 50% p50 / p99 (first) | recall@10 |",
             "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [f"{r['n']:,}", str(r["dim"]), r["factory"], r["backend"] + ("" if r.get("queries", QUERIES) == QUERIES
                                                                            else f" ({r['queries']} q)"), f"{r['insert_per_s']:,.0f}",
                 f"{r['disk_mb_per_million']:,.0f}", f"{r['memory_mb']:,.0f}"]
        for name in FILTERS:
            f = r[name]
            first = "" if name == "none" else f" ({f['first_ms']:,.0f})"
            cells += [f"{f['p50_ms']:.2f} / {f['p99_ms']:.2f}{first}", f"{f['recall@10']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        print(json.dumps(child_build(*rest) if kind == "build" else child_search(*rest)))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    p.add_argument("--dims", type=int, nargs="+", default=[128])
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "lookalike-bench-backends"))
    p.add_argument("--runs", default="experiments/results/bench_backends_runs.jsonl")
    p.add_argument("--queries", type=int, default=QUERIES, help=f"queries timed per filter (at most {QUERIES})")
    p.add_argument("--backends", nargs="+", choices=["faiss", "milvus"], default=["faiss", "milvus"])
    p.add_argument("--report-only", action="store_true", help="write the table of the runs file, measuring nothing")
    p.add_argument("--out")
    args = p.parse_args()
    work, runs = Path(args.work), Path(args.runs)
    work.mkdir(parents=True, exist_ok=True)
    for n in args.sizes if not args.report_only else []:
        for dim in args.dims:
            measure(n, dim, work, runs, args.backends, min(args.queries, QUERIES))
    rows = [json.loads(line) for line in runs.read_text().splitlines()]
    rows = [r for r in rows if r["n"] in args.sizes and r["dim"] in args.dims and r["backend"] in args.backends]
    text = section(sorted(rows, key=lambda r: (r["n"], r["dim"], r["factory"] != "Flat", r["backend"])))
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
