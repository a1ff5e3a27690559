"""The defaults, untouched, on every data set here: do they beat the pretrained features on unseen classes?

One `python train.py` per data set and seed with only what names the data set (no recipe override), so each
run is what a new user gets. Each run's report holds, on the same test classes: the pretrained backbone's pooled
features (no training), the fine-tuned best checkpoint, and the exported embedder (chosen on the validation
classes among the WiSE-FT interpolations, `select.alphas`). The defaults were chosen on flowers17 and Omniglot
validation classes; the DVD covers and the synthetic set were not looked at when choosing them.

    python experiments/robust_defaults.py --flowers ../shared/datasets/flowers17 \
        --omniglot ../shared/datasets/omniglot_small --dvd ../shared/datasets/dvd_covers --seeds 0 1 2 \
        --out experiments/results/recipes.md

`--recipes lp_ft backbone_lr_1e-5 multi_similarity` (beside `defaults`) runs the alternatives of issue 23 as
patches over the defaults and adds a table of their validation scores beside their test ones.

Every finished run is appended to `--runs` (a JSON-lines file): an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from common import machine, report
from photo_to_catalogue import catalogue_only_manifest, zero_shot_manifest

REPO = Path(__file__).resolve().parents[1]
PRETRAINED, FINE_TUNED = "backbone pooled features (no training)", "after training (best checkpoint)"
# The alternatives of issue 23 to the defaults' WiSE-FT choice, each a patch over the defaults (`--recipes`):
# LP-FT (Kumar et al. 2022) needs a head to probe first, so it adds the classic 128-d one.
RECIPES = {"defaults": [], "lp_ft": ["model.head.embedding_size=128", "optim.freeze_backbone_epochs=1"],
           "backbone_lr_1e-5": ["optim.lr.backbone=1e-5"],
           "multi_similarity": ["loss=multi_similarity", "miner=multi_similarity"]}


def data_sets(args: argparse.Namespace, work: Path) -> dict[str, list[str]]:
    """Each data set's train.py overrides: only what names it (and its protocol)."""
    sets: dict[str, list[str]] = {"synthetic": []}
    if args.dvd:
        root = Path(args.dvd).resolve()
        sets["dvd_catalogue_only"] = ["experiment=catalogue_only",
                                      f"data.root={catalogue_only_manifest(root, work / 'dvd_catalogue_only.csv')}"]
        sets["dvd_zero_shot"] = ["data=manifest", "data.val_classes=10",
                                 f"data.root={zero_shot_manifest(root, work / 'dvd_zero_shot.csv')}"]
    if args.flowers:
        sets["flowers17"] = ["experiment=flowers17_lite0", f"data.root={Path(args.flowers).resolve()}"]
    if args.omniglot:
        sets["omniglot"] = ["experiment=omniglot_lite0", f"data.root={Path(args.omniglot).resolve()}",
                            "data.source.train=[images_background_small1]",
                            "data.source.test=[images_background_small2]"]
    return sets


def train(name: str, overrides: list[str], seed: int, work: Path, recipe: str = "defaults") -> dict:
    folder = work / (f"{name}-seed{seed}" if recipe == "defaults" else f"{name}-{recipe}-seed{seed}")
    overrides = overrides + RECIPES[recipe]
    cmd = [sys.executable, "train.py", *overrides, f"seed={seed}", "logger=csv", "eval.before=false",
           "eval.baseline=true", "trainer.enable_progress_bar=false", f"hydra.run.dir={folder}"]
    started = time.time()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    result = json.loads((folder / "metrics.json").read_text())
    selection = result.get("selection") or {"alpha": 1.0, "name": FINE_TUNED}
    chosen = result["test"].get(selection["name"], result["test"][FINE_TUNED])
    return {"data": name, "recipe": recipe, "seed": seed,
            "command": " ".join(["train.py", *overrides, f"seed={seed}"]),
            "pretrained": result["test"][PRETRAINED], "fine_tuned": result["test"][FINE_TUNED], "exported": chosen,
            "alpha": selection["alpha"], "best_alpha": selection.get("best_alpha", selection["alpha"]),
            "validation": selection.get("validation"), "test_set": result["test_set"],
            "minutes": (time.time() - started) / 60}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def alpha_cell(run: dict) -> str:
    """The exported alpha, and the best-scoring one where the one-standard-error rule took a larger one."""
    best = run.get("best_alpha", run["alpha"])
    return f"{run['alpha']:g}" + (f" (best {best:g})" if best != run["alpha"] else "")


def recipe_of(run: dict) -> str:
    return run.get("recipe", "defaults")  # runs recorded before --recipes were all the defaults


