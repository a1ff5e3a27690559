"""Verified matching, measured on real photos: recall@1/@5 of embedding-only search and verified search at the
default settings, recall@K of the candidate sources (embedding, descriptor votes, both), latency per photo
(embedding + local features + search, p50/p99) at K = 20/50/100, build time per picture, and bytes per item.

Data sets (each a catalogue built with ``lookalike index build``'s defaults and the pretrained Lite0 embedder):
    dvd_catalogue_only  400 DVD-cover phone photos -> the 100 references
    dvd_zero_shot       200 photos of items 051-100 -> their 50 references (no training: pretrained embedder)
    dvd_distractors     400 photos -> 100 references + N distractor pictures (augmented flowers17 photos)
    flowers17           the 720 test-class photos (09-17), each querying all the others (leave-one-out)
    watches             the synthetic watches' photos -> their catalogue pictures (lookalike demo-data)

    python experiments/bench_verify.py --dvd ../shared/datasets/dvd_covers --flowers ../shared/datasets/flowers17 \\
        --sets dvd_catalogue_only dvd_zero_shot flowers17 watches
    python experiments/bench_verify.py --dvd ../shared/datasets/dvd_covers --flowers ../shared/datasets/flowers17 \\
        --sets dvd_distractors --distractors 20000

Each set's result is appended as one JSON line to experiments/results/verify_runs.jsonl (a rerun skips sets
already there unless --again) and printed as a markdown row for experiments/results/verify.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from common import machine

from lookalike.catalogue.backends import build_catalogue
from lookalike.catalogue.build import BuildOptions
from lookalike.catalogue.file import FileCatalogue
from lookalike.catalogue.local import photo_features
from lookalike.catalogue.query import SearchOptions, search_catalogue
from lookalike.data.images import load_rgb
from lookalike.embedder.file import embedder_from_payload, read_embedder_file

CAMERAS = ("canon", "droid", "e63", "palm")
RUNS = Path(__file__).parent / "results" / "verify_runs.jsonl"


def distractor_pictures(flowers: Path, count: int, folder: Path) -> list[str]:
    """``count`` pictures made of flowers17 photos (random crop, turn, mirror, colour), written once to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(flowers.glob("*/*.jpg"))
    rng = np.random.default_rng(0)
    paths = []
    for n in range(count):
        out = folder / f"d{n:06d}.jpg"
        paths.append(str(out))
        if out.is_file():
            continue
        im = Image.open(sources[n % len(sources)]).convert("RGB")
        w, h = im.size
        s = rng.uniform(0.6, 1.0)
        x, y = rng.uniform(0, w * (1 - s)), rng.uniform(0, h * (1 - s))
        im = im.crop((int(x), int(y), int(x + w * s), int(y + h * s))).rotate(rng.uniform(-25, 25), expand=False)
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        im = ImageEnhance.Color(im).enhance(rng.uniform(0.4, 1.6))
        im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.7, 1.3))
        im.resize((288, int(288 * im.size[1] / im.size[0]))).save(out, quality=85)
    return paths


Listed = list[tuple[str, str]]  # (path, label) of each picture


def data_set(name: str, args: argparse.Namespace, work: Path) -> tuple[Listed, Listed, bool]:
    """(catalogue (path, label), queries (path, label), leave-one-out) of a set."""
    dvd = Path(args.dvd).resolve() if args.dvd else None
    if name.startswith("dvd"):
        items = range(51, 101) if name == "dvd_zero_shot" else range(1, 101)
        refs = [(str(dvd / "reference" / f"{i:03d}.jpg"), f"{i:03d}") for i in items]
        photos = [(str(dvd / c / f"{i:03d}.jpg"), f"{i:03d}") for c in CAMERAS for i in items]
        if name == "dvd_distractors":
            refs += [(p, "distractor") for p in distractor_pictures(Path(args.flowers), args.distractors,
                                                                    work / "distractors")]
        return refs, photos, False
    if name == "flowers17":
        pictures = [(str(p.resolve()), p.parent.name) for d in sorted(Path(args.flowers).iterdir())[8:] if d.is_dir()
                    for p in sorted(d.glob("*.jpg"))]
        return pictures, pictures, True
    if name == "watches":
        demo = work / "watches"
        if not (demo / "photos").is_dir():
            subprocess.run([sys.executable, "-m", "lookalike.cli", "demo-data", "--out", str(demo)], check=True)
        catalogue, photos = ([(str(p.resolve()), p.parent.name) for p in sorted((demo / folder).glob("*/*"))]
                             for folder in ("catalogue", "photos"))
        return catalogue, photos, False
    raise SystemExit(f"unknown set {name}")


