"""Benchmark: one round of feedback on search results (the page's "same product" / "not the same"), simulated.

The synthetic set's 40 test products are the catalogue (one catalogue picture each, indexed with `FileCatalogue.build`).
For each of 3 seeds:

1. train the quickstart recipe (`python train.py seed=S`, the default config): the embedder without feedback;
2. search the catalogue with photos 0-2 of the first 20 test products (the feedback products) and mark what a
   person sees in the first 5 results, as on the page: the right product "same" when it is shown, and every
   wrong product ranked above it (all 5 when it is not shown) "different"; written as the page writes
   `feedback.csv`;
3. train again, same seed, with `data.feedback=feedback.csv` (and once more with `data.feedback_pairs=0`: its
   photos as positives only, no hard class pairs in the batches, to see what the pairs add);
4. search with the held-out photos 3-6 of all 40 products, never marked: recall@1/@5 of both embedders, for the
   feedback products and, apart, for the 20 products no one marked (what feedback costs or gives elsewhere).

Nothing is chosen on the held-out photos: the recipe is the default and `data.feedback_pairs` its default.

    python experiments/feedback_round.py --out experiments/results/search.md
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from common import machine, report

FEEDBACK_PRODUCTS, FEEDBACK_PHOTOS, SHOWN, KS = 20, 3, 5, (1, 5)


def train(out: Path, seed: int, extra: list[str]) -> Path:
    """The embedder file of one `train.py` run of the default recipe."""
    if not (out / "embedder.pt").exists():
        subprocess.run([sys.executable, "train.py", f"seed={seed}", f"hydra.run.dir={out}", "logger=none",
                        "eval.baseline=false", "eval.before=false", "trainer.enable_progress_bar=false",
                        *extra], check=True)
    return out / "embedder.pt"


def ranked(index, embedder, photos: list[str], k: int) -> list[list[str]]:
    return [[h.label for h in hits] for hits in index.search(embedder, photos, k=k)]


def simulate(results: list[list[str]], photos: list[str], truth: list[str], picture: dict[str, str],
             out: Path) -> tuple[int, int]:
    """Write the marks a person would make on the first SHOWN results; returns (same, different) counts."""
    rows = []
    for shown, photo, right in zip(results, photos, truth):
        above = shown[:shown.index(right)] if right in shown else shown
        rows += [(photo, "different", wrong, picture[wrong]) for wrong in above]
        if right in shown:
            rows.append((photo, "same", right, picture[right]))
    with open(out, "w", newline="") as f:
        csv.writer(f).writerows([("photo", "verdict", "label", "path"), *rows])
    same = sum(r[1] == "same" for r in rows)
    return same, len(rows) - same


def recall(results: list[list[str]], truth: list[str]) -> dict[int, float]:
    return {k: float(np.mean([t in r[:k] for r, t in zip(results, truth)])) for k in KS}


def main() -> None:
    from lookalike.data.synthetic import synthetic_products
    from lookalike.files import cache_dir
    from lookalike.catalogue.build import BuildOptions
    from lookalike.catalogue.file import FileCatalogue
    from lookalike.embedder.file import load_embedder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--work", type=Path, default=Path("runs/feedback_round"))
    p.add_argument("--train-args", nargs="*", default=[], help="more train.py overrides for every run (a quick try)")
    p.add_argument("--out")
    args = p.parse_args()
    t0 = time.perf_counter()
    test = synthetic_products(cache_dir()).test  # the default data set's test products (as train.py makes it)
    names = test.label_names()
    picture = {n: q for q, n in zip(test.paths, names) if q.endswith("catalogue.jpg")}
    products = sorted(picture)
    marked = set(products[:FEEDBACK_PRODUCTS])
    photo = [(q, n) for q, n in zip(test.paths, names) if "/photo_" in q]
    number = [int(Path(q).stem.split("_")[1]) for q, _ in photo]
    feedback = [(q, n) for (q, n), i in zip(photo, number) if n in marked and i < FEEDBACK_PHOTOS]
    held = [(q, n) for (q, n), i in zip(photo, number) if i >= FEEDBACK_PHOTOS]
    args.work.mkdir(parents=True, exist_ok=True)
    manifest = args.work / "catalogue.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *((picture[n], n) for n in products)])
    rows = []
    for seed in args.seeds:
        base = train(args.work / f"base_s{seed}", seed, args.train_args)
        embedder = load_embedder(base)
        index = FileCatalogue.build(base, manifest, options=BuildOptions(num_workers=0))
        marks = args.work / f"feedback_s{seed}.csv"
        counts = simulate(ranked(index, embedder, [q for q, _ in feedback], SHOWN), [q for q, _ in feedback],
                          [n for _, n in feedback], picture, marks)
        given = [*args.train_args, f"data.feedback={marks.resolve()}"]
        tuned = train(args.work / f"feedback_s{seed}", seed, given)
        positives = train(args.work / f"positives_s{seed}", seed, [*given, "data.feedback_pairs=0"])
        result = {"seed": seed, "same": counts[0], "different": counts[1]}
        for name, path in (("without", base), ("with", tuned), ("positives", positives)):
            found = ranked(FileCatalogue.build(path, manifest, options=BuildOptions(num_workers=0)), load_embedder(path), [q for q, _ in held],
                           max(KS))
            for group, keep in (("marked", True), ("unmarked", False)):
                rows_of = [i for i, (_, n) in enumerate(held) if (n in marked) == keep]
                r = recall([found[i] for i in rows_of], [held[i][1] for i in rows_of])
                result.update({f"{name}/{group}/r@{k}": v for k, v in r.items()})
        rows.append(result)
        print(result, flush=True)

    def cell(key: str) -> str:
        values = np.array([r[key] for r in rows])
        return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}"

    table = ["| held-out photos of | embedder | recall@1 | recall@5 |", "|---|---|---:|---:|"]
    for group, what in (("marked", f"the {FEEDBACK_PRODUCTS} products with feedback"),
                        ("unmarked", f"the {len(products) - FEEDBACK_PRODUCTS} products without")):
        for name, how in (("without", "without feedback"), ("positives", "feedback, positives only"),
                          ("with", "feedback (positives + hard pairs)")):
            table.append(f"| {what} | {how} | {cell(f'{name}/{group}/r@1')} | {cell(f'{name}/{group}/r@5')} |")
    per_seed = ["| seed | marks same / different | marked r@1 without -> with | unmarked r@1 without -> with |",
                "|---:|---:|---:|---:|"]
    per_seed += [f"| {r['seed']} | {r['same']} / {r['different']} | {r['without/marked/r@1']:.3f} -> "
                 f"{r['with/marked/r@1']:.3f} | {r['without/unmarked/r@1']:.3f} -> {r['with/unmarked/r@1']:.3f} |"
                 for r in rows]
    report([f"## {date.today()}: one round of simulated feedback (synthetic set, photo -> catalogue of its 40 test "
            "products)", "", f"Machine: {machine()}  ",
            f"Command: `python experiments/feedback_round.py --seeds {' '.join(map(str, args.seeds))}"
            + (f" --train-args {' '.join(args.train_args)}" if args.train_args else "") + "` "
            f"({(time.perf_counter() - t0) / 60:.0f} min, {3 * len(args.seeds)} training runs of the default recipe)",
            "", f"{len(feedback)} feedback photos (photos 0-{FEEDBACK_PHOTOS - 1} of {FEEDBACK_PRODUCTS} products, "
            f"marked on the first {SHOWN} results); {len(held)} held-out photos (photos {FEEDBACK_PHOTOS}-6 of all "
            f"{len(products)}) never marked; mean ± std over seeds {', '.join(map(str, args.seeds))}.", "", *table,
            "", *per_seed, ""], args.out)


if __name__ == "__main__":
    main()
