"""Benchmark: leave-one-out kNN + recall@k / MAP@R on N x 512 embeddings, lookalike vs references.

Each (method, N) runs in its own process so that its peak memory is its own. Methods:
  lookalike-faiss   lookalike.retrieval.retrieval_metrics, FAISS Flat backend (CPU, or GPU if FAISS has one)
  lookalike-torch   lookalike.retrieval.retrieval_metrics, exact chunked torch mm + topk (on --device; on a
                    GPU bfloat16 candidates re-scored in float32); lookalike-torch-fp32 float32 throughout
  pml               pytorch-metric-learning AccuracyCalculator (default settings: its FAISS kNN)
  numpy             brute force in numpy, chunked (matmul + argpartition), the textbook reference

    python experiments/bench_retrieval.py --sizes 10000 100000 --out experiments/results/retrieval.md
    python experiments/bench_retrieval.py --sizes 10000 100000 1000000 --device cuda --methods lookalike-torch lookalike-faiss pml
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import date

import numpy as np

from common import machine, make_data, report

KS = (1, 2, 4, 8, 16, 32)


def numpy_metrics(x: np.ndarray, labels: np.ndarray, chunk: int = 2048) -> dict[str, float]:
    """Leave-one-out recall@k and MAP@R, chunked so memory stays chunk x N."""
    r = np.bincount(labels)[labels] - 1
    kmax = int(max(max(KS), r.max()))
    recall = {k: 0.0 for k in KS}
    ap = 0.0
    for s in range(0, len(x), chunk):
        sims = x[s:s + chunk] @ x.T
        rows = np.arange(len(sims))
        sims[rows, s + rows] = -np.inf
        top = np.argpartition(-sims, kmax, axis=1)[:, :kmax]
        order = np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, 1), axis=1), 1)
        hits = labels[order] == labels[s:s + chunk, None]
        for k in KS:
            recall[k] += hits[:, :k].any(1).sum()
        rr = r[s:s + chunk]
        within = np.arange(1, kmax + 1)[None, :] <= rr[:, None]
        prec = np.cumsum(hits, 1) / np.arange(1, kmax + 1)
        ap += ((prec * hits * within).sum(1) / rr).sum()
    return {**{f"recall@{k}": recall[k] / len(x) for k in KS}, "map@r": ap / len(x)}


def child(method: str, n: int, dim: int, device: str) -> dict:
    """Run one measurement in this process; returns seconds, peak memory and the metrics."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    x, labels = make_data(n, dim)
    gpu = device == "cuda"
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if method.startswith("lookalike"):
        from lookalike.retrieval import retrieval_metrics

        emb = torch.from_numpy(x).to(device)
        _, backend, *precision = method.split("-")
        m = retrieval_metrics(emb, torch.from_numpy(labels).to(device), ks=KS, backend=backend,
                              precision=precision[0] if precision else "auto")
        m = {k: v for k, v in m.items() if k.startswith(("recall", "map"))}
    elif method == "pml":
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count",
                                  device=torch.device(device))
        r = calc.get_accuracy(torch.from_numpy(x).to(device), torch.from_numpy(labels).to(device))
        m = {"recall@1": r["precision_at_1"], "map@r": r["mean_average_precision_at_r"]}
    elif method == "numpy":
        m = numpy_metrics(x, labels)
    else:
        raise ValueError(method)
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {
        "method": method, "n": n, "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "data_mb": x.nbytes / 2**20,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if gpu else None,
        "metrics": {k: round(float(v), 6) for k, v in m.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", nargs="+", default=["lookalike-faiss", "lookalike-torch", "pml", "numpy"])
    p.add_argument("--timeout", type=int, default=1800, help="seconds before a measurement is abandoned")
    p.add_argument("--out", help="append a Markdown section with the results to this file")
    p.add_argument("--child", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.dim, a.device)))
        return

    rows = []
    for n in a.sizes:
        for method in a.methods:
            cmd = [sys.executable, __file__, "--child", method, str(n), "--dim", str(a.dim), "--device", a.device]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
                row = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {
                    "method": method, "n": n, "error": done.stderr.strip().splitlines()[-1][:200]}
            except subprocess.TimeoutExpired:
                row = {"method": method, "n": n, "error": f"over {a.timeout} s"}
            rows.append(row)
            print(json.dumps(row), flush=True)

    lines = [f"\n## {date.today()}: {a.dim}-d, leave-one-out, device {a.device}\n",
             f"Machine: {machine()}  ",
             f"Command: `python experiments/bench_retrieval.py {' '.join(sys.argv[1:])}`\n",
             "| N | method | seconds | peak RSS (MB) | GPU peak (MB) | recall@1 | MAP@R |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']:,} | {r['method']} | failed: {r['error']} | | | | |")
            continue
        gpu = f"{r['gpu_peak_mb']:.0f}" if r["gpu_peak_mb"] is not None else "-"
        lines.append(f"| {r['n']:,} | {r['method']} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {gpu} | "
                     f"{r['metrics'].get('recall@1', float('nan')):.6f} | {r['metrics'].get('map@r', float('nan')):.6f} |")
    report(lines, a.out)


if __name__ == "__main__":
    main()