def percentiles(times: list[float]) -> dict[str, float]:
    return {"p50_ms": round(1000 * float(np.percentile(times, 50)), 1),
            "p99_ms": round(1000 * float(np.percentile(times, 99)), 1)}


def run_set(name: str, args: argparse.Namespace, work: Path) -> dict:
    catalogue, queries, leave_one_out = data_set(name, args, work)
    listing = work / f"{name}.csv"
    listing.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in catalogue))
    out, timing = work / f"{name}.lkidx", work / f"{name}.build.json"
    if args.reuse and out.is_file() and timing.is_file():  # built by --build-only before: the queries alone now
        index, build_s = FileCatalogue.load(out), json.loads(timing.read_text())["build_s"]
    else:
        out.unlink(missing_ok=True)
        start = time.perf_counter()
        index = build_catalogue(out, args.embedder, listing, options=BuildOptions())
        build_s = time.perf_counter() - start
        timing.write_text(json.dumps({"build_s": build_s}))
    if args.build_only:
        return {}
    plain_s = None
    if len(catalogue) <= 1000:  # the same build without local features: what they cost per picture
        start = time.perf_counter()
        build_catalogue(work / f"{name}.plain.lkidx", args.embedder, listing, options=BuildOptions(local=None))
        plain_s = time.perf_counter() - start
    embedder = embedder_from_payload(read_embedder_file(args.embedder))
    local_meta = index.meta["local"]
    result = {"set": name, "catalogue": index.count(), "queries": len(queries), "build_s": round(build_s, 1),
              "threshold": local_meta["threshold"], "calibration_true_rate": local_meta["true_rate"],
              "bytes_per_item": round(index.local.nbytes / index.count()),
              "file_mb": round(out.stat().st_size / 2**20, 1),
              "local_ms_per_picture": None if plain_s is None else round(1000 * (build_s - plain_s) / index.count(), 1)}
    extra = 1 if leave_one_out else 0
    found: dict[str, list[list[str]]] = {}
    times: dict[str, list[float]] = {}
    sources: dict[str, dict[int, list[bool]]] = {"embedding": {}, "votes": {}, "both": {}}
    settings = {"embedding": 0, **{f"verified_K{k}": k for k in args.ks}}
    for qpath, qlabel in queries:
        photo = load_rgb(qpath)
        for setting, verify in settings.items():
            t = time.perf_counter()
            vector = embedder.embed([photo]).numpy()
            local = photo_features([photo], local_meta) if verify else None
            hits = search_catalogue(index, vector, SearchOptions(k=5 + extra, verify=verify), local)[0].hits
            times.setdefault(setting, []).append(time.perf_counter() - t)
            found.setdefault(setting, []).append([h.label for h in hits if h.path != qpath][:5])
        # candidate recall@K of each source, and of both together (K of each)
        local = photo_features([photo], local_meta)
        most = max(args.ks)
        emb = [h.label for h in index.search_vectors(vector, most + extra)[0] if h.path != qpath]
        votes = [index.item(i)["label"] for i, _ in index.vote_candidates(local[0], most + extra)
                 if index.item(i)["path"] != qpath]
        for k in args.ks:
            sources["embedding"].setdefault(k, []).append(qlabel in emb[:k])
            sources["votes"].setdefault(k, []).append(qlabel in votes[:k])
            sources["both"].setdefault(k, []).append(qlabel in emb[:k] + votes[:k])
    labels = [label for _, label in queries]
    for setting in settings:
        result[setting] = {f"r@{k}": round(float(np.mean([y in f[:k] for y, f in zip(labels, found[setting])])), 4)
                           for k in (1, 5)}
        result[setting].update(percentiles(times[setting]))
    result["candidate_recall"] = {name: {k: round(float(np.mean(v)), 4) for k, v in by_k.items()}
                                  for name, by_k in sources.items()}
    result["machine"] = machine()
    return result


