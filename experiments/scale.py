"""The local-feature stage at catalogue scale: the descriptor vote index among up to a million items.

Distractor items have realistic local features without decoding millions of images: each is a real picture's
features (flowers17's 1,360 photos: no DVD cover among them) perturbed, so that
no two are alike: its positions moved by a random similarity, its RootSIFT descriptors jittered (Gaussian noise of
``--noise`` of their norm) and a quarter of them swapped for another source picture's, as many per picture as the
real ones. The 100 real DVD covers are items 0-99; the 400 phone photos (canon, droid, e63, palm) are the queries.

Stage ``votes`` measures the vote index alone, as :class:`lookalike.verification.votes.DescriptorVotes` builds and
searches it, for each index type given (FAISS factory strings; ``auto``: what :func:`vote_factory` picks for the
size) at each catalogue size: training and adding time, bytes, milliseconds per photo (its 400 descriptors voting)
and whether the photo's cover is the first candidate, among the first 5, and among the first 50 that the verified
search goes on to verify (``recall@1/@5/@50``). One line per size and type is appended to
``results/scale_runs.jsonl`` as it finishes; a size and type already there is skipped (resumable).

    python experiments/scale.py votes --dvd ../shared/datasets/dvd_covers --flowers ../shared/datasets/flowers17 \
        --items 10000 100000 --factories auto IVF4096,PQ32 --work /tmp/scale
    python experiments/scale.py --report
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from common import machine
from lookalike.data.images import load_rgb
from lookalike.verification.features import SCALE, FeatureOptions, LocalFeatures, extract
from lookalike.verification.votes import DescriptorVotes, vote_factory

RUNS = Path(__file__).parent / "results" / "scale_runs.jsonl"
CAMERAS = ("canon", "droid", "e63", "palm")
COVERS = 100
TOP = 50  # candidates the verified search verifies from the votes (its default)
CHUNK = 2048  # distractor items made and added at a time


def pool(work: Path, dvd: Path, flowers: Path, count: int) -> dict[str, list[LocalFeatures]]:
    """The real pictures' features, found once and kept in ``work``: ``sources`` (distractors are made of them),
    ``covers`` and ``photos`` (the queries, in CAMERAS order, 100 each)."""
    cache = work / f"pool{count}.npz"
    groups = {"sources": sorted(p for p in flowers.rglob("*.jpg")),
              "covers": [dvd / "reference" / f"{i:03d}.jpg" for i in range(1, COVERS + 1)],
              "photos": [dvd / c / f"{i:03d}.jpg" for c in CAMERAS for i in range(1, COVERS + 1)]}
    if not cache.is_file():
        options, arrays = FeatureOptions(count=count), {}
        for name, paths in groups.items():
            found = [extract(load_rgb(p), options) for p in paths]
            print(f"{name}: {len(found)} pictures, {sum(map(len, found))} features", flush=True)
            arrays[f"{name}_counts"] = np.array([len(f) for f in found])
            arrays[f"{name}_sizes"] = np.array([f.size for f in found])
            arrays[f"{name}_xy"] = np.concatenate([f.xy for f in found])
            arrays[f"{name}_descriptors"] = np.concatenate([f.descriptors for f in found])
        work.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **arrays)
    with np.load(cache) as z:
        arrays = {name: z[name] for name in z.files}  # each read once (an npz reads a member on every access)
    out = {}
    for name in groups:
        ends = np.cumsum(arrays[f"{name}_counts"])
        starts = ends - arrays[f"{name}_counts"]
        out[name] = [LocalFeatures(arrays[f"{name}_xy"][a:b], arrays[f"{name}_descriptors"][a:b], tuple(s))
                     for a, b, s in zip(starts, ends, arrays[f"{name}_sizes"])]
    return out


def distractor(sources: list[LocalFeatures], item: int, noise: float) -> LocalFeatures:
    """Distractor ``item``'s features, the same on every call: a source picture's, perturbed (see the module)."""
    rng = np.random.default_rng(item)
    own, other = (sources[i] for i in rng.integers(len(sources), size=2))
    d = own.descriptors.astype(np.float32)
    swap = rng.random(len(d)) < 0.25
    if len(other):
        d[swap] = other.descriptors[rng.integers(len(other), size=int(swap.sum()))]
    d += noise * np.linalg.norm(d, axis=1, keepdims=True) / np.sqrt(d.shape[1]) * rng.standard_normal(d.shape)
    d = np.clip(d, 0, None)
    d = np.minimum(np.round(d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6) * SCALE), 255)
    angle, scale = rng.uniform(-0.3, 0.3), rng.uniform(0.8, 1.2)
    turn = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    w, h = own.size
    xy = (own.xy - [w / 2, h / 2]) @ turn.T + [w / 2, h / 2] + rng.uniform(-10, 10, 2)
    return LocalFeatures(np.clip(xy, 0, None).astype(np.float32), d.astype(np.uint8), own.size)


def votes_run(data: dict, items: int, factory: str, noise: float) -> dict:
    """Build the vote index of the covers and ``items - 100`` distractors with ``factory`` and search it."""
    total = sum(map(len, data["covers"])) + round((items - COVERS) * np.mean([len(f) for f in data["sources"]]))
    factory = vote_factory(total) if factory == "auto" else factory
    votes = DescriptorVotes.new(factory)
    rng = np.random.default_rng(0)
    wanted = max(32 * votes.lists, 1 << 16)
    sample_items = rng.choice(np.arange(COVERS, items), size=min(items - COVERS, max(1, wanted // 300)),
                              replace=False)
    sample = np.concatenate([distractor(data["sources"], int(i), noise).unit_descriptors() for i in sample_items])
    start = time.perf_counter()
    votes.train(sample[:wanted])
    trained = time.perf_counter() - start
    start = time.perf_counter()
    votes.add(np.arange(COVERS), data["covers"])
    for first in range(COVERS, items, CHUNK):
        ids = np.arange(first, min(first + CHUNK, items))
        votes.add(ids, [distractor(data["sources"], int(i), noise) for i in ids])
        print(f"\r{factory}: {ids[-1] + 1} of {items} items added", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    added = time.perf_counter() - start
    ranks, times = [], []
    for n, photo in enumerate(data["photos"]):
        start = time.perf_counter()
        found = votes.candidates(photo, TOP)
        times.append(time.perf_counter() - start)
        ids = [i for i, _ in found]
        ranks.append(ids.index(n % COVERS) if n % COVERS in ids else TOP)
    ranks = np.array(ranks)
    return {"items": items, "factory": factory, "descriptors": votes.index.ntotal, "lists": votes.lists,
            "train_s": round(trained, 1), "add_s": round(added, 1), "bytes": len(votes.to_bytes()),
            "p50_ms": round(1000 * float(np.median(times)), 1), "p99_ms": round(1000 * float(np.percentile(times, 99)), 1),
            **{f"recall@{k}": round(float((ranks < k).mean()), 4) for k in (1, 5, TOP)},
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}


def report(runs: list[dict]) -> str:
    rows = ["| items | features a picture | index | lists | train s | add s | MB | p50 ms | p99 ms | recall@1 | "
            "recall@5 | recall@50 |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        rows.append(f"| {r['items']:,} | {r['count']} | {r['factory']} | {r['lists']} | {r['train_s']} | "
                    f"{r['add_s']} | {r['bytes'] / 2 ** 20:.0f} | {r['p50_ms']} | {r['p99_ms']} | {r['recall@1']} | "
                    f"{r['recall@5']} | {r[f'recall@{TOP}']} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", nargs="?", choices=["votes"])
    p.add_argument("--dvd", type=Path)
    p.add_argument("--flowers", type=Path)
    p.add_argument("--work", type=Path, default=Path("/tmp/scale"))
    p.add_argument("--items", type=int, nargs="+", default=[10_000])
    p.add_argument("--factories", nargs="+", default=["auto"])
    p.add_argument("--count", type=int, default=400, help="local features a picture")
    p.add_argument("--noise", type=float, default=0.3, help="descriptor jitter, a share of their norm")
    p.add_argument("--report", action="store_true")
    a = p.parse_args()
    if a.report or a.stage is None:
        print(report([json.loads(line) for line in RUNS.open()]))
        return
    done = {(r["items"], r["count"], r["requested"]) for r in map(json.loads, RUNS.open())} if RUNS.is_file() else set()
    data = pool(a.work, a.dvd, a.flowers, a.count)
    for items in a.items:
        for factory in a.factories:
            if (items, a.count, factory) in done:
                print(f"{items} items, {factory}: done already")
                continue
            found = votes_run(data, items, factory, a.noise)
            result = {"stage": a.stage, "requested": factory, "count": a.count, "noise": a.noise, **found,
                      "date": time.strftime("%Y-%m-%d"), "machine": machine(), "command": "python " + " ".join(sys.argv)}
            print(json.dumps(result), flush=True)
            with RUNS.open("a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
