"""Recipes that generalise: which training settings beat the pretrained features on unseen classes.

Runs `train.py` (and the plain PML loop of `plain_pml_loop.py`, the peer) for every recipe, data set
and seed, appends each result to a JSON-lines file (a run already there is not run again, so an
interrupted study continues), and writes the tables of `experiments/results/recipes.md`.

Protocol ("A Metric Learning Reality Check"): settings are chosen on validation classes split off
the training classes (`best.ckpt` on `optimized_metric`), the test classes are only reported.

    python experiments/recipes.py --flowers ../shared/datasets/flowers17 \
        --omniglot ../shared/datasets/omniglot_small --runs experiments/results/recipes_runs.jsonl \
        --out experiments/results/recipes.md [--only flowers17] [--recipes plain freeze_bn] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from lookalike.data.datamodule import RetrievalDataModule
from lookalike.models.embedder import Embedder
from lookalike.embedder.embed import embed_loader
from lookalike.retrieval import retrieval_metrics

from common import machine, splits

REPO = Path(__file__).resolve().parents[1]

# Per data set: the train.py overrides and the plain loop's arguments (same resolution and epochs).
DATASETS = {
    "flowers17": {"train": ["experiment=flowers17_lite0", "model.image_size=128", "trainer.max_epochs=4"],
                  "plain": ["--image-size", "128", "--epochs", "4", "--batch-size", "32"],
                  "plain_train": ["data.batch_size=24"]},  # m=4 x the 6 classes left after 2 validation ones
    "omniglot": {"train": ["experiment=omniglot_lite0", "data.source.train=[images_background_small1]",
                           "data.source.test=[images_background_small2]", "model.image_size=96",
                           "trainer.max_epochs=3"],
                 "plain": ["--image-size", "96", "--epochs", "3", "--batch-size", "64"], "plain_train": []},
}

# The plain PML loop's settings expressed in train.py (random 128-d head, BatchNorm statistics updated
# on PK batches, backbone LR 1e-4); each switch below changes one of them.
PLAIN = ["model.head.embedding_size=128", "optim.freeze_bn=false", "optim.lr.backbone=1e-4",
         "optim.lr.head=1e-3", "sampler.m=4", "callbacks=default", "optimized_metric=val/recall@1"]
SWITCHES = {
    "freeze_bn": ["optim.freeze_bn=true"],
    "no_head": ["model.head.embedding_size=null"],
    "low_backbone_lr": ["optim.lr.backbone=1e-5"],
    "head_warmup": ["optim.freeze_backbone_epochs=1"],
    "multi_similarity": ["loss=multi_similarity", "miner=multi_similarity"],
    "ema": ["callbacks=ema"],
    "photo_augment": ["augment=photo"],
    "select_map_at_r": ["optimized_metric=val/map@r"],
    # measured after the defaults were chosen (2026-11-23, with fused AdamW and uint8 batches)
    "layer_decay": ["optim.lr.layer_decay=0.85"],
    "swa": ["callbacks=swa"],
    "cross_batch_memory": ["loss=xbm", "miner=none"],
    "proxy_anchor": ["loss=proxy_anchor", "miner=none"],
    "embedding_512": ["model.head.embedding_size=512"],
    "batch_hard": ["miner=batch_hard"],
    "distance_weighted": ["miner=distance_weighted"],
}
# Two candidates combining the switches that helped alone; the one with the better validation MAP@R
# (validation classes, never the test classes) became the defaults of conf/, run as "defaults".
CANDIDATE = ["model.head.embedding_size=null", "optim.freeze_bn=true", "callbacks=ema", "optimized_metric=val/map@r"]
RECIPES = {"lookalike_plain": PLAIN, **{k: PLAIN + v for k, v in SWITCHES.items()},
           "candidate_a": CANDIDATE + ["optim.lr.backbone=1e-5"], "candidate_b": CANDIDATE + ["optim.lr.backbone=1e-4"],
           "defaults": [],
           # the defaults at timm's own resolution, against pretrained_224 (the data set's resolution replaced)
           "defaults_224": ["model.image_size=224"]}


def run_train(dataset: str, recipe: str, seed: int, root: str, work: Path, baseline: bool) -> dict:
    out = work / dataset / recipe / f"seed{seed}"
    plain = DATASETS[dataset]["plain_train"] if RECIPES[recipe][:len(PLAIN)] == PLAIN else []
    replaced = {o.split("=")[0] for o in RECIPES[recipe]}
    base = [o for o in DATASETS[dataset]["train"] if o.split("=")[0] not in replaced]
    cmd = [sys.executable, "train.py", *base, f"data.root={root}", *plain, *RECIPES[recipe],
           f"seed={seed}", f"eval.baseline={str(baseline).lower()}", "eval.before=false", "logger=csv",
           "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"]
    subprocess.run(cmd, cwd=REPO, check=True)
    report = json.loads((out / "metrics.json").read_text())
    rows = report["test"]
    result = {"dataset": dataset, "recipe": recipe, "seed": seed, "command": " ".join(cmd[1:-1]),
              "test": next(v for k, v in rows.items() if k.startswith("after")), "best_val": report["best_val"],
              "best_checkpoint": Path(report["best_checkpoint"]).name, "duration_s": report["duration_s"]}
    if baseline:
        result["pretrained"] = rows["backbone pooled features (no training)"]
    return result


def run_plain(dataset: str, seed: int, root: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "experiments/plain_pml_loop.py", "--data", dataset, "--root", root,
               *DATASETS[dataset]["plain"], "--seed", str(seed), "--json", f"{tmp}/m.json"]
        subprocess.run(cmd, cwd=REPO, check=True)
        report = json.loads(Path(f"{tmp}/m.json").read_text())
    return {"dataset": dataset, "recipe": "plain_pml_loop", "seed": seed, "command": " ".join(cmd[1:-2]),
            "test": report["test"], "duration_s": report["duration_s"]}


def run_pretrained_224(dataset: str, root: str) -> dict:
    """The pretrained pooled features at timm's own 224 px, a reference beyond the training resolution."""
    model = Embedder({"name": "tf_efficientnet_lite0", "pretrained": True}, {"embedding_size": None}, 224).eval()
    data = RetrievalDataModule(splits(dataset, root), model.preprocessing, val_classes=1, num_workers=2)
    out = embed_loader(model, data.eval_dataloader(data.test_table), desc="pretrained 224 px")
    metrics = retrieval_metrics(out["embeddings"], out["label"], ks=(1, 2, 4, 8))
    return {"dataset": dataset, "recipe": "pretrained_224", "seed": 0, "test": metrics, "duration_s": 0}


