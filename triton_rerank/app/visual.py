"""The ranking picture re-ID users know from torchreid's ``visrank``, before and after.

For each query: one row with the query image and its top-K gallery images before
re-ranking, one row with the top-K after; correct matches framed green, others red.
Drawn with Pillow.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

TILE = 40  # pixels per image tile, frame included
FRAME = 3
GAP = 4
LABEL_WIDTH = 56
QUERY_FRAME = (60, 90, 200)
MATCH_FRAME = (30, 170, 60)
MISS_FRAME = (210, 40, 40)


def picture_size(n_queries: int, k: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of :func:`ranking_picture` for ``n_queries`` and ``k``."""
    width = LABEL_WIDTH + (k + 1) * (TILE + GAP) + GAP
    height = 2 * n_queries * (TILE + GAP) + GAP
    return width, height


def _tile(image: np.ndarray, colour) -> Image.Image:
    pixels = image.astype(np.float64)
    span = pixels.max() - pixels.min()
    pixels = (pixels - pixels.min()) / span if span > 0 else np.zeros_like(pixels)
    inner = Image.fromarray((255 * pixels).astype(np.uint8)).convert("RGB")
    inner = inner.resize((TILE - 2 * FRAME, TILE - 2 * FRAME), Image.NEAREST)
    tile = Image.new("RGB", (TILE, TILE), colour)
    tile.paste(inner, (FRAME, FRAME))
    return tile


