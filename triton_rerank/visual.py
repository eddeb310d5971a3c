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


def ranking_picture(query_images: np.ndarray, gallery_images: np.ndarray,
                    before: np.ndarray, after: np.ndarray, query_pids: np.ndarray,
                    gallery_pids: np.ndarray, path: str) -> None:
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
