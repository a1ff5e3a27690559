"""Benchmark: does cropping a photo to the box model's box help photo -> catalogue search? (DVD covers)

For each protocol and seed, `python train.py experiment=box` trains a box model on composites of the training
items' clean references only (no photos, no hand-drawn boxes; its best epoch chosen on the validation items'
composites) and reports IoU and ms per photo on composites of the test items' references. Then every test photo
is searched whole and cropped to the box found (`--crop auto`: whole where the model's confidence is below the
box file's threshold), with the pretrained backbone's pooled features at their own size and, where given,
trained embedder files; recall@1/@5 = the item's reference among the first 1/5 of the test references.

- catalogue_only: a shop with only its catalogue: boxes trained on the 100 references (15 held out as
  validation); the 400 photos query the 100 references.
- zero_shot: boxes trained on items 001-050 (10 validation); items 051-100, 200 photos query 50 references.

    python experiments/box_crop.py --root ../shared/datasets/dvd_covers --seeds 0 1 2 \
        --zero-shot-embedders /tmp/lookalike-robust-defaults/dvd_zero_shot-seed{seed}/embedder.pt \
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

import numpy as np

from common import machine, report
from photo_to_catalogue import CAMERAS, catalogue_only_manifest, zero_shot_manifest

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = {"catalogue_only": (catalogue_only_manifest, [], range(1, 101)),
             "zero_shot": (zero_shot_manifest, ["data.val_classes=10"], range(51, 101))}


def train_boxes(protocol: str, manifest: Path, seed: int, work: Path) -> dict:
    folder = work / f"box-{protocol}-seed{seed}"
    cmd = [sys.executable, "train.py", "experiment=box", "data=manifest", f"data.root={manifest}",
           *PROTOCOLS[protocol][1], f"seed={seed}", "logger=csv", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={folder}"]
    started = time.time()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    result = json.loads((folder / "metrics.json").read_text())
    return {**result["test"]["box model"], "box_file": result["box_file"], "minutes": (time.time() - started) / 60,
            "command": " ".join(cmd[1:])}


def recall(embedder, references: list[str], photos: list, truth: np.ndarray) -> tuple[float, float]:
    """recall@1 and @5 of ``photos`` (paths or arrays) against ``references``; ``truth``: each photo's row."""
    gallery = embedder.embed(references).numpy()
    queries = embedder.embed(photos).numpy()
    ranked = np.argsort(-(queries @ gallery.T), 1)
    return tuple(float(np.mean([t in row[:k] for t, row in zip(truth, ranked)])) for k in (1, 5))


def main() -> None:
    from lookalike.data.images import load_rgb
    from lookalike.inference.boxes import BoxFinder
    from lookalike.inference.embedder_file import load_embedder, pretrained_embedder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--protocols", nargs="+", choices=sorted(PROTOCOLS), default=sorted(PROTOCOLS))
    p.add_argument("--zero-shot-embedders", help="trained embedder files for the zero-shot protocol, {seed} "
                   "filled in (trained on items 001-050 by experiments/robust_defaults.py)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "lookalike-box-crop"))
    p.add_argument("--out")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pretrained = pretrained_embedder("tf_efficientnet_lite0").eval()
    lines = [f"## {date.today()}: photo -> catalogue with the box model's crop (`--crop auto`), DVD covers", "",
             f"Machine: {machine()}  ", f"Command: `python experiments/box_crop.py {' '.join(sys.argv[1:])}`  ",
             f"Seeds {args.seeds} (of the box model, and of the trained embedder where one is given), mean ± std. "
             "Box models: `python train.py experiment=box data=manifest data.root=MANIFEST` on composites of the "
             "training items' references only; IoU and ms per photo (batch of 1, 2-core CPU) on composites of the "
             "test items' references; \"cropped\": photos the model was confident about (the others searched "
             "whole).", "",
             "| protocol | embedder | box IoU | IoU >= 0.5 | ms / photo | cropped | recall@1 whole | recall@1 crop "
             "| recall@5 whole | recall@5 crop |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for protocol in args.protocols:
        writer, _, items = PROTOCOLS[protocol]
        manifest = writer(args.root.resolve(), work / f"{protocol}.csv")
        names = [f"{i:03d}" for i in items]
        references = [str(args.root / "reference" / f"{n}.jpg") for n in names]
        photo_paths = [str(args.root / c / f"{n}.jpg") for n in names for c in CAMERAS]
        truth = np.repeat(np.arange(len(names)), len(CAMERAS))
        photos = [load_rgb(path) for path in photo_paths]
        rows: dict[str, list] = {}
        for seed in args.seeds:
            boxes = train_boxes(protocol, manifest, seed, work)
            finder = BoxFinder.load(boxes["box_file"])
            found = finder.find(photos)
            cropped = finder.crop(photos)
            share = float(np.mean([c >= finder.min_confidence for _, c in found]))
            embedders = {"pretrained lite0 (224 px)": pretrained}
            if protocol == "zero_shot" and args.zero_shot_embedders:
                embedders["trained (robust defaults)"] = load_embedder(args.zero_shot_embedders.format(seed=seed))
            for name, embedder in embedders.items():
                whole = recall(embedder, references, photo_paths, truth)
                crop = recall(embedder, references, cropped, truth)
                rows.setdefault(name, []).append((boxes["iou"], boxes["iou>=0.5"], boxes["ms_per_photo"], share,
                                                  whole[0], crop[0], whole[1], crop[1]))
                print(protocol, seed, name, rows[name][-1], f"({boxes['minutes']:.1f} min)", flush=True)
        for name, values in rows.items():
            cells = []
            for i, column in enumerate(zip(*values)):
                mean, std = statistics.mean(column), statistics.stdev(column) if len(column) > 1 else 0.0
                cells.append(f"{mean:.1f} ± {std:.1f}" if i == 2 else f"{mean:.3f} ± {std:.3f}")
            lines.append(f"| {protocol} | {name} | " + " | ".join(cells) + " |")
    report(lines + [""], args.out)


if __name__ == "__main__":
    main()
