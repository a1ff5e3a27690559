"""Benchmark: the shop's own photos teach the embedder (issue 44), on the DVD covers.

Protocol (`../shared/datasets/dvd_covers`): the catalogue is all 100 references; the unlabeled pool is the
`canon` and `droid` photos of covers 001-050 (their labels are given to `lookalike harvest` only to measure its
precision, never to judge); the test photos are `e63` and `palm` of all 100 covers. Stages (each appends its
results to `experiments/results/learn_runs.jsonl`, one line a run, and is skipped when its line is there):

- harvest: `lookalike index build` with the pretrained Lite0 embedder (local features on), then `lookalike harvest`
  over the pool: yield and precision. The margin is the catalogue's calibrated threshold (photos made of the
  catalogue pictures), chosen without the test photos.
- pretrained / shop_photos / catalogue_only: embedding-only recall@1/@5/@20 of the test photos, "seen" (covers
  001-050, whose harvested photos trained) and "unseen" (051-100); verified recall@1 (a catalogue built with the
  embedder, verified search); the run's epochs and exported WiSE-FT alpha. shop_photos: `python train.py
  experiment=shop_photos data.feedback=<harvest>`; catalogue_only: `experiment=catalogue_only` (the stopping and
  export rules on a validation that cannot tell).
- boxes: the box model trained on composites only vs with the harvested boxes (`data.feedback=`), IoU of its boxes
  on the test photos against the outlines verification finds there (pretrained catalogue, first result verified
  and right).
- flowers: the 17 flower classes' first pictures as the catalogue, the other photos of classes 01-08 as the pool:
  what the harvest keeps where there is no print.
- quickstart: `python train.py seed=S` (the synthetic quickstart at its defaults): epochs run, alpha exported, test
  recall@1.

    python experiments/learn.py --root ../shared/datasets/dvd_covers --flowers ../shared/datasets/flowers17 \
        --work /tmp/learn-bench --seeds 0 1 2
    python experiments/learn.py --work /tmp/learn-bench --report --out experiments/results/learn.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from common import machine, report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RUNS = HERE / "results" / "learn_runs.jsonl"
POOL, TEST = ("canon", "droid"), ("e63", "palm")
KS = (1, 5, 20)


def lookalike(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "lookalike"), *args], check=True, cwd=REPO)


def done() -> dict[str, dict]:
    runs = {}
    if RUNS.is_file():
        for line in RUNS.read_text().splitlines():
            entry = json.loads(line)
            runs[entry["run"]] = entry
    return runs


def record(entry: dict) -> None:
    entry = {**entry, "date": str(date.today()), "machine": machine()}
    with open(RUNS, "a") as f:
        f.write(json.dumps(entry) + "\n")
    print(json.dumps(entry))


def write_tables(root: Path, work: Path) -> None:
    """catalog.csv (references), manifest.csv (references train; test photos query the references), pool.csv."""
    refs = [(root / "reference" / f"{i:03d}.jpg", f"{i:03d}") for i in range(1, 101)]
    (work / "catalog.csv").write_text("path,label\n" + "".join(f"{p},{n}\n" for p, n in refs))
    rows = ["path,label,split,role"]
    for path, name in refs:
        rows += [f"{path},{name},train,gallery", f"{path},{name},test,gallery"]
        rows += [f"{root / camera / f'{name}.jpg'},{name},test,query" for camera in TEST]
    (work / "manifest.csv").write_text("\n".join(rows) + "\n")
    pool = [f"{root / camera / f'{i:03d}.jpg'},{i:03d}" for i in range(1, 51) for camera in POOL]
    (work / "pool.csv").write_text("path,label\n" + "\n".join(pool) + "\n")


def test_photos(root: Path) -> list[tuple[str, str]]:
    return [(str(root / camera / f"{i:03d}.jpg"), f"{i:03d}") for i in range(1, 101) for camera in TEST]


HALVES = (("seen", lambda n: int(n) <= 50), ("unseen", lambda n: int(n) > 50))  # covers 001-050 were harvested


def halves(right_at: list[int], labels: list[str]) -> dict[str, dict[str, float]]:
    """recall@k of the seen (001-050) and unseen (051-100) test photos from each photo's rank of its cover."""
    out = {}
    for half, keep in HALVES:
        ranks = [r for r, n in zip(right_at, labels) if keep(n)]
        out[half] = {f"recall@{k}": float(np.mean([r < k for r in ranks])) for k in KS}
    return out


