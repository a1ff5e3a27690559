"""Self-supervised fine-tuning on a catalogue without labels: does it beat the pretrained backbone?

For each data set, three embedders on the same held-out test items:
  (a) pretrained   EfficientNet-Lite0's ImageNet features, no training
  (b) selfsup      `train.py experiment=selfsup_catalog` on the training side's images, labels hidden
  (c) supervised   `train.py` with the labels (the data set's own experiment)
  (d) pseudo       (b) continued with triplets on pseudo-classes: `lookalike pseudo-labels` clusters (b)'s
                   embeddings of the training images (FAISS k-means, one cluster per --images-per-cluster
                   images), then `train.py experiment=selfsup_pseudo` from (b)'s weights
Test protocols: photo -> catalogue with held-out "photos" of every test image (each query's answer is its
source image; `lookalike.data.unlabeled.query_photos`), and the class-level protocol of the data set
(flowers17: leave-one-out over classes 09-17; synthetic products: the real product photos query the
catalogue pictures).

    python experiments/selfsup.py --flowers ../shared/datasets/flowers17 --out experiments/results/selfsup.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import torch

from lookalike.data.image_folder import image_folder
from lookalike.data.synthetic import synthetic_products
from lookalike.data.table import ImageTable
from lookalike.data.unlabeled import image_files, photo_to_catalogue
from lookalike.embedder.file import load_embedder
from lookalike.models.embedder import Embedder
from lookalike.retrieval import retrieval_metrics

from common import machine, report

REPO = Path(__file__).resolve().parents[1]
KS = (1, 4, 8)
LETTERS = {"selfsup": "b", "supervised": "c", "pseudo": "d"}


def metrics(embedder: Embedder, table: ImageTable) -> dict[str, float]:
    """recall@k and MAP@R of ``embedder`` on ``table`` (its own query/gallery roles)."""
    emb = embedder.embed(table.paths, batch_size=64)
    m = retrieval_metrics(emb, torch.as_tensor(table.labels), torch.as_tensor(table.is_query),
                          torch.as_tensor(table.is_gallery), ks=KS)
    return {k: round(float(v), 4) for k, v in m.items() if k.startswith(("recall", "map"))}


def link_folders(folders: list[Path], into: Path) -> Path:
    """A folder of symbolic links to ``folders`` (the training side, without copying images)."""
    into.mkdir(parents=True, exist_ok=True)
    for f in folders:
        if not (into / f.name).exists():
            (into / f.name).symlink_to(f.resolve(), target_is_directory=True)
    return into


def train(overrides: list[str], out: Path, reuse: bool) -> tuple[Path, str]:
    """Run train.py (unless ``reuse`` and ``out`` holds its embedder); the embedder file and the command."""
    cmd = [sys.executable, "train.py", *overrides, "logger=csv", "eval.before=false", "eval.baseline=false",
           "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"]
    if not (reuse and (out / "embedder.pt").exists()):
        subprocess.run(cmd, cwd=REPO, check=True)
    return out / "embedder.pt", " ".join(["python", *cmd[1:-1]])


def selfsup_runs(unlabeled: Path, work: Path, name: str, common: list[str], images_per_cluster: int,
                 reuse: bool) -> dict[str, tuple[Path, str]]:
    """(b) self-supervised training on ``unlabeled``, and (d) triplets on the clusters of (b)'s embeddings."""
    options = [f"data.root={unlabeled}", "data.num_workers=2", f"paths.cache_dir={work / 'cache'}", *common]
    selfsup = train(["experiment=selfsup_catalog", *options], work / f"{name}_selfsup", reuse)
    clusters = work / f"{name}_clusters.csv"
    images = len(image_files(unlabeled))
    label = [sys.executable, "-m", "lookalike.cli", "pseudo-labels", "--embedder", str(selfsup[0]), "--images",
             str(unlabeled), "--clusters", str(images // images_per_cluster), "--out", str(clusters)]
    subprocess.run(label, cwd=REPO, check=True)
    pseudo = train(["experiment=selfsup_pseudo", f"data.source.pseudo_labels={clusters}",
                    f"model.backbone.checkpoint={selfsup[0]}", *options], work / f"{name}_pseudo", reuse)
    return {"selfsup": selfsup,
            "pseudo": (pseudo[0], "lookalike " + " ".join(label[3:]) + "; " + pseudo[1])}


def flowers(root: Path, work: Path, size: int, epochs: int, seed: int, per_cluster: int,
            reuse: bool) -> tuple[dict, dict]:
    splits = image_folder(root, train_classes=8)
    train_dirs = sorted({Path(p).parent for p in splits.train.paths})
    unlabeled = link_folders(train_dirs, work / "flowers_train_unlabeled")
    test = splits.test
    protocols = {"photo -> catalogue (held-out photos of classes 09-17)":
                 photo_to_catalogue(list(test.paths), work / "cache", 0),
                 "class level, leave-one-out (classes 09-17)": test}
    common = [f"model.image_size={size}", f"trainer.max_epochs={epochs}", f"seed={seed}"]
    runs = {**selfsup_runs(unlabeled, work, "flowers", common, per_cluster, reuse),
            "supervised": train(["experiment=flowers17_lite0", f"data.root={root}", *common],
                                work / "flowers_supervised", reuse)}
    return protocols, runs


def synthetic(work: Path, size: int, epochs: int, seed: int, per_cluster: int,
              reuse: bool) -> tuple[dict, dict]:
    splits = synthetic_products(work / "cache", image_size=size, test_protocol="photo_to_catalogue")
    train_dirs = sorted({Path(p).parent for p in splits.train.paths})
    unlabeled = link_folders(train_dirs, work / "synthetic_train_unlabeled")
    catalogue = [p for p, g in zip(splits.test.paths, splits.test.is_gallery) if g]
    protocols = {"photo -> catalogue (held-out photos of the test catalogue pictures)":
                 photo_to_catalogue(catalogue, work / "cache", 0),
                 "class level, product photos -> catalogue (test products)": splits.test}
    common = [f"model.image_size={size}", f"trainer.max_epochs={epochs}", f"seed={seed}"]
    runs = {**selfsup_runs(unlabeled, work, "synthetic", common, per_cluster, reuse),
            "supervised": train([f"paths.cache_dir={work / 'cache'}", *common], work / "synthetic_supervised", reuse)}
    return protocols, runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flowers", type=Path, help="flowers17 folder (skipped if not given)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-selfsup")
    p.add_argument("--images-per-cluster", type=int, default=10, help="(d): clusters = training images / this")
    p.add_argument("--reuse", action="store_true", help="reuse the runs already in --work (train only missing ones)")
    p.add_argument("--out", help="append a Markdown section with the results to this file")
    a = p.parse_args()

    options = (a.work, a.image_size, a.epochs, a.seed, a.images_per_cluster, a.reuse)
    studies = {"synthetic products": synthetic(*options)}
    if a.flowers:
        studies["flowers17 (labels hidden from (b) and (d))"] = flowers(a.flowers, *options)
    pretrained = Embedder({"name": "tf_efficientnet_lite0", "pretrained": True}, {"embedding_size": None},
                          a.image_size).eval()
    lines = [f"\n## {date.today()}: EfficientNet-Lite0, {a.image_size} px, {a.epochs} epochs, seed {a.seed}\n",
             f"Machine: {machine()}  ", f"Command: `python experiments/selfsup.py {' '.join(sys.argv[1:])}`\n"]
    for name, (protocols, runs) in studies.items():
        models = {"(a) pretrained": pretrained, **{f"({LETTERS[k]}) {k}": load_embedder(path)
                                                 for k, (path, _) in runs.items()}}
        lines += [f"### {name}\n", *(f"- {k}: `{cmd}`" for k, (_, cmd) in runs.items()), ""]
        for protocol, table in protocols.items():
            rows = {m: metrics(e, table) for m, e in models.items()}
            print(json.dumps({"data": name, "protocol": protocol, "rows": rows}), flush=True)
            lines += [f"{protocol}, {int(np.sum(table.is_query))} queries:\n",
                      "| model | " + " | ".join(f"recall@{k}" for k in KS) + " | MAP@R |",
                      "|---|" + "---:|" * (len(KS) + 1)]
            lines += [f"| {m} | " + " | ".join(f"{r[f'recall@{k}']:.4f}" for k in KS) + f" | {r['map@r']:.4f} |"
                      for m, r in rows.items()]
            lines.append("")
    report(lines, a.out)


if __name__ == "__main__":
    main()
