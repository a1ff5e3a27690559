"""Benchmark: retrieval-side post-processing (alpha query expansion, database-side augmentation) on real
and synthetic test classes, with frozen embedders (no training), as options of `lookalike evaluate`
(`expansion.qe_k=... expansion.dba_k=... expansion.alpha=...`).

Sets: flowers17 classes 09-17 (720 photos, leave-one-out) with the ImageNet-pretrained EfficientNet-Lite0's
pooled features at 224 px; the synthetic products' 40 test classes, photo -> catalogue (280 photos query
40 catalogue pictures) and leave-one-out, with the same backbone at 128 px and, if given, a trained embedder.

    python experiments/bench_expansion.py --flowers ../shared/datasets/flowers17 \
        --embedder runs/quickstart/latest/embedder.pt --out experiments/results/expansion.md
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date

import torch

from common import machine, report

from lookalike.data.image_folder import image_folder
from lookalike.data.synthetic import synthetic_products
from lookalike.files import DEFAULT_CACHE_DIR
from lookalike.embedder.file import load_embedder
from lookalike.models.embedder import Embedder
from lookalike.retrieval.metrics import retrieval_metrics

SETTINGS = [("none", {}), *[(f"QE k={k}", {"qe_k": k}) for k in (1, 2, 3, 5, 10)],
            *[(f"DBA k={k}", {"dba_k": k}) for k in (1, 2, 3, 5)], ("DBA k=2 + QE k=2", {"dba_k": 2, "qe_k": 2})]


def pretrained(image_size: int) -> Embedder:
    return Embedder({"name": "tf_efficientnet_lite0", "pretrained": True}, {"embedding_size": None}, image_size)


def rows(name: str, embeddings: torch.Tensor, table, protocol: str) -> list[str]:
    out = []
    for setting, options in SETTINGS:
        m = retrieval_metrics(embeddings, table.labels, table.is_query, table.is_gallery, (1, 4), backend="faiss",
                              **options)
        out.append(f"| {name} | {protocol} | {setting} | {m['recall@1']:.4f} | {m['recall@4']:.4f} | {m['map@r']:.4f} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flowers", help="flowers17 root (one folder per class)")
    p.add_argument("--embedder", help="a trained embedder file for the synthetic products (e.g. the quickstart's)")
    p.add_argument("--cache", default=os.path.expanduser(DEFAULT_CACHE_DIR))
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    lines = [f"## Query expansion and database-side augmentation ({date.today()})", "",
             f"Machine: {machine()}", "", f"Command: `python {' '.join(sys.argv)}`", "",
             "alpha = 3 throughout. Under leave-one-out, DBA lets each query add to its neighbours' gallery "
             "vectors, which flatters DBA: judge it on photo -> catalogue.", "",
             "| embedder | protocol | post-processing | recall@1 | recall@4 | MAP@R |", "|---|---|---|---|---|---|"]
    if args.flowers:
        test = image_folder(args.flowers, train_classes=8).test
        lines += rows("pretrained Lite0, 224 px", pretrained(224).eval().embed(test.paths), test, "flowers17 09-17, LOO")
    embedders = [("pretrained Lite0, 128 px", pretrained(128).eval())]
    if args.embedder:
        embedders.append((f"trained ({os.path.basename(os.path.dirname(os.path.abspath(args.embedder)))})",
                          load_embedder(args.embedder).eval()))
    for protocol in ("photo_to_catalogue", "leave_one_out"):
        test = synthetic_products(args.cache, test_protocol=protocol).test
        for name, embedder in embedders:
            lines += rows(name, embedder.embed(test.paths), test, f"synthetic, {protocol}")
    report(lines + [""], args.out)


if __name__ == "__main__":
    main()