def ranking_picture(
    query_images: np.ndarray,
    gallery_images: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    path: str,
) -> None:
    """Save the before/after ranking picture as a PNG.

    Args:
        query_images: ``[n, h, w]`` grey images of the queries shown.
        gallery_images: ``[g, h, w]`` grey gallery images.
        before, after: ``[n, K]`` int gallery indices, ranked, without / with re-ranking.
        query_pids: ``[n]`` identities of the queries shown; gallery_pids: ``[g]``.
        path: where to write the PNG (size: :func:`picture_size`).
    """
    n, k = before.shape
    canvas = Image.new("RGB", picture_size(n, k), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for q in range(n):
        for row, (label, ranked) in enumerate((("before", before[q]), ("after", after[q]))):
            top = GAP + (2 * q + row) * (TILE + GAP)
            draw.text((4, top + TILE // 2 - 5), label, fill=(0, 0, 0))
            if row == 0:
                canvas.paste(_tile(query_images[q], QUERY_FRAME), (LABEL_WIDTH, top))
            for rank, j in enumerate(ranked):
                colour = MATCH_FRAME if gallery_pids[j] == query_pids[q] else MISS_FRAME
                left = LABEL_WIDTH + (rank + 1) * (TILE + GAP)
                canvas.paste(_tile(gallery_images[j], colour), (left, top))
    canvas.save(path, format="PNG")


HEAT_CELL = (56, 28)  # width, height of one heat-map cell
HEAT_MARGIN = (60, 40)  # left (row labels), top (title and column labels)


def heatmap_size(n_rows: int, n_cols: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of :func:`heatmap_picture` for a grid of that shape."""
    return (HEAT_MARGIN[0] + n_cols * HEAT_CELL[0] + 8, HEAT_MARGIN[1] + n_rows * HEAT_CELL[1] + 8)


def heatmap_picture(values: np.ndarray, row_labels, col_labels, title: str, path: str) -> None:
    """Save a heat-map of ``values [r, c]`` (NaN cells left blank) with each value printed.

    Colours run from pale yellow (lowest) to dark red (highest value).
    """
    n_rows, n_cols = values.shape
    canvas = Image.new("RGB", heatmap_size(n_rows, n_cols), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=(0, 0, 0))
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    for c, label in enumerate(col_labels):
        draw.text(
            (HEAT_MARGIN[0] + c * HEAT_CELL[0] + 4, HEAT_MARGIN[1] - 14), str(label), fill=(0, 0, 0)
        )
    for r, label in enumerate(row_labels):
        top = HEAT_MARGIN[1] + r * HEAT_CELL[1]
        draw.text((4, top + 8), str(label), fill=(0, 0, 0))
        for c in range(n_cols):
            value = values[r, c]
            if not np.isfinite(value):
                continue
            t = (value - low) / (high - low) if high > low else 1.0
            colour = (255 - int(80 * t), int(240 - 200 * t), int(160 - 150 * t))
            left = HEAT_MARGIN[0] + c * HEAT_CELL[0]
            draw.rectangle(
                [left, top, left + HEAT_CELL[0] - 2, top + HEAT_CELL[1] - 2], fill=colour
            )
            draw.text(
                (left + 6, top + 8),
                f"{100 * value:.1f}",
                fill=(255, 255, 255) if t > 0.6 else (0, 0, 0),
            )
    canvas.save(path, format="PNG")


PLOT_SIZE = (420, 300)  # one log-log panel
PLOT_MARGIN = (64, 30, 16, 44)  # left, top, right, bottom
SERIES_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))


def _log_ticks(low: float, high: float) -> list[float]:
    first, last = int(np.floor(np.log10(low))), int(np.ceil(np.log10(high)))
    return [10.0**e for e in range(first, last + 1)]


def _loglog_panel(series: dict, xlabel: str, ylabel: str) -> Image.Image:
    """One panel: each series ``name -> (xs, ys)`` as a polyline on log-log axes."""
    panel = Image.new("RGB", PLOT_SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    left, top, right, bottom = PLOT_MARGIN
    width, height = PLOT_SIZE[0] - left - right, PLOT_SIZE[1] - top - bottom
    xs = [x for xs_, _ in series.values() for x in xs_]
    ys = [y for _, ys_ in series.values() for y in ys_]
    x_ticks, y_ticks = _log_ticks(min(xs), max(xs)), _log_ticks(min(ys), max(ys))
    x_lo, x_hi = np.log10(x_ticks[0]), np.log10(x_ticks[-1]) + 1e-9
    y_lo, y_hi = np.log10(y_ticks[0]), np.log10(y_ticks[-1]) + 1e-9

    def point(x, y):
        return (
            left + width * (np.log10(x) - x_lo) / (x_hi - x_lo),
            top + height * (1 - (np.log10(y) - y_lo) / (y_hi - y_lo)),
        )

    draw.rectangle([left, top, left + width, top + height], outline=(0, 0, 0))
    for tick in x_ticks:
        px, _ = point(tick, y_ticks[0])
        draw.line([px, top, px, top + height], fill=(225, 225, 225))
        draw.text((min(px - 12, PLOT_SIZE[0] - 40), top + height + 4), f"{tick:g}", fill=(0, 0, 0))
    for tick in y_ticks:
        _, py = point(x_ticks[0], tick)
        draw.line([left, py, left + width, py], fill=(225, 225, 225))
        draw.text((4, py - 6), f"{tick:g}", fill=(0, 0, 0))
    draw.text((left + width // 2 - 30, PLOT_SIZE[1] - 16), xlabel, fill=(0, 0, 0))
    draw.text((4, 8), ylabel, fill=(0, 0, 0))
    for i, (name, (sx, sy)) in enumerate(series.items()):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        points = [point(x, y) for x, y in zip(sx, sy, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        draw.text((left + 8, top + 6 + 14 * i), name, fill=colour)
    return panel


def loglog_picture(panels: list[tuple[dict, str, str]], path: str) -> None:
    """Save log-log panels side by side; each is ``(series, xlabel, ylabel)`` with
    ``series = {name: (xs, ys)}`` (positive values)."""
    images = [_loglog_panel(*panel) for panel in panels]
    canvas = Image.new("RGB", (PLOT_SIZE[0] * len(images), PLOT_SIZE[1]), (255, 255, 255))
    for i, image in enumerate(images):
        canvas.paste(image, (i * PLOT_SIZE[0], 0))
    canvas.save(path, format="PNG")