def load_runs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def table(runs: list[dict], dataset: str) -> list[str]:
    mine = [r for r in runs if r["dataset"] == dataset]
    lines = ["| recipe | seeds | recall@1 | recall@4 | MAP@R |", "|---|---:|---:|---:|---:|"]
    pretrained = [r["pretrained"] for r in mine if "pretrained" in r][:1]
    if pretrained:
        m = pretrained[0]
        lines.append(f"| pretrained pooled features, training resolution (no training) | - | {m['recall@1']:.4f} | {m['recall@4']:.4f} "
                     f"| {m['map@r']:.4f} |")
    for recipe in ["pretrained_224", "plain_pml_loop", *RECIPES]:
        rs = [r for r in mine if r["recipe"] == recipe]
        if rs:
            lines.append(f"| {recipe} | {len(rs)} | " + " | ".join(
                cell([r["test"][m] for r in rs]) for m in ("recall@1", "recall@4", "map@r")) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flowers", help="flowers17 folder")
    p.add_argument("--omniglot", help="folder with images_background_small1.zip and images_background_small2.zip")
    p.add_argument("--only", nargs="*", choices=list(DATASETS))
    p.add_argument("--recipes", nargs="*", choices=["pretrained_224", "plain_pml_loop", *RECIPES])
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--runs", default="experiments/results/recipes_runs.jsonl")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "lookalike-recipes"))
    p.add_argument("--out", default="experiments/results/recipes.md")
    args = p.parse_args()

    roots = {"flowers17": args.flowers, "omniglot": args.omniglot}
    runs_file = Path(args.runs)
    runs = load_runs(runs_file)
    for dataset in args.only or [d for d in DATASETS if roots[d]]:
        for recipe in args.recipes or ["plain_pml_loop", *RECIPES]:
            for seed in args.seeds:
                if any(r["dataset"] == dataset and r["recipe"] == recipe and r["seed"] == seed for r in runs):
                    continue
                if recipe == "plain_pml_loop":
                    result = run_plain(dataset, seed, roots[dataset])
                elif recipe == "pretrained_224":
                    result = run_pretrained_224(dataset, roots[dataset])
                else:
                    first = not any("pretrained" in r for r in runs if r["dataset"] == dataset)
                    result = run_train(dataset, recipe, seed, roots[dataset], Path(args.work), first)
                runs.append(result)
                with open(runs_file, "a") as f:
                    f.write(json.dumps(result) + "\n")
                print(f"{dataset} {recipe} seed {seed}: {result['test']['recall@1']:.4f} recall@1, "
                      f"{result['test']['map@r']:.4f} MAP@R ({result['duration_s']} s)", flush=True)

    tables = [f"Machine: {machine()}", ""]
    for dataset in DATASETS:
        tables += [f"### {dataset}", "", *table(runs, dataset), ""]
    write_tables(Path(args.out), "\n".join(tables))


def write_tables(path: Path, tables: str) -> None:
    """Put the tables between the markers of ``path`` (the text around them is kept), or start the file."""
    start, end = "<!-- tables: written by experiments/recipes.py -->", "<!-- end of tables -->"
    text = path.read_text() if path.exists() else f"{start}\n{end}\n"
    before, rest = text.split(start, 1)
    path.write_text(f"{before}{start}\n{tables}\n{end}{rest.split(end, 1)[1]}")
    print(tables)


if __name__ == "__main__":
    main()