def searcher(index_file: Path, embedder_file: str, work: Path):
    """Verified search of a catalogue with its embedder (a harvester's search: every candidate, in order)."""
    from lookalike.catalogue.backends import open_catalogue
    from lookalike.catalogue.harvest import Harvester
    from lookalike.data.feedback import FeedbackLog
    from lookalike.embedder.file import load_embedder

    return Harvester(open_catalogue(index_file, "faiss", None), load_embedder(embedder_file).eval(),
                     FeedbackLog(work / "unused"))


def embedding_only(embedder_file: str, root: Path) -> dict[str, dict[str, float]]:
    from lookalike.embedder.file import load_embedder

    embedder = load_embedder(embedder_file)
    photos = test_photos(root)
    refs = embedder.embed([str(root / "reference" / f"{i:03d}.jpg") for i in range(1, 101)]).numpy()
    queries = embedder.embed([p for p, _ in photos]).numpy()
    order = np.argsort(-(queries @ refs.T), axis=1)
    right_at = [int(np.flatnonzero(order[q] == int(n) - 1)[0]) for q, (_, n) in enumerate(photos)]
    return halves(right_at, [n for _, n in photos])


def verified(embedder_file: str, root: Path, work: Path, name: str) -> dict[str, float]:
    """Verified recall@1 of the test photos, seen and unseen, on a catalogue built with ``embedder_file``."""
    from lookalike.data.images import load_rgb

    index_file = work / f"{name}.lkidx"
    if not index_file.exists():
        lookalike("index", "build", "--embedder", embedder_file, "--images", str(work / "catalog.csv"),
                  "--out", str(index_file))
    search = searcher(index_file, embedder_file, work).search
    photos = test_photos(root)
    firsts = [search(load_rgb(p))[0].label for p, _ in photos]
    return {half: float(np.mean([f == n for f, (_, n) in zip(firsts, photos) if keep(n)])) for half, keep in HALVES}


def stage_harvest(root: Path, work: Path) -> dict:
    if not (work / "pretrained.pt").exists():
        lookalike("pretrained", "--out", str(work / "pretrained.pt"))
    if not (work / "pretrained.lkidx").exists():
        lookalike("index", "build", "--embedder", str(work / "pretrained.pt"), "--images", str(work / "catalog.csv"),
                  "--out", str(work / "pretrained.lkidx"))
    started = time.time()
    lookalike("harvest", "--index", str(work / "pretrained.lkidx"), "--photos", str(work / "pool.csv"),
              "--into", str(work / "harvest"))
    entries = [json.loads(line) for line in (work / "harvest" / "harvest.jsonl").read_text().splitlines()]
    truth = {str(root / c / f"{i:03d}.jpg"): f"{i:03d}" for i in range(1, 51) for c in POOL}
    kept = [e for e in entries if e["verdict"] == "kept"]
    return {"run": "harvest", "photos": len(entries), "kept": len(kept),
            "right": sum(e["label"] == truth[e["path"]] for e in kept),
            "verdicts": {v: sum(e["verdict"] == v for e in entries) for v in {e["verdict"] for e in entries}},
            "products": len({e["label"] for e in kept}), "seconds": round(time.time() - started, 1)}


def train(work: Path, name: str, seed: int, overrides: list[str]) -> tuple[dict, str]:
    out = work / f"{name}-seed{seed}"
    command = ["train.py", *overrides, f"seed={seed}", "logger=csv", "eval.before=false", "eval.ks=[1,5]",
               f"paths.cache_dir={work / 'cache'}", f"hydra.run.dir={out}"]
    started = time.time()
    if not (out / "metrics.json").exists():
        subprocess.run([sys.executable, *command], check=True, cwd=REPO)
    metrics = json.loads((out / "metrics.json").read_text())
    history = _epochs(out)
    selection = metrics.get("selection") or {}
    run = {"minutes": round((time.time() - started) / 60, 1), "epochs": history, "alpha": selection.get("alpha"),
           "best_alpha": selection.get("best_alpha"),
           "validation": {a: m.get(selection.get("metric", "recall@1")) for a, m in
                          (selection.get("validation") or {}).items()},
           "test_report": metrics["test"], "command": "python " + " ".join(command)}
    return run, str(out / "embedder.pt")


def _epochs(out: Path) -> int:
    """Epochs the run trained (validations in its CSV log)."""
    import csv

    files = sorted(out.rglob("metrics.csv"))
    if not files:
        return 0
    with open(files[-1]) as f:
        return len({row["epoch"] for row in csv.DictReader(f) if row.get("epoch") and any(
            k.startswith("val/") and row[k] for k in row)})


