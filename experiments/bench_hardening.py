"""The second hardening round's two costs, each measured against what it replaced in the same run:

- four 6,300 x 6,300 RGBA PNGs (170 KB each, within the decoding budget) decoded at once in one process, as four
  server slots would: peak and kept RSS with the shared pixel budget and glibc returning large buffers, against
  an unbounded budget and glibc's default (each case in a fresh process);
- a filter ``price in [198 numbers]`` (1,000 characters) over 50,000 items: evaluated over whole columns (what the
  file catalogue does) against the same condition tested item by item (what it did).

    python experiments/bench_hardening.py --out experiments/results/serve.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from common import machine, report

DECODE = """
import io, resource, sys, threading
from PIL import Image
from lookalike.data import images
if sys.argv[1] == "before":
    images.DECODING = images.PixelBudget(10 ** 12)  # no shared budget
else:
    images.return_large_buffers()
picture = io.BytesIO()
Image.new("RGBA", (6300, 6300), (10, 200, 30, 128)).save(picture, "PNG")
data = picture.getvalue()
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024
start = rss()
threads = [threading.Thread(target=lambda: images.load_rgb(io.BytesIO(data), min_side=256)) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, rss(), len(data))
"""


def decodes(mode: str) -> tuple[int, int, int, int]:
    done = subprocess.run([sys.executable, "-c", DECODE, mode], capture_output=True, text=True, check=True)
    start, peak, kept, size = map(int, done.stdout.split())
    return start, peak, kept, size


def filters(items: int = 50_000) -> tuple[float, float, str]:
    from lookalike.catalogue.filters import Columns, mask, matches, parse_filter

    rows = [{"label": f"p{i}", "price": str(i % 997)} for i in range(items)]
    text = f"price in [{', '.join(str(v) for v in range(0, 990, 5))}]"
    condition = parse_filter(text, {"label", "price"}).condition
    started = time.perf_counter()
    whole = mask(condition, Columns(rows))
    columns = time.perf_counter() - started
    started = time.perf_counter()
    one_by_one = [matches(condition, row) for row in rows]
    per_item = time.perf_counter() - started
    assert whole.tolist() == one_by_one
    return columns, per_item, f"{len(text)} characters, {whole.sum()} of {items} items kept"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="append the results to this Markdown file")
    args = parser.parse_args()
    lines = [f"## {time.strftime('%Y-%m-%d')}: second hardening round, large decodes and long filters",
             "", f"Machine: {machine()}  ", "Command: `python experiments/bench_hardening.py --out "
             "experiments/results/serve.md`", "",
             "| four 6,300 x 6,300 RGBA PNGs decoded at once | PNG bytes | RSS before (MB) | peak RSS (MB) | "
             "RSS after (MB) |", "|---|---:|---:|---:|---:|"]
    for mode, name in (("before", "no shared budget, glibc's default"), ("after", "pixel budget, large buffers "
                                                                                     "returned")):
        start, peak, kept, size = decodes(mode)
        lines.append(f"| {name} | {size:,} | {start} | {peak} | {kept} |")
    columns, per_item, what = filters()
    lines += ["", "| filter `price in [198 numbers]` over 50,000 items | seconds |", "|---|---:|",
              f"| item by item | {per_item:.3f} |", f"| whole columns | {columns:.3f} |", "", f"({what}.)"]
    report(lines, args.out)


if __name__ == "__main__":
    main()
