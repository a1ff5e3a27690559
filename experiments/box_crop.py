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
- synthetic: the built-in products (60 training, 40 test, as `python train.py` makes them): boxes trained on the
  training products' catalogue pictures (12 validation), the test products' 280 photos query their 40 pictures.

``--train zero_shot`` also trains an embedder per seed with lookalike's defaults on that protocol's training
items (`python train.py data=manifest data.root=MANIFEST`) and measures it too. ``--box-overrides``: Hydra
overrides of the box runs (e.g. fewer samples on a CPU).

    python experiments/box_crop.py --root ../shared/datasets/dvd_covers --seeds 0 1 2 --train zero_shot \
        --out experiments/results/photo_to_catalogue.md
"""

from __future__ import annotations

import argparse
import csv
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
from photo_to_catalogue import catalogue_only_manifest, zero_shot_manifest

REPO = Path(__file__).resolve().parents[1]


def synthetic_manifest(_: Path, out: Path) -> Path:
    """The default synthetic products as a manifest: catalogue pictures are the gallery, photos the queries."""
    from lookalike.data.synthetic import synthetic_products
    from lookalike.files import DEFAULT_CACHE_DIR

    splits = synthetic_products(Path(DEFAULT_CACHE_DIR).expanduser())
    rows = ["path,label,split,role"]
    for split, table in (("train", splits.train), ("test", splits.test)):
        rows += [f"{path},{name},{split},{'gallery' if path.endswith('catalogue.jpg') else 'query'}"
                 for path, name in zip(table.paths, table.label_names())]
    out.write_text("\n".join(rows) + "\n")
    return out


PROTOCOLS = {"catalogue_only": (catalogue_only_manifest, []),
             "zero_shot": (zero_shot_manifest, ["data.val_classes=10"]),
             "synthetic": (synthetic_manifest, ["data.val_classes=12"])}


def train(what: str, protocol: str, manifest: Path, seed: int, work: Path, overrides: list[str]) -> dict:
    """``python train.py`` of the box model (``what`` = box) or of an embedder (embedder) on ``manifest``."""
    folder = work / f"{what}-{protocol}-seed{seed}"
    cmd = [sys.executable, "train.py", *(["experiment=box"] if what == "box" else []), "data=manifest",
           f"data.root={manifest}", *PROTOCOLS[protocol][1], f"seed={seed}", "logger=csv",
           "trainer.enable_progress_bar=false", *overrides, f"hydra.run.dir={folder}"]
    started = time.time()
    if not (folder / "metrics.json").is_file():  # a run already made (the script run again) is reused
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    result = json.loads((folder / "metrics.json").read_text())
    return {**result, "minutes": (time.time() - started) / 60, "command": " ".join(cmd[1:])}


def test_split(manifest: Path) -> tuple[list[str], list[str], np.ndarray]:
    """The manifest's test references (gallery), photos (queries) and each photo's reference row."""
    with open(manifest, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    references = [r for r in rows if r["role"] == "gallery"]
    row_of = {r["label"]: i for i, r in enumerate(references)}
    photos = [r for r in rows if r["role"] == "query"]
    return [r["path"] for r in references], [r["path"] for r in photos], np.array([row_of[r["label"]] for r in photos])


def recall(embedder, references: list[str], photos: list, truth: np.ndarray) -> tuple[float, float]:
    """recall@1 and @5 of ``photos`` (paths or arrays) against ``references``; ``truth``: each photo's row."""
    gallery = embedder.embed(references).numpy()
    queries = embedder.embed(photos).numpy()
    ranked = np.argsort(-(queries @ gallery.T), 1)
    return tuple(float(np.mean([t in row[:k] for t, row in zip(truth, ranked)])) for k in (1, 5))


def main() -> None:
    from lookalike.data.images import load_rgb
    from lookalike.boxes.finder import BoxFinder
    from lookalike.embedder.file import load_embedder, pretrained_embedder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="the DVD covers")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--protocols", nargs="+", choices=sorted(PROTOCOLS), default=sorted(PROTOCOLS))
    p.add_argument("--train", nargs="*", choices=sorted(PROTOCOLS), default=[],
                   help="protocols on which to train an embedder per seed too (lookalike's defaults)")
    p.add_argument("--box-overrides", nargs="*", default=[], help="Hydra overrides of the box runs")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "lookalike-box-crop"))
    p.add_argument("--runs", help="append each run's numbers to this JSON-lines file")
    p.add_argument("--out")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pretrained = pretrained_embedder("tf_efficientnet_lite0").eval()
    box_command = ""
    table: list[str] = []
    for protocol in args.protocols:
        manifest = PROTOCOLS[protocol][0](args.root.resolve(), work / f"{protocol}.csv")
        references, photo_paths, truth = test_split(manifest)
        photos = [load_rgb(path) for path in photo_paths]
        rows: dict[str, list] = {}
        for seed in args.seeds:
            boxes = train("box", protocol, manifest, seed, work, args.box_overrides)
            box_command = boxes["command"]
            finder = BoxFinder.load(boxes["box_file"])
            cropped = finder.crop(photos)
            share = float(np.mean([c is not p for c, p in zip(cropped, photos)]))
            embedders = {"pretrained lite0 (224 px)": pretrained}
            if protocol in args.train:
                trained = train("embedder", protocol, manifest, seed, work, [])
                embedders["trained (lookalike defaults)"] = load_embedder(trained["embedder"])
            for name, embedder in embedders.items():
                whole, crop = recall(embedder, references, photo_paths, truth), recall(embedder, references, cropped, truth)
                box = boxes["test"]["box model"]
                rows.setdefault(name, []).append((box["iou"], box["iou>=0.5"], box["ms_per_photo"], share,
                                                  whole[0], crop[0], whole[1], crop[1]))
                record = {"protocol": protocol, "seed": seed, "embedder": name, "box": box, "cropped": share,
                          "recall@1": {"whole": whole[0], "crop": crop[0]},
                          "recall@5": {"whole": whole[1], "crop": crop[1]}, "box_command": boxes["command"]}
                print(json.dumps(record), flush=True)
                if args.runs:
                    with open(args.runs, "a") as f:
                        f.write(json.dumps(record) + "\n")
        for name, values in rows.items():
            cells = []
            for i, column in enumerate(zip(*values)):
                mean, std = statistics.mean(column), statistics.stdev(column) if len(column) > 1 else 0.0
                cells.append(f"{mean:.1f} ± {std:.1f}" if i == 2 else f"{mean:.3f} ± {std:.3f}")
            table.append(f"| {protocol} | {name} | " + " | ".join(cells) + " |")
    report([f"## {date.today()}: photo -> catalogue with the box model's crop (`--crop auto`)", "",
            f"Machine: {machine()}  ", f"Command: `python experiments/box_crop.py {' '.join(sys.argv[1:])}`  ",
            f"Box runs: `{box_command}` (per protocol and seed)  ",
            f"Seeds {args.seeds} (of the box model, and of the trained embedder), mean ± std. Box models train on "
            "composites of the training items' catalogue pictures only (no photos, no hand-drawn boxes); IoU and ms "
            "per photo (batch of 1) on composites of the test items' pictures; \"cropped\": the share of test photos "
            "the model was confident about (the others searched whole). Recall: the photo's own item among the "
            "first 1 / 5 of the test items' catalogue pictures.", "",
            "| protocol | embedder | box IoU | IoU >= 0.5 | ms / photo | cropped | recall@1 whole | recall@1 crop "
            "| recall@5 whole | recall@5 crop |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|", *table, ""],
           args.out)


if __name__ == "__main__":
    main()
