"""What `lookalike index build` spends on one catalogue picture, stage by stage: decoding it for the embedding
(JPEG decoded at a reduced scale where the model's input allows), embedding it, decoding it again for the local
features (whole, as before, and reduced no smaller than the side they are found at, as now), and finding and
coding its local features. It says what decoding once for both would save; ``--recall SIDE`` checks that the
reduced decode costs no recall of the DVD photos.

The pictures: the 100 DVD covers and the first 100 flower photos, as they are (about 300 pixels) and resaved at a
long side of ``--side`` (default 1600; JPEG quality 90, in ``--work``), standing for a shop's product photos. Every
stage runs in this one process on one thread (torch and OpenCV), so the figures are CPU cost a picture; a build
spreads them over its loader processes and threads.

    python build_cost.py --dvd ../../shared/datasets/dvd_covers --flowers ../../shared/datasets/flowers17 \\
        --embedder /tmp/scale/lite0.pt
    python build_cost.py --recall 1600 --dvd ../../shared/datasets/dvd_covers --embedder /tmp/scale/lite0.pt
    python build_cost.py --report

Each run appends a line to results/build_cost_runs.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import record  # noqa: E402

from lookalike.catalogue.local import catalogue_codes  # noqa: E402
from lookalike.data.images import load_rgb  # noqa: E402
from lookalike.data.transforms import eval_resize  # noqa: E402
from lookalike.embedder.file import embedder_from_payload, read_embedder_file  # noqa: E402
from lookalike.verification.features import FeatureOptions, extract  # noqa: E402

RUNS = Path(__file__).parent / "results" / "build_cost_runs.jsonl"
BATCH = 32


def resaved(found: list[Path], side: int | None, folder: Path) -> list[str]:
    """The pictures resaved at a long side of ``side`` into ``folder`` (None: as they are)."""
    if side is None:
        return [str(p) for p in found]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, p in enumerate(found):
        target = folder / f"{n:03d}.jpg"
        if not target.is_file():
            with Image.open(p) as im:
                scale = side / max(im.size)
                im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)),
                                         Image.LANCZOS).save(target, quality=90)
        paths.append(str(target))
    return paths


def covers(dvd: Path) -> list[Path]:
    return sorted((dvd / "reference").glob("*.jpg"))


def timed(work, items) -> tuple[list, float]:
    """``work`` of each item; the median milliseconds an item."""
    results, times = [], []
    for item in items:
        start = time.perf_counter()
        results.append(work(item))
        times.append(time.perf_counter() - start)
    return results, 1000 * float(np.median(times))


def run(paths: list[str], embedder_file: Path, options: FeatureOptions) -> dict:
    model = embedder_from_payload(read_embedder_file(embedder_file)).eval()
    min_side = eval_resize(model.preprocessing)
    codes = catalogue_codes(paths, options, workers=1)
    small, decode_embed = timed(lambda p: load_rgb(p, min_side=min_side), paths)
    start = time.perf_counter()
    for i in range(0, len(small), BATCH):
        model.embed(small[i:i + BATCH])
    embed = 1000 * (time.perf_counter() - start) / len(small)
    whole, decode_whole = timed(load_rgb, paths)
    reduced, decode_local = timed(lambda p: load_rgb(p, max_side=options.max_side), paths)
    _, features = timed(lambda image: codes.encode(extract(image, options)), reduced)
    total = decode_embed + embed + decode_local + features
    return {"pictures": len(paths), "pixels_median": int(np.median([im.shape[0] * im.shape[1] for im in whole])),
            "decode_for_embedding_ms": round(decode_embed, 2), "embed_ms": round(embed, 2),
            "decode_for_local_whole_ms": round(decode_whole, 2), "decode_for_local_ms": round(decode_local, 2),
            "local_features_ms": round(features, 2), "total_ms": round(total, 2),
            "decode_once_saves_ms": round(min(decode_embed, decode_local), 2),
            "decode_once_saves_share": round(min(decode_embed, decode_local) / total, 3)}


def recall(dvd: Path, embedder: Path, side: int, work: Path, reduced: bool) -> dict:
    """The 100 covers resaved at ``side`` as a catalogue (`index build`'s defaults), their local features found on
    the reduced JPEG decode (``reduced``) or on the whole one (the library's decode before, put back for this
    run), and the 400 DVD photos searched in it (scale.py's ``measure``)."""
    from scale import measure

    import lookalike.catalogue.local as local
    from lookalike.catalogue.backends import build_catalogue
    from lookalike.catalogue.build import BuildOptions

    paths = resaved(covers(dvd), side, work / f"covers{side}")
    listing = work / f"covers{side}.csv"
    listing.write_text("path,label\n" + "".join(f"{p},{n + 1:03d}\n" for n, p in enumerate(paths)))
    out = work / f"covers{side}_{'reduced' if reduced else 'whole'}.lkidx"
    if not out.exists():
        decode = local.load_rgb
        if not reduced:
            local.load_rgb = lambda path, max_side=None, **kw: load_rgb(path, **kw)
        try:
            build_catalogue(out, embedder, listing, options=BuildOptions(local=FeatureOptions()))
        finally:
            local.load_rgb = decode
    found = measure(out, "faiss", embedder, dvd, 100)
    return {"decode": "reduced" if reduced else "whole", **{k: found[k] for k in (
        "recall@1", "recall@5", "recall@1_validation", "recall@1_test", "p50_ms")}}


def report(runs: list[dict]) -> str:
    runs, recalls = [r for r in runs if "total_ms" in r], [r for r in runs if "decode" in r]
    lines = ["| pictures | long side | pixels (median) | decode for the embedding ms | embed ms | decode for local "
             "features ms: whole / reduced (now) | local features ms | total ms | decoding once saves |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['pictures']} | {r['side'] or 'as they are'} | {r['pixels_median']:,} | "
                     f"{r['decode_for_embedding_ms']} | {r['embed_ms']} | {r['decode_for_local_whole_ms']} / "
                     f"{r['decode_for_local_ms']} | "
                     f"{r['local_features_ms']} | {r['total_ms']} | {r['decode_once_saves_ms']} ms "
                     f"({100 * r['decode_once_saves_share']:.1f}%) |")
    lines += ["", "| covers' long side | their local features from | recall@1 (400 photos) | validation | test | "
              "recall@5 | p50 ms |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in recalls:
        lines.append(f"| {r['side']} | the {r['decode']} decode | {r['recall@1']} | {r['recall@1_validation']} | "
                     f"{r['recall@1_test']} | {r['recall@5']} | {r['p50_ms']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dvd", type=Path)
    p.add_argument("--flowers", type=Path)
    p.add_argument("--embedder", type=Path, help="the embedder file (e.g. `lookalike pretrained`'s Lite0)")
    p.add_argument("--sides", type=int, nargs="+", default=[0, 1600], help="long sides to resave at (0: as they are)")
    p.add_argument("--work", type=Path, default=Path("/tmp/build_cost"))
    p.add_argument("--recall", type=int, metavar="SIDE",
                   help="instead: the covers resaved at SIDE searched with local features of the reduced and of "
                        "the whole decode")
    p.add_argument("--report", action="store_true")
    a = p.parse_args()
    if a.report:
        print(report([json.loads(line) for line in RUNS.open()]))
        return
    if a.recall:
        found = [recall(a.dvd.resolve(), a.embedder.resolve(), a.recall, a.work, reduced) for reduced in (False, True)]
    else:
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        sources = covers(a.dvd.resolve()) + sorted(a.flowers.resolve().rglob("*.jpg"))[:100]
        found = [{"side": side or None, **run(resaved(sources, side or None, a.work / f"side{side}"),
                                              a.embedder.resolve(), FeatureOptions())} for side in a.sides]
    for result in found:
        record(RUNS, {"side": a.recall, **result} if a.recall else result)


if __name__ == "__main__":
    main()
