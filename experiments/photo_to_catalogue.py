"""Benchmark: photo -> catalogue on real phone photos (the DVD covers of the Stanford Mobile Visual Search set).

Each of the 100 items has one clean reference picture and four phone photos (canon, droid, e63, palm: clutter,
hands, glare, dim light, perspective). Two protocols, each written as a manifest (path,label,split,role: photos
are queries, references the gallery) and trained once per seed with `python train.py`; each run's report holds
the pretrained backbone's pooled features (no training) and the trained model on the same test split:

- catalogue_only: a shop with only its catalogue. `experiment=catalogue_only` trains on the 100 references alone
  (each its own class, "photo" augmentations; checkpoints chosen on rendered photos of them); the 400 real
  photos query the 100 references.
- zero_shot: `data=manifest` trains on items 001-050 (references and photos; 10 of them held out as validation
  items, photo -> catalogue) and tests on items 051-100: 200 photos query 50 references.
- zero_shot_roles: the same, with batches that hold each item's reference and its photos
  (`sampler=catalogue_photos`) and photo <-> reference triplets weighted above photo <-> photo ones
  (`loss=triplet_dense loss.catalogue_weight=3`).

    python experiments/photo_to_catalogue.py --root ../shared/datasets/dvd_covers --seeds 0 1 2 \
        --out experiments/results/photo_to_catalogue.md
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

CAMERAS = ("canon", "droid", "e63", "palm")
KS = (1, 5)


def zero_shot_manifest(root: Path, out: Path) -> Path:
    """Items 001-050 train, 051-100 test; photos are queries, references the gallery."""
    rows = ["path,label,split,role"]
    for item in range(1, 101):
        name = f"{item:03d}"
        split = "train" if item <= 50 else "test"
        rows.append(f"{root / 'reference' / f'{name}.jpg'},{name},{split},gallery")
        rows += [f"{root / camera / f'{name}.jpg'},{name},{split},query" for camera in CAMERAS]
    out.write_text("\n".join(rows) + "\n")
    return out


def catalogue_only_manifest(root: Path, out: Path) -> Path:
    """The 100 references train; the 400 photos query the 100 references."""
    rows = ["path,label,split,role"]
    for item in range(1, 101):
        name = f"{item:03d}"
        rows += [f"{root / 'reference' / f'{name}.jpg'},{name},{split},gallery" for split in ("train", "test")]
        rows += [f"{root / camera / f'{name}.jpg'},{name},test,query" for camera in CAMERAS]
    out.write_text("\n".join(rows) + "\n")
    return out


PROTOCOLS = {  # name: (manifest writer, train.py overrides, what the test is)
    "catalogue_only": (catalogue_only_manifest, ["experiment=catalogue_only"],
                       "catalogue only: trained on the 100 references; 400 photos -> 100 references"),
    "zero_shot": (zero_shot_manifest, ["data=manifest", "data.val_classes=10"],
                  "zero-shot: trained on items 001-050; items 051-100, 200 photos -> 50 references"),
    "zero_shot_roles": (zero_shot_manifest, ["data=manifest", "data.val_classes=10", "sampler=catalogue_photos",
                                             "loss=triplet_dense", "miner=none", "loss.catalogue_weight=3"],
                        "zero-shot, batches of each item's reference with 3 of its photos, photo <-> reference "
                        "triplets weighted 3x (not tuned: one setting, chosen before the run)"),
}


def train(protocol: str, manifest: Path, seed: int, work: Path, overrides: list[str]) -> dict:
    """One training run; returns its report (metrics.json)."""
    folder = work / f"{protocol}-seed{seed}"
    cmd = [sys.executable, "train.py", *PROTOCOLS[protocol][1], f"data.root={manifest}", "model.image_size=224",
           f"seed={seed}", "logger=csv", "eval.before=false", "eval.ks=[1,5]", f"paths.cache_dir={work / 'cache'}",
           f"hydra.run.dir={folder}", *overrides]
    started = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    result = json.loads((folder / "metrics.json").read_text())
    result["minutes"] = (time.time() - started) / 60
    result["command"] = " ".join(cmd[1:])
    return result


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="the dvd_covers folder (reference/, canon/, droid/, e63/, palm/)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--protocols", nargs="+", choices=sorted(PROTOCOLS), default=sorted(PROTOCOLS))
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "lookalike-photo-to-catalogue"))
    p.add_argument("--out", help="append a Markdown section with the results to this file")
    p.add_argument("overrides", nargs="*", help="more train.py overrides (the recipe), e.g. trainer.max_epochs=12")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    for protocol in a.protocols:
        write_manifest, _, title = PROTOCOLS[protocol]
        manifest = write_manifest(Path(a.root).resolve(), work / f"{write_manifest.__name__}.csv")
        runs = [train(protocol, manifest, seed, work, a.overrides) for seed in a.seeds]
        report(section(title, runs, a.seeds), a.out)


def section(title: str, runs: list[dict], seeds: list[int]) -> list[str]:
    """The Markdown section of one protocol: pretrained and trained rows, mean ± std over the seeds."""
    rows = {"pretrained pooled features (no training)": "backbone pooled features (no training)",
            "lookalike recipe (best checkpoint)": "after training (best checkpoint)"}
    lines = [f"\n## {date.today()}: {title}\n",
             f"Machine: {machine()}  ",
             f"Command: `python experiments/photo_to_catalogue.py {' '.join(sys.argv[1:])}`  ",
             f"Each run: `python {runs[0]['command']}` (seed {seeds[0]}; the others differ only in the seed); "
             f"{statistics.mean(r['minutes'] for r in runs):.1f} min a run. Seeds {seeds}, mean ± std.\n",
             "| model | " + " | ".join(f"recall@{k}" for k in KS) + " | MAP@R | per seed recall@1 |",
             "|---|" + "---:|" * (len(KS) + 2)]
    for name, key in rows.items():
        per_seed = [r["test"][key] for r in runs]
        cells = [mean_std([m[f"recall@{k}"] for m in per_seed]) for k in KS] + [mean_std([m["map@r"] for m in per_seed])]
        lines.append(f"| {name} | " + " | ".join(cells) + " | " +
                     ", ".join(f"{m['recall@1']:.3f}" for m in per_seed) + " |")
    lines.append(f"\nTest set: {runs[0]['test_set']}; best validation {runs[0]['optimized_metric']} per seed: "
                 + ", ".join(f"{r['best_val']:.3f}" for r in runs) + ".")
    return lines


if __name__ == "__main__":
    main()
