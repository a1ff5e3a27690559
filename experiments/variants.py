"""Look-alike variants on the DVD covers: verified search and duplicate finding when a catalogue holds siblings.

For each of the 100 covers of ``dvd_covers/reference`` it writes two variants that are distinct items (products of
their own): ``NNN~hue`` (the cover's hue turned by 60-120 degrees; a black and white cover, 073, whose hue turn
changes nothing, a warm colour cast instead) and ``NNN~region`` (even covers: the top third,
where titles sit, recoloured; odd covers: a 35% x 40% patch of another cover pasted at a random place); and true
duplicates of 90 covers (the same product: label ``NNN``): 001-030 re-encoded (JPEG quality 35), 031-060 resized
to half, 061-090 cropped (6% off each side). Catalogues, each built with `lookalike index build`'s defaults and
the pretrained Lite0:

    plain       the 100 covers
    variants    the 100 covers and their 200 variants
    duplicates  the covers, their variants and the 90 true duplicates

Measured: verified recall@1 of the 400 phone photos (canon, droid, e63, palm) on ``plain`` and ``variants`` (right:
the first result has the photo's cover's label; "variant first": the first result is a variant of the right cover),
p50 latency per photo on each, and `lookalike duplicates --json` on ``duplicates`` with no threshold: true-duplicate
pairs found and confirmed, variant pairs confirmed (must be none).

    python experiments/variants.py --dvd ../shared/datasets/dvd_covers --baseline ../before/src
                                                   # appends to results/variants_runs.jsonl
    python experiments/variants.py --report                                   # the tables of results/variants.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from common import machine

RUNS = Path(__file__).parent / "results" / "variants_runs.jsonl"
CAMERAS = ("canon", "droid", "e63", "palm")


def read(path: Path) -> np.ndarray:
    found = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if found is None:
        raise SystemExit(f"cannot read {path}")
    return found


def hue_turned(picture: np.ndarray, degrees: float) -> np.ndarray:
    hsv = cv2.cvtColor(picture, cv2.COLOR_BGR2HSV)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(degrees / 2)) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


GREY = 2.0  # a picture whose mean chroma (Lab) is below this has no hue to turn: it gets a colour cast instead


def recoloured(picture: np.ndarray, degrees: float) -> np.ndarray:
    """The recoloured variant: the hue turned, or for a black and white picture (a hue turn changes no pixel of
    it: cover 073) a warm colour cast, as a tinted edition."""
    lab = cv2.cvtColor(picture.astype(np.float32) / 255, cv2.COLOR_BGR2LAB)
    if float(np.linalg.norm(lab[..., 1:], axis=-1).mean()) >= GREY:
        return hue_turned(picture, degrees)
    return np.clip(picture.astype(np.float32) * [0.78, 0.93, 1.12], 0, 255).astype(np.uint8)


def region_replaced(picture: np.ndarray, other: np.ndarray, index: int, rng: np.random.Generator) -> np.ndarray:
    out = picture.copy()
    h, w = out.shape[:2]
    if index % 2 == 0:  # the title area recoloured
        band = out[: h // 3]
        out[: h // 3] = hue_turned(band, rng.uniform(70, 110))
        hsv = cv2.cvtColor(out[: h // 3], cv2.COLOR_BGR2HSV).astype(np.float32)
        hsv[..., 1] = np.clip(hsv[..., 1] * 1.3 + 40, 0, 255)
        out[: h // 3] = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    else:  # another cover's patch pasted
        ph, pw = int(0.4 * h), int(0.35 * w)
        y, x = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
        source = cv2.resize(other, (w, h))
        out[y:y + ph, x:x + pw] = source[y:y + ph, x:x + pw]
    return out


def make_pictures(dvd: Path, folder: Path) -> dict[str, list[tuple[str, str]]]:
    """The catalogues' rows (path, label), writing the variants and duplicates into ``folder`` once."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    covers = [dvd / "reference" / f"{i:03d}.jpg" for i in range(1, 101)]
    originals = [(str(p.resolve()), p.stem) for p in covers]
    variants, duplicates = [], []
    for index, path in enumerate(covers):
        picture = read(path)
        hue, region = folder / f"{path.stem}~hue.jpg", folder / f"{path.stem}~region.jpg"
        turn, other = rng.uniform(60, 120), covers[(index + 37) % len(covers)]
        if not hue.exists():
            cv2.imwrite(str(hue), recoloured(picture, turn), [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not region.exists():
            cv2.imwrite(str(region), region_replaced(picture, read(other), index, np.random.default_rng(index)),
                        [cv2.IMWRITE_JPEG_QUALITY, 92])
        variants += [(str(hue), f"{path.stem}~hue"), (str(region), f"{path.stem}~region")]
        if index < 90:
            kind = ("reencoded", "resized", "cropped")[index // 30]
            copy = folder / f"{path.stem}.{kind}.jpg"
            if not copy.exists():
                h, w = picture.shape[:2]
                if kind == "reencoded":
                    cv2.imwrite(str(copy), picture, [cv2.IMWRITE_JPEG_QUALITY, 35])
                elif kind == "resized":
                    cv2.imwrite(str(copy), cv2.resize(picture, (w // 2, h // 2), interpolation=cv2.INTER_AREA),
                                [cv2.IMWRITE_JPEG_QUALITY, 92])
                else:
                    cut = picture[int(0.06 * h): h - int(0.06 * h), int(0.06 * w): w - int(0.06 * w)]
                    cv2.imwrite(str(copy), cut, [cv2.IMWRITE_JPEG_QUALITY, 92])
            duplicates.append((str(copy.resolve()), path.stem))
    return {"plain": originals, "variants": originals + variants, "duplicates": originals + variants + duplicates}


def build(name: str, rows: list[tuple[str, str]], embedder: str, work: Path) -> Path:
    listing, out = work / f"{name}.csv", work / f"{name}.lkidx"
    listing.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    out.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "lookalike.cli", "index", "build", "--embedder", embedder, "--images",
                    str(listing), "--out", str(out)], check=True)
    return out


def searched(index_path: Path, embedder: str, photos: list[tuple[Path, str]]) -> dict:
    """Verified search (the defaults) of every photo: recall@1, the first result a variant of the right cover,
    p50 ms per photo (decoding, embedding, features, search, verification)."""
    from lookalike.catalogue.file import FileCatalogue
    from lookalike.catalogue.local import photo_features
    from lookalike.catalogue.query import SearchOptions, search_catalogue
    from lookalike.data.images import load_rgb
    from lookalike.embedder.file import embedder_from_payload, read_embedder_file

    index = FileCatalogue.load(index_path)
    model = embedder_from_payload(read_embedder_file(embedder))
    firsts, times = [], []
    for path, label in photos:
        start = time.perf_counter()
        photo = load_rgb(path)
        hits = search_catalogue(index, model.embed([photo]).numpy(), SearchOptions(k=5),
                                photo_features([photo], index.meta["local"]))[0].hits
        times.append(time.perf_counter() - start)
        firsts.append((label, hits[0].label, hits[0].verified, getattr(hits[0], "lookalike_of", None)))
    right = [first == label for label, first, _, _ in firsts]
    sibling = [first != label and first.split("~")[0] == label for label, first, _, _ in firsts]
    return {"r@1": round(float(np.mean(right)), 4), "variant_first": round(float(np.mean(sibling)), 4),
            "p50_ms": round(1000 * float(np.median(times)), 1),
            "p99_ms": round(1000 * float(np.percentile(times, 99)), 1),
            "meta": index.meta["local"]}


def duplicates(index_path: Path, rows: list[tuple[str, str]]) -> dict:
    """`lookalike duplicates --json` with no threshold: true-duplicate pairs confirmed, variant pairs confirmed."""
    done = subprocess.run([sys.executable, "-m", "lookalike.cli", "duplicates", "--index", str(index_path), "--json"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-500:]}
    groups = json.loads(done.stdout)
    index_path.with_suffix(".duplicates.json").write_text(done.stdout)  # to look at
    confirmed = set()
    for group in groups:
        members = group["items"] if isinstance(group, dict) else group
        if isinstance(group, dict) and group.get("kind") != "duplicates":
            continue
        kept = [m["path"] for m in members if m.get("verified", True)]
        confirmed |= {frozenset(p) for p in itertools.combinations(kept, 2)}
    label = dict(rows)
    true_pairs = {frozenset((p, q)) for (p, a), (q, b) in itertools.combinations(rows, 2) if a == b}
    variant = [pair for pair in confirmed if len({label[p].split("~")[0] for p in pair}) == 1
               and len({label[p] for p in pair}) == 2]
    print("variant pairs confirmed:", sorted(" ~ ".join(sorted(label[p] for p in pair)) for pair in variant))
    return {"true_pairs": len(true_pairs), "true_found": len(true_pairs & confirmed),
            "variant_pairs_confirmed": len(variant), "groups": len(groups),
            "other_pairs_confirmed": len(confirmed - true_pairs) - len(variant)}


def report(runs: list[dict]) -> str:
    lines = ["| run | plain r@1 | plain p50 ms | variants r@1 | variant first | variants p50 ms | true duplicate "
             "pairs confirmed | variant pairs confirmed | thresholds |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for run in runs:
        d = run.get("duplicates", {})
        lines.append(f"| {run['label']} ({run['date']}) | {run['plain']['r@1']:.3f} | {run['plain']['p50_ms']:.0f} | "
                     f"{run['variants']['r@1']:.3f} | {run['variants']['variant_first']:.3f} | "
                     f"{run['variants']['p50_ms']:.0f} | "
                     + (f"{d['true_found']} / {d['true_pairs']} | {d['variant_pairs_confirmed']}" if "true_found" in d
                        else f"({d.get('error', 'not run')[:80]}) | -")
                     + f" | {run['variants']['meta'].get('threshold')} inliers |")
    return "\n".join(lines)


def side_by_side(index: Path, embedder: str, photos: list[tuple[Path, str]], baseline: str, rounds: int = 2) -> dict:
    """The same searches of ``index`` timed by this code and by the code at ``baseline`` (a ``src`` folder of
    another checkout), each in its own process, alternately ``rounds`` times: p50 ms and recall@1 of each."""
    import os

    found: dict[str, list[dict]] = {"this code": [], "baseline": []}
    for _ in range(rounds):
        for name, path in (("this code", None), ("baseline", baseline)):
            env = {**os.environ, **({"PYTHONPATH": path} if path else {})}
            done = subprocess.run([sys.executable, __file__, "--time", str(index), "--embedder", embedder, "--dvd",
                                   str(photos[0][0].parents[1])], capture_output=True, text=True, env=env, check=True)
            found[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {name: {"p50_ms": round(float(np.median([r["p50_ms"] for r in runs])), 1), "r@1": runs[0]["r@1"]}
            for name, runs in found.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", help="a src folder of another checkout: the plain catalogue's searches are timed "
                   "with it and with this code alternately in one run (the latency comparison)")
    p.add_argument("--time", type=Path, help=argparse.SUPPRESS)  # one process's timing of an index (side_by_side)
    p.add_argument("--dvd", type=Path)
    p.add_argument("--work", type=Path, default=Path("/tmp/variants"))
    p.add_argument("--embedder", help="embedder file (default: lookalike pretrained, Lite0)")
    p.add_argument("--label", default="lookalike", help="what this run measures (the code's state)")
    p.add_argument("--report", action="store_true")
    a = p.parse_args()
    if a.report:
        print(report([json.loads(line) for line in RUNS.open()]))
        return
    if a.time:
        timed = searched(a.time, a.embedder, [(a.dvd / c / f"{i:03d}.jpg", f"{i:03d}") for c in CAMERAS
                                             for i in range(1, 101)])
        print(json.dumps({"p50_ms": timed["p50_ms"], "r@1": timed["r@1"]}))
        return
    a.work.mkdir(parents=True, exist_ok=True)
    embedder = a.embedder or str(a.work / "lite0.pt")
    if not Path(embedder).is_file():
        subprocess.run([sys.executable, "-m", "lookalike.cli", "pretrained", "--out", embedder], check=True)
    rows = make_pictures(a.dvd, a.work / "pictures")
    photos = [(a.dvd / c / f"{i:03d}.jpg", f"{i:03d}") for c in CAMERAS for i in range(1, 101)]
    result = {"label": a.label, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "command": "python " + " ".join(sys.argv)}
    for name in ("plain", "variants"):
        result[name] = searched(build(name, rows[name], embedder, a.work), embedder, photos)
        print(name, json.dumps(result[name]))
    result["duplicates"] = duplicates(build("duplicates", rows["duplicates"], embedder, a.work), rows["duplicates"])
    print("duplicates", json.dumps(result["duplicates"]))
    if a.baseline:
        result["side_by_side"] = side_by_side(a.work / "plain.lkidx", embedder, photos, a.baseline)
        print("side by side", json.dumps(result["side_by_side"]))
    with RUNS.open("a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
