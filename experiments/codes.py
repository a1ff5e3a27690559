"""How many bytes a stored descriptor needs: the DVD photos matched against every cover with descriptors kept whole
(RootSIFT, 128 bytes) and as codes of ``dims`` (:class:`lookalike.verification.codes.DescriptorCodes`, trained on
the catalogue's pictures: the 100 covers, as `lookalike index build` trains them).

Each of the 400 phone photos is verified against all 100 covers (ratio test, USAC fit: no votes, no embedding, so
only the descriptors differ): whether its own cover gets the most inliers (top-1), whether it reaches 12 inliers,
the median inliers of its own cover, the most inliers of any wrong cover (p99, max) and how many wrong covers reach
the 8 ratio-test matches that start a fit (the work a search spends on them), at each ratio of Lowe's test given.
Covers 1-50 are the validation half, where the default is chosen (the fewest dimensions whose top-1 and share of
photos at 12 inliers equal whole RootSIFT's at Lowe's 0.8; the ratio is then chosen in the whole verified search,
``scale.py measure --ratio``), 51-100 the test half, reported untouched. One line per setting is appended to ``results/codes_runs.jsonl``; a setting already there is skipped.

    python experiments/codes.py --dvd ../shared/datasets/dvd_covers --dims 64 32 24 16 --ratios 0.8 0.7
    python experiments/codes.py --report
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from common import record
from lookalike.data.images import load_rgb
from lookalike.verification.codes import DescriptorCodes
from lookalike.verification.features import LocalFeatures, extract
from lookalike.verification.matching import MIN_FIT, VerifyOptions, verify

RUNS = Path(__file__).parent / "results" / "codes_runs.jsonl"
CAMERAS = ("canon", "droid", "e63", "palm")
COVERS = 100
ENOUGH = 12  # inliers: what the calibrated thresholds of the DVD catalogue come to


def features(dvd: Path) -> tuple[list[LocalFeatures], list[LocalFeatures]]:
    covers = [extract(load_rgb(dvd / "reference" / f"{i:03d}.jpg")) for i in range(1, COVERS + 1)]
    photos = [extract(load_rgb(dvd / c / f"{i:03d}.jpg")) for c in CAMERAS for i in range(1, COVERS + 1)]
    return covers, photos


def run(covers: list[LocalFeatures], photos: list[LocalFeatures], dims: int | None, ratio: float) -> dict:
    """Every photo against every cover with descriptors whole (``dims`` None) or as codes of ``dims``, Lowe's
    test at ``ratio``."""
    start = time.perf_counter()
    if dims is not None:
        codes = DescriptorCodes.train(covers, dims, sum(map(len, covers)))
        covers, photos = [codes.encode(f) for f in covers], [codes.encode(f) for f in photos]
    own, wrong, fits = [], [], []
    for n, photo in enumerate(photos):
        verdicts = verify(photo, covers, VerifyOptions(ratio=ratio))
        inliers = np.array([v.inliers for v in verdicts])
        own.append(inliers[n % COVERS])
        wrong.append(np.delete(inliers, n % COVERS).max())
        fits.append(sum(v.matches >= MIN_FIT for j, v in enumerate(verdicts) if j != n % COVERS))
        print(f"\r{dims or 'whole'}: {n + 1} of {len(photos)} photos", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    own, wrong, fits = np.array(own), np.array(wrong), np.array(fits)
    validation = np.tile(np.arange(COVERS) < COVERS // 2, len(CAMERAS))
    out = {"dims": dims, "bytes": dims or 128, "ratio": ratio, "seconds": round(time.perf_counter() - start, 1)}
    for name, rows in (("validation", validation), ("test", ~validation)):
        out[name] = {"top1": round(float((own[rows] > wrong[rows]).mean()), 4),
                     f"own>={ENOUGH}": round(float((own[rows] >= ENOUGH).mean()), 4),
                     "own_median": float(np.median(own[rows])), "wrong_p99": float(np.percentile(wrong[rows], 99)),
                     "wrong_max": int(wrong[rows].max()), "wrong_fits": round(float(fits[rows].mean()), 2)}
    return out


def report(runs: list[dict]) -> str:
    rows = ["| descriptor | bytes | ratio | half | top-1 by inliers | own cover >= 12 inliers | own median | "
            "wrong p99 | wrong max | wrong covers fitted a photo |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(runs, key=lambda r: (-r["bytes"], -r["ratio"])):
        for half in ("validation", "test"):
            h = r[half]
            rows.append(f"| {'RootSIFT whole' if r['dims'] is None else 'codes'} | {r['bytes']} | {r['ratio']} | "
                        f"{half} | {h['top1']} | {h[f'own>={ENOUGH}']} | {h['own_median']} | {h['wrong_p99']:.1f} | "
                        f"{h['wrong_max']} | {h['wrong_fits']} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dvd", type=Path)
    p.add_argument("--dims", type=int, nargs="+", default=[64, 32, 24, 16])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.8, 0.7])
    p.add_argument("--report", action="store_true")
    a = p.parse_args()
    runs = [json.loads(line) for line in RUNS.open()] if RUNS.is_file() else []
    if a.report:
        print(report(runs))
        return
    covers, photos = features(a.dvd.resolve())
    done = {(r["dims"], r["ratio"]) for r in runs}
    for dims, ratio in [(None, 0.8)] + [(d, r) for d in a.dims for r in a.ratios]:
        if (dims, ratio) in done:
            continue
        record(RUNS, run(covers, photos, dims, ratio))


if __name__ == "__main__":
    main()