def comparison(runs: list[dict]) -> list[str]:
    """Each recipe's exported model per data set: its validation MAP@R (what a choice may look at) beside
    its test recall@1 / MAP@R (reported only), means over the seeds run."""
    lines = ["\n| data set | recipe | seeds | validation MAP@R | test r@1 / MAP@R | alpha |",
             "|---|---|---:|---:|---|---|"]
    for name in dict.fromkeys(r["data"] for r in runs):
        for recipe in dict.fromkeys(recipe_of(r) for r in runs):
            mine = [r for r in runs if r["data"] == name and recipe_of(r) == recipe]
            if not mine:
                continue
            val = mean_std([r["validation"][f"{r['alpha']:g}"]["map@r"] for r in mine])
            test = [mean_std([r["exported"][m] for r in mine]) for m in ("recall@1", "map@r")]
            lines.append(f"| {name} | {recipe} | {len(mine)} | {val[0]:.3f} ± {val[1]:.3f} | "
                         + " / ".join(f"{m:.3f} ± {s:.3f}" for m, s in test) + " | "
                         + ", ".join(alpha_cell(r) for r in mine) + " |")
    return lines


def section(runs: list[dict], seeds: list[int]) -> list[str]:
    lines = [f"\n## {date.today()}: the defaults on every data set (robust, not tuned)\n",
             f"Machine: {machine()}  ", f"Command: `python experiments/robust_defaults.py {' '.join(sys.argv[1:])}`  ",
             f"Seeds {seeds}, mean ± std; test classes never trained on (DVD catalogue only: the 400 real photos "
             "against the 100 references the shop trained on). \"exported\" is `embedder.pt`: the WiSE-FT "
             "interpolation chosen on validation classes (alpha per seed; \"best\": the highest-scoring alpha, where "
             "a larger one within `select.within_se` standard errors was taken). Beats: mean - std of the exported "
             "model above the pretrained mean, recall@1 and MAP@R.\n",
             "| data set (command) | pretrained r@1 / MAP@R | fine-tuned r@1 / MAP@R | exported r@1 / MAP@R | "
             "alpha | beats | min a run |", "|---|---|---|---|---|---|---:|"]
    for name in dict.fromkeys(r["data"] for r in runs):
        mine = [r for r in runs if r["data"] == name]
        cells, beats = [], []
        for key in ("pretrained", "fine_tuned", "exported"):
            stats = [mean_std([r[key][m] for r in mine]) for m in ("recall@1", "map@r")]
            cells.append(" / ".join(f"{m:.3f} ± {s:.3f}" for m, s in stats))
            if key == "exported":
                base = [mean_std([r["pretrained"][m] for r in mine])[0] for m in ("recall@1", "map@r")]
                beats = [m - s > b for (m, s), b in zip(stats, base)]
        command = mine[0]["command"].replace(str(REPO) + "/", "")
        lines.append(f"| {name} (`{command}`) | " + " | ".join(cells) + " | "
                     + ", ".join(alpha_cell(r) for r in mine) + " | "
                     + ("yes" if all(beats) else "no (" + ", ".join(
                         m for m, b in zip(("recall@1", "MAP@R"), beats) if not b) + ")")
                     + f" | {statistics.mean(r['minutes'] for r in mine):.1f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flowers")
    p.add_argument("--omniglot")
    p.add_argument("--dvd")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="*")
    p.add_argument("--recipes", nargs="+", default=["defaults"], choices=list(RECIPES),
                   help="other recipes than the defaults: a comparison table of their validation scores follows")
    p.add_argument("--runs", default="experiments/results/robust_defaults_runs.jsonl")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "lookalike-robust-defaults"))
    p.add_argument("--out")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs_file = Path(args.runs)
    runs = [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.exists() else []
    for name, overrides in data_sets(args, work).items():
        if args.only and name not in args.only:
            continue
        for recipe in args.recipes:
            for seed in args.seeds:
                if any(r["data"] == name and recipe_of(r) == recipe and r["seed"] == seed for r in runs):
                    continue
                runs.append(train(name, overrides, seed, work, recipe))
                with open(runs_file, "a") as f:
                    f.write(json.dumps(runs[-1]) + "\n")
                r = runs[-1]
                print(f"{name} {recipe} seed {seed}: pretrained {r['pretrained']['recall@1']:.3f}, exported (alpha "
                      f"{r['alpha']:g}) {r['exported']['recall@1']:.3f} recall@1 ({r['minutes']:.1f} min)", flush=True)
    mine = [r for r in runs if r["seed"] in args.seeds and (not args.only or r["data"] in args.only)]
    lines = section([r for r in mine if recipe_of(r) == "defaults"], args.seeds)
    if args.recipes != ["defaults"]:
        lines += comparison([r for r in mine if recipe_of(r) in args.recipes])
    report(lines, args.out)


if __name__ == "__main__":
    main()
