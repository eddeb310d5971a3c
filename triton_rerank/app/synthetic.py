"""Synthetic features for speed work: re-ID splits at the shapes of real benchmarks,
and clustered retrieval databases.

Re-ID rows are ``normalize(centre[pid] + 0.6 * cam_bias[cam] + 2.0 * noise)`` with
standard-normal centres, camera biases and noise; distractors (pid -1) get a centre
of their own. At the Market-1501 shape this gives a baseline mAP of about 53%.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..evaluation.feature_set import FeatureSet


@dataclass(frozen=True)
class ReidShape:
    """Sizes of a re-ID test split."""

    n_query: int
    n_gallery: int
    dim: int
    n_ids: int
    n_cams: int
    distractor_fraction: float  # of the gallery


MARKET1501 = ReidShape(
    n_query=3368, n_gallery=19732, dim=512, n_ids=751, n_cams=6, distractor_fraction=1 / 8
)
MSMT17 = ReidShape(
    n_query=11659, n_gallery=82161, dim=128, n_ids=3060, n_cams=15, distractor_fraction=1 / 8
)


def reid_like_features(shape: ReidShape = MARKET1501, seed: int = 0) -> FeatureSet:
    """Labelled float32 features of ``shape`` (queries never are distractors).

    Returns:
        :class:`~triton_rerank.app.data.FeatureSet` with unit-norm rows.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((shape.n_ids, shape.dim), dtype=np.float32)
    cam_bias = rng.standard_normal((shape.n_cams, shape.dim), dtype=np.float32)

    def draw(n: int, n_distractors: int):
        pids = rng.integers(0, shape.n_ids, n)
        pids[:n_distractors] = -1
        cams = rng.integers(0, shape.n_cams, n)
        x = rng.standard_normal((n, shape.dim), dtype=np.float32)
        x *= 2.0
        x += 0.6 * cam_bias[cams]
        x[n_distractors:] += centres[pids[n_distractors:]]
        x[:n_distractors] += rng.standard_normal((n_distractors, shape.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x, pids.astype(np.int64), cams.astype(np.int64)

    xq, q_pids, q_cams = draw(shape.n_query, 0)
    xg, g_pids, g_cams = draw(shape.n_gallery, round(shape.distractor_fraction * shape.n_gallery))
    return FeatureSet(xq, xg, q_pids, g_pids, q_cams, g_cams)


def clustered_vectors(
    n: int, dim: int, n_clusters: int, *, spread: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows drawn around ``n_clusters`` random centres (a retrieval database).

    Each row is ``normalize(centre[label] + spread * noise)`` with standard-normal
    centres and noise; rows are generated in chunks, so ``n`` in the millions is fine.

    Returns:
        ``(vectors [n, dim] float32, labels [n] int64)``.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    labels = rng.integers(0, n_clusters, n)
    vectors = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 262144):
        stop = min(n, start + 262144)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        block *= spread
        block += centres[labels[start:stop]]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[start:stop] = block
    return vectors, labels.astype(np.int64)