def report(runs: list[dict]) -> str:
    """The markdown tables of verify.md from the runs (the last run of each set)."""
    last = {r["set"]: r for r in runs}
    lines = ["| set | catalogue | queries | embedding r@1 / r@5 | verified (K=50) r@1 / r@5 | threshold | "
             "p50 / p99 ms, embedding | p50 / p99 ms, verified K=20 / 50 / 100 |",
             "|---|---:|---:|---|---|---:|---|---|"]
    for r in last.values():
        e, v = r["embedding"], r["verified_K50"]
        ks = " / ".join(f"{r[f'verified_K{k}']['p50_ms']:.0f}-{r[f'verified_K{k}']['p99_ms']:.0f}"
                        for k in (20, 50, 100) if f"verified_K{k}" in r)
        lines.append(f"| {r['set']} | {r['catalogue']:,} | {r['queries']} | {e['r@1']:.3f} / {e['r@5']:.3f} | "
                     f"**{v['r@1']:.3f} / {v['r@5']:.3f}** | {r['threshold']} | "
                     f"{e['p50_ms']:.0f} / {e['p99_ms']:.0f} | "
                     f"{ks} |")
    lines += ["", "| set | candidates' recall@20 / 50 / 100: embedding | descriptor votes | both | bytes / item | "
              "file MB | build s | local features ms / picture |", "|---|---|---|---|---:|---:|---:|---:|"]
    for r in last.values():
        c = r["candidate_recall"]
        cells = [" / ".join(f"{c[name][k]:.3f}" for k in sorted(c[name], key=int))
                 for name in ("embedding", "votes", "both")]
        lines.append(f"| {r['set']} | {' | '.join(cells)} | {r['bytes_per_item']:,} | {r['file_mb']} | "
                     f"{r['build_s']} | "
                     f"{r.get('local_ms_per_picture')} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dvd")
    p.add_argument("--flowers")
    p.add_argument("--sets", nargs="+", default=[])
    p.add_argument("--distractors", type=int, default=20000)
    p.add_argument("--ks", nargs="+", type=int, default=[20, 50, 100])
    p.add_argument("--embedder", help="embedder file (default: lookalike pretrained, Lite0)")
    p.add_argument("--work", default="/tmp/bench_verify")
    p.add_argument("--again", action="store_true")
    p.add_argument("--build-only", action="store_true", help="build the sets' catalogues and stop (the long part "
                   "of a scale run: its queries are then timed with --reuse on an idle machine)")
    p.add_argument("--reuse", action="store_true", help="search the catalogues a --build-only run made")
    p.add_argument("--report", action="store_true", help="print the tables of the runs so far and stop")
    args = p.parse_args()
    if args.report:
        print(report([json.loads(line) for line in RUNS.open()]))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.embedder is None:
        args.embedder = str(work / "lite0.pt")
        if not Path(args.embedder).is_file():
            subprocess.run([sys.executable, "-m", "lookalike.cli", "pretrained", "--out", args.embedder], check=True)
    done = {json.loads(line)["set"] for line in RUNS.open()} if RUNS.is_file() else set()
    for name in args.sets:
        if name in done and not args.again:
            print(f"{name}: in {RUNS} already (--again to rerun)")
            continue
        result = run_set(name, args, work)
        if not result:
            continue
        result["command"] = "python " + " ".join(sys.argv)
        with RUNS.open("a") as f:
            f.write(json.dumps(result) + "\n")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