def stage_model(root: Path, work: Path, name: str, seed: int | None, overrides: list[str]) -> dict:
    if seed is None:
        embedder, run = str(work / "pretrained.pt"), {}
    else:
        run, embedder = train(work, name, seed, overrides)
    return {"run": f"{name}" + ("" if seed is None else f"-seed{seed}"), "model": name, "seed": seed, **run,
            "embedding": embedding_only(embedder, root),
            "verified_recall@1": verified(embedder, root, work, name if seed is None else f"{name}-seed{seed}")}


def stage_boxes(root: Path, work: Path, seed: int) -> dict:
    """The box model with and without the harvested boxes, IoU against verified outlines on the test photos."""
    from lookalike.boxes.finder import BoxFinder
    from lookalike.data.images import load_rgb

    search = searcher(work / "pretrained.lkidx", str(work / "pretrained.pt"), work).search
    outlines = {}
    for path, name in test_photos(root):
        photo = load_rgb(path)
        first = search(photo)[0]
        if first.verified and first.label == name:
            h, w = photo.shape[:2]
            quad = np.asarray(first.quad) * [w, h]
            outlines[path] = (photo, np.r_[quad.min(0), quad.max(0)].clip(0, [w, h, w, h]))
    common = ["experiment=box", "data=manifest", f"data.root={work / 'manifest.csv'}", "box.samples_per_epoch=1024",
              "trainer.max_epochs=4"]
    result = {"run": f"boxes-seed{seed}", "seed": seed, "outlines": len(outlines)}
    for arm, extra in (("composites", []), ("with_harvested", [f"data.feedback={work / 'harvest' / 'feedback.csv'}"])):
        out = work / f"box-{arm}-seed{seed}"
        if not (out / "box.pt").exists():
            subprocess.run([sys.executable, "train.py", *common, *extra, f"seed={seed}", "logger=csv",
                            f"hydra.run.dir={out}"], check=True, cwd=REPO)
        finder = BoxFinder.load(out / "box.pt")
        ious = []
        for photo, (x0, y0, x1, y1) in outlines.values():
            [((x, y, bw, bh), _)] = finder.find([photo])
            ix = max(0.0, min(x1, x + bw) - max(x0, x))
            iy = max(0.0, min(y1, y + bh) - max(y0, y))
            inter = ix * iy
            ious.append(inter / ((x1 - x0) * (y1 - y0) + bw * bh - inter))
        result[arm] = {"iou": float(np.mean(ious)), "iou>=0.5": float(np.mean(np.array(ious) >= 0.5))}
    return result


