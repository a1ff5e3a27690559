"""Benchmark: classify, then search (`lookalike search --category auto`) against plain search.

flowers17 as a catalogue with its 17 classes as categories: of each class's 80 photos, 20 (drawn with a fixed
seed) are queries and 60 are catalogue items, indexed with `FileCatalogue.build` from an embedder file (a pretrained
backbone's pooled features at its own size: no training, nothing chosen on these images). Plain search and
`category=auto` (a similarity-weighted vote of the `--votes` nearest items, then search within the winner)
answer every query through `lookalike.catalogue.query.search_catalogue`; recall@k = an item of the query's class
among the first k, category accuracy = how often the vote picked the query's class, and ms per query (one at a
time, after embedding).

    python experiments/classify_then_search.py --root ../shared/datasets/flowers17 --out experiments/results/search.md
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from common import machine, report

KS = (1, 5, 10)


def main() -> None:
    from lookalike.data.listing import labelled_images
    from lookalike.catalogue.file import FileCatalogue
    from lookalike.embedder.file import load_embedder, pretrained_embedder, save_embedder
    from lookalike.catalogue.query import SearchOptions, search_catalogue

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--queries-per-class", type=int, default=20)
    p.add_argument("--votes", type=int, default=10)
    p.add_argument("--out")
    args = p.parse_args()
    items = labelled_images(args.root)
    rng = np.random.default_rng(0)
    is_query = np.zeros(len(items), bool)
    for label in sorted({it["label"] for it in items}):
        rows = [i for i, it in enumerate(items) if it["label"] == label]
        is_query[rng.choice(rows, args.queries_per_class, replace=False)] = True
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "catalogue.csv"
        with open(manifest, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows((it["path"], it["label"]) for it, q in zip(items, is_query) if not q)
        path = save_embedder(pretrained_embedder(args.backbone), Path(tmp) / "embedder.pt")
        index = FileCatalogue.build(path, manifest)
        embedder = load_embedder(path)
    queries = [it for it, q in zip(items, is_query) if q]
    vectors = embedder.embed([it["path"] for it in queries]).numpy()
    rows = []
    for name, options in (("plain search", SearchOptions(k=max(KS))),
                          (f"category auto ({args.votes} votes)", SearchOptions(k=max(KS), category="auto",
                                                                                 votes=args.votes))):
        found, right, times = {k: [] for k in KS}, [], []
        for item, vector in zip(queries, vectors):
            t0 = time.perf_counter()
            [answer] = search_catalogue(index, vector[None], options)
            times.append(time.perf_counter() - t0)
            labels = [h.label for h in answer.hits]
            for k in KS:
                found[k].append(item["label"] in labels[:k])
            if answer.category is not None:
                right.append(answer.category == item["label"])
        rows.append((name, *(float(np.mean(found[k])) for k in KS),
                     f"{np.mean(right):.3f}" if right else "-", float(np.median(times) * 1e3)))
        print(rows[-1], flush=True)
    table = ["| search | " + " | ".join(f"recall@{k}" for k in KS) + " | category right | ms per query (median) |",
             "|---|" + "---:|" * (len(KS) + 2)]
    table += [f"| {r[0]} | " + " | ".join(f"{v:.3f}" for v in r[1:1 + len(KS)]) + f" | {r[-2]} | {r[-1]:.2f} |"
              for r in rows]
    report([f"## {date.today()}: classify, then search (flowers17 as a catalogue: {len(index.items)} items, "
            f"{len(queries)} query photos, 17 categories; pretrained {args.backbone} pooled features, no training)",
            "", f"Machine: {machine()}  ", f"Command: `python experiments/classify_then_search.py --root {args.root}`",
            "", *table, ""], args.out)


if __name__ == "__main__":
    main()
