"""Sweep summaries (``lookalike runs summarize FOLDER``): one table of every run (trial) under a folder, and a plot."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import yaml

from lookalike.errors import LookalikeError

TEST_KEYS = ("recall@1", "map@r")


def collect(folder: Path) -> list[dict[str, Any]]:
    """One row per run folder under ``folder`` (a folder with ``.hydra/overrides.yaml``)."""
    rows = []
    for overrides in sorted(folder.rglob(".hydra/overrides.yaml"), key=lambda p: _natural(p.parent.parent.name)):
        run = overrides.parent.parent
        args = [a for a in yaml.safe_load(overrides.read_text()) or [] if not a.startswith(("hydra.", "hparams_search"))]
        row: dict[str, Any] = {"run": str(run.relative_to(folder)) or ".",
                               "overrides": dict(a.lstrip("+~").split("=", 1) for a in args if "=" in a)}
        metrics = run / "metrics.json"
        if metrics.exists():
            report = json.loads(metrics.read_text())
            after = next((v for k, v in report.get("test", {}).items() if k.startswith("after")), {})
            row.update(status="ok", metric=report.get("optimized_metric"), best_val=report.get("best_val"),
                       duration_s=report.get("duration_s"), **{f"test_{k}": after.get(k) for k in TEST_KEYS})
        else:
            error = run / "error.txt"
            row.update(status="failed: " + error.read_text().strip()[:120] if error.exists() else "unfinished")
        rows.append(row)
    return rows


def _varying(rows: list[dict[str, Any]]) -> list[str]:
    """Override keys whose values are not the same in every row."""
    keys = {k for r in rows for k in r["overrides"]}
    return sorted(k for k in keys if len({str(r["overrides"].get(k)) for r in rows}) > 1)


def _natural(name: str) -> tuple:
    return (0, int(name)) if name.isdigit() else (1, name)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _short(value: str) -> str:
    """An override value as given, numbers with 4 significant digits."""
    try:
        return f"{float(value):.4g}" if any(c in value for c in ".eE") else value
    except ValueError:
        return value


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: run, the overrides that differ between runs, best validation metric, test
    metrics, duration, status (best first)."""
    keys = _varying(rows)
    metric = next((r["metric"] for r in rows if r.get("metric")), "best val")
    head = ["run", *keys, f"best {metric}", *(f"test {k}" for k in TEST_KEYS), "minutes", "status"]
    ranked = sorted(rows, key=lambda r: -(r.get("best_val") or -math.inf))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in ranked:
        minutes = r["duration_s"] / 60 if r.get("duration_s") else None
        cells = [r["run"], *(_short(r["overrides"].get(k, "")) for k in keys), _fmt(r.get("best_val")),
                 *(_fmt(r.get(f"test_{k}")) for k in TEST_KEYS), _fmt(minutes), r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """The optimised metric against each swept hyperparameter (numbers on a log axis where they span decades)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.get("best_val") is not None and not math.isnan(r["best_val"])]
    keys = _varying(done)
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(3.2 * max(1, len(keys)), 3), squeeze=False)
    metric = next((r["metric"] for r in done), "metric")
    for ax, key in zip(axes[0], keys or [None]):
        if key is None:
            ax.text(0.5, 0.5, "no hyperparameter varies", ha="center")
            continue
        values = [r["overrides"].get(key) for r in done]
        y = [r["best_val"] for r in done]
        try:
            x = [float(v) for v in values]
            ax.scatter(x, y)
            if min(x) > 0 and max(x) / min(x) >= 10:
                ax.set_xscale("log")
        except (TypeError, ValueError):
            cats = sorted(set(map(str, values)))
            ax.scatter([cats.index(str(v)) for v in values], y)
            ax.set_xticks(range(len(cats)), cats, rotation=30)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize(folder: str | Path) -> list[dict[str, Any]]:
    """One row per run under ``folder`` (see :func:`collect`), also written as ``summary.md`` (the table of
    :func:`to_markdown`), ``summary.csv`` and ``summary.png`` (the plot) into ``folder``."""
    folder = Path(folder)
    rows = collect(folder)
    if not rows:
        raise LookalikeError(f"No runs under '{folder}' (looked for */.hydra/overrides.yaml)")
    table = to_markdown(rows)
    (folder / "summary.md").write_text(table + "\n")
    with open(folder / "summary.csv", "w", newline="") as f:
        keys = sorted({k for r in rows for k in r["overrides"]})
        writer = csv.writer(f)
        writer.writerow(["run", *keys, "metric", "best_val", *(f"test_{k}" for k in TEST_KEYS), "duration_s", "status"])
        for r in rows:
            writer.writerow([r["run"], *(r["overrides"].get(k, "") for k in keys), r.get("metric"), r.get("best_val"),
                             *(r.get(f"test_{k}") for k in TEST_KEYS), r.get("duration_s"), r["status"]])
    plot(rows, folder / "summary.png")
    return rows
