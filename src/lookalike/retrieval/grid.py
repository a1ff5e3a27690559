"""A picture of retrieval results: queries with their top-k, correct ones framed green, wrong ones red."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from lookalike.retrieval.metrics import Neighbors

QUERY, HIT, MISS, NEUTRAL, PAPER = (40, 90, 220), (30, 170, 60), (215, 40, 40), (150, 150, 150), (255, 255, 255)
VERIFIED = (123, 47, 244)  # a verified result's frame, and its outline on the photo


def _tile(path: str, size: int, frame: tuple[int, int, int], caption: str,
          outline: Sequence[Sequence[float]] | None = None) -> Image.Image:
    """A framed, captioned picture; with ``outline`` (corners as fractions of the picture) the whole picture, the
    outline drawn on it."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        pic = ImageOps.fit(im, (size - 8, size - 8)) if outline is None else ImageOps.contain(im, (size - 8, size - 8))
    if outline is not None:
        ImageDraw.Draw(pic).polygon([(x * pic.width, y * pic.height) for x, y in outline], outline=VERIFIED, width=3)
    tile = Image.new("RGB", (size, size + 14), PAPER)
    ImageDraw.Draw(tile).rectangle([0, 0, size - 1, size - 1], fill=frame)
    tile.paste(pic, (4 + (size - 8 - pic.width) // 2, 4 + (size - 8 - pic.height) // 2))
    ImageDraw.Draw(tile).text((3, size), caption[: size // 6], fill=(0, 0, 0))
    return tile


def pick_queries(nb: Neighbors, n: int, seed: int = 0) -> np.ndarray:
    """Positions in ``nb`` of up to ``n`` queries: half of them failures (wrong first result) if there are any."""
    rng = np.random.default_rng(seed)
    first_hit = nb.hits[:, 0].cpu().numpy()
    fails, goods = np.flatnonzero(~first_hit), np.flatnonzero(first_hit)
    n_fail = min(len(fails), max(n // 2, n - len(goods)))
    chosen = [*rng.permutation(fails)[:n_fail], *rng.permutation(goods)[: n - n_fail]]
    return np.array(chosen, dtype=int)


def retrieval_grid(paths: Sequence[str], labels: Sequence, nb: Neighbors, n_queries: int = 8, k: int = 6,
                   size: int = 112, seed: int = 0) -> Image.Image:
    """One row per query: the query (blue frame), then its top ``k`` results (green: same label, red: not).

    ``paths`` and ``labels`` are indexed by the table rows that ``nb`` refers to.
    """
    rows = pick_queries(nb, n_queries, seed)
    k = min(k, nb.retrieved.shape[1])
    canvas = Image.new("RGB", ((k + 1) * (size + 6) + 10, max(1, len(rows)) * (size + 20)), PAPER)
    for r, pos in enumerate(rows):
        q = int(nb.queries[pos])
        y = r * (size + 20)
        canvas.paste(_tile(paths[q], size, QUERY, f"query {labels[q]}"), (0, y))
        for j in range(k):
            g = int(nb.retrieved[pos, j])
            frame = HIT if bool(nb.hits[pos, j]) else MISS
            caption = f"{float(nb.similarities[pos, j]):.2f} {labels[g]}"
            canvas.paste(_tile(paths[g], size, frame, caption), (10 + (j + 1) * (size + 6), y))
    return canvas


def search_grid(queries: Sequence[str], results: Sequence[Sequence[tuple[str, str, float]]], size: int = 112,
                verified: Sequence[Sequence[bool]] | None = None,
                outlines: Sequence[Sequence[Sequence[float]] | None] | None = None) -> Image.Image:
    """One row per query photo (blue frame), then its results as (path, label, score), grey frames; ``verified``
    results framed purple, and each photo's ``outlines`` (its first verified result's corners) drawn on it."""
    k = max((len(r) for r in results), default=0)
    canvas = Image.new("RGB", ((k + 1) * (size + 6) + 10, max(1, len(queries)) * (size + 20)), PAPER)
    for r, (query, hits) in enumerate(zip(queries, results)):
        y = r * (size + 20)
        canvas.paste(_tile(query, size, QUERY, "query", outlines[r] if outlines else None), (0, y))
        for j, (path, label, score) in enumerate(hits):
            frame = VERIFIED if verified and verified[r][j] else NEUTRAL
            canvas.paste(_tile(path, size, frame, f"{score:.2f} {label}"), (10 + (j + 1) * (size + 6), y))
    return canvas