def stage_flowers(flowers: Path, work: Path) -> dict:
    classes = sorted(p for p in flowers.iterdir() if p.is_dir())
    files = {c.name: sorted(c.glob("*.jpg")) for c in classes}
    (work / "flowers_catalog.csv").write_text("path,label\n" + "".join(f"{f[0]},{c}\n" for c, f in files.items()))
    pool = [f"{p},{c}" for c, f in files.items() if int(c[:2]) <= 8 for p in f[1:]]
    (work / "flowers_pool.csv").write_text("path,label\n" + "\n".join(pool) + "\n")
    index = work / "flowers.lkidx"
    if not index.exists():
        lookalike("index", "build", "--embedder", str(work / "pretrained.pt"), "--images",
                  str(work / "flowers_catalog.csv"), "--out", str(index))
    lookalike("harvest", "--index", str(index), "--photos", str(work / "flowers_pool.csv"),
              "--into", str(work / "flowers_harvest"))
    entries = [json.loads(line) for line in (work / "flowers_harvest" / "harvest.jsonl").read_text().splitlines()]
    truth = dict(line.rsplit(",", 1) for line in pool)
    kept = [e for e in entries if e["verdict"] == "kept"]
    return {"run": "flowers", "photos": len(entries), "kept": len(kept),
            "right": sum(e["label"] == truth[e["path"]] for e in kept)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, help="dvd_covers folder")
    p.add_argument("--flowers", type=Path, help="flowers17 folder")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--stages", nargs="+", default=["harvest", "pretrained", "shop_photos", "flowers",
                                                    "catalogue_only", "boxes", "quickstart"])
    p.add_argument("--report", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    if a.report:
        return write_report(a.out)
    a.work.mkdir(parents=True, exist_ok=True)
    root = a.root.resolve()
    write_tables(root, a.work)
    manifest = f"data.root={a.work / 'manifest.csv'}"
    plans = {
        "shop_photos": ["experiment=shop_photos", manifest, f"data.feedback={a.work / 'harvest' / 'feedback.csv'}"],
        "catalogue_only": ["experiment=catalogue_only", manifest],
    }
    for stage in a.stages:
        seeds = a.seeds if stage in ("shop_photos", "catalogue_only", "boxes", "quickstart") else [None]
        for seed in seeds:
            name = stage if seed is None else f"{stage}-seed{seed}"
            if name in done():
                continue
            if stage == "harvest":
                record(stage_harvest(root, a.work))
            elif stage == "pretrained":
                record(stage_model(root, a.work, "pretrained", None, []))
            elif stage in plans:
                record(stage_model(root, a.work, stage, seed, plans[stage]))
            elif stage == "boxes":
                record(stage_boxes(root, a.work, seed))
            elif stage == "flowers":
                record(stage_flowers(a.flowers.resolve(), a.work))
            elif stage == "quickstart":
                run, _ = train(a.work, "quickstart", seed, [])
                record({"run": name, "model": "quickstart", "seed": seed, **run})


def write_report(out: str | None) -> None:
    runs = done()
    lines = [f"## {date.today()}: learning from the shop's own photos (DVD covers)", ""]
    harvest = runs.get("harvest")
    if harvest:
        lines += [f"Machine: {harvest['machine']}  ",
                  "Command: `python experiments/learn.py --root ../shared/datasets/dvd_covers --flowers "
                  "../shared/datasets/flowers17 --work /tmp/learn-bench --seeds 0 1 2` (resumable; results per run "
                  "in `experiments/results/learn_runs.jsonl`)", "",
                  f"**Harvest** (pretrained Lite0 catalogue of the 100 covers; pool: canon + droid photos of covers "
                  f"001-050): kept {harvest['kept']} of {harvest['photos']} photos (yield "
                  f"{harvest['kept'] / harvest['photos']:.2f}) of {harvest['products']} covers, precision "
                  f"{harvest['right'] / max(harvest['kept'], 1):.3f} ({harvest['right']}/{harvest['kept']}); verdicts "
                  f"{harvest['verdicts']}; {harvest['seconds']} s.", ""]
    flowers = runs.get("flowers")
    if flowers:
        lines += [f"**Flowers17** (17 first pictures as the catalogue, {flowers['photos']} photos of classes 01-08 "
                  f"as the pool): kept {flowers['kept']} ({flowers['right']} right).", ""]
    lines += ["| model | seen r@1 | seen r@5 | seen r@20 | unseen r@1 | unseen r@5 | unseen r@20 | verified r@1 "
              "seen | verified r@1 unseen | epochs | alpha | min/run |", "|---|" + "---:|" * 11]
    for model in ("pretrained", "catalogue_only", "shop_photos"):
        group = [r for r in runs.values() if r.get("model") == model and "embedding" in r]
        if not group:
            continue

        def cell(get) -> str:
            values = [get(r) for r in group]
            return f"{values[0]:.3f}" if len(values) == 1 else \
                f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

        cells = [cell(lambda r, h=h, k=k: r["embedding"][h][f"recall@{k}"]) for h in ("seen", "unseen") for k in KS]
        cells += [cell(lambda r, h=h: r["verified_recall@1"][h]) for h in ("seen", "unseen")]
        trained = [r for r in group if r.get("seed") is not None]
        cells += [", ".join(str(r["epochs"]) for r in trained) or "-",
                  ", ".join(f"{r['alpha']:g}" for r in trained if r.get("alpha") is not None) or "-",
                  f"{statistics.mean(r['minutes'] for r in trained):.1f}" if trained else "-"]
        lines.append(f"| {model} ({len(group)} run{'s' * (len(group) > 1)}) | " + " | ".join(cells) + " |")
    boxes = [r for r in runs.values() if r["run"].startswith("boxes")]
    if boxes:
        lines += ["", "| box model | mean IoU vs verified outlines | IoU >= 0.5 | photos |", "|---|---:|---:|---:|"]
        for arm in ("composites", "with_harvested"):
            lines.append(f"| {arm} | {statistics.mean(r[arm]['iou'] for r in boxes):.3f} | "
                         f"{statistics.mean(r[arm]['iou>=0.5'] for r in boxes):.3f} | {boxes[0]['outlines']} |")
    quick = [r for r in runs.values() if r.get("model") == "quickstart"]
    if quick:
        lines += ["", "| quickstart seed | epochs (of 8) | alpha exported (best) | validation MAP@R: start -> exported "
                  "| test recall@1 |", "|---|---:|---:|---:|---:|"]
        for r in quick:
            test = list(r["test_report"].values())[-1]
            exported = r["validation"][f"{r['alpha']:g}"]
            lines.append(f"| {r['seed']} | {r['epochs']} | {r['alpha']:g} ({r['best_alpha']:g}) | "
                         f"{r['validation']['0']:.3f} -> {exported:.3f} | {test['recall@1']:.3f} |")
    report(lines, out)


if __name__ == "__main__":
    main()
