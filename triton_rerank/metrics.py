"""Re-ID ranking metrics (mAP, CMC, mINP) under torchreid's Market-1501 protocol, vectorised.

Protocol (as ``torchreid.metrics.evaluate_rank``): for each query, gallery items
with the query's identity AND camera are dropped; queries left with no correct
match are skipped. Scores are similarities (higher is better); equal scores rank
by smaller gallery index.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

# Work on this many (query, gallery) pairs at a time.
_PAIRS_PER_BLOCK = 2**24


class RankingMetrics(NamedTuple):
    """Results of :func:`evaluate`.

    Attributes:
        mAP: mean average precision over valid queries, in [0, 1].
        cmc: ``[max_rank]`` float, ``cmc[r]`` = fraction of valid queries with a correct
            match within the first ``r + 1`` results (Rank-1 is ``cmc[0]``).
        mINP: mean inverse negative penalty (Ye et al. 2021): per query, the number of
            correct matches over the rank of the last one.
        num_valid_queries: queries that had at least one valid match.
    """

    mAP: float
    cmc: np.ndarray
    mINP: float
    num_valid_queries: int


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def evaluate(scores, q_pids, g_pids, q_camids, g_camids, *, max_rank: int = 50) -> RankingMetrics:
    """mAP, CMC and mINP of a ``[q, g]`` similarity matrix.

    Args:
        scores: ``[q, g]`` similarities (numpy or torch), higher is better.
        q_pids, g_pids: ``[q]`` / ``[g]`` identity labels.
        q_camids, g_camids: ``[q]`` / ``[g]`` camera ids.
        max_rank: length of the CMC curve (capped at g, like torchreid).

    Returns:
        :class:`RankingMetrics`. Equals torchreid's ``evaluate_rank(-scores, ...)``
        (which returns ``(cmc, mAP)``) when no scores tie.

    Raises:
        ValueError: bad shapes, NaN scores, ``max_rank < 1``, or no query with a valid match.

    Example:
        >>> m = evaluate(np.array([[0.9, 0.1]]), [1], [1, 2], [0], [1])
        >>> m.mAP, m.cmc[0]
        (1.0, 1.0)
    """
    scores = _as_numpy(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [q, g], got shape {scores.shape}")
    n_query, n_gallery = scores.shape
    labels = {}
    for name, x, n in (("q_pids", q_pids, n_query), ("g_pids", g_pids, n_gallery),
                       ("q_camids", q_camids, n_query), ("g_camids", g_camids, n_gallery)):
        x = _as_numpy(x)
        if x.ndim == 2 and 1 in x.shape:  # MATLAB-style 1 x n label rows
            x = x.reshape(-1)
        if x.ndim != 1 or x.shape[0] != n:
            raise ValueError(
                f"{name} must have shape [{n}] to match scores {scores.shape}, got {x.shape}")
        labels[name] = x
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    max_rank = min(int(max_rank), n_gallery)

    cmc_hits = np.zeros(max_rank, dtype=np.int64)
    ap_sum = inp_sum = 0.0
    n_valid = 0
    rows_per_block = max(1, _PAIRS_PER_BLOCK // max(1, n_gallery))
    for start in range(0, n_query, rows_per_block):
        stop = min(n_query, start + rows_per_block)
        order = np.argsort(-scores[start:stop], axis=1, kind="stable")
        pids = labels["g_pids"][order]
        cams = labels["g_camids"][order]
        same_pid = pids == labels["q_pids"][start:stop, None]
        keep = ~(same_pid & (cams == labels["q_camids"][start:stop, None]))
        good = same_pid & keep
        num_rel = good.sum(axis=1)
        valid = num_rel > 0
        if not valid.any():
            continue
        good, keep, num_rel = good[valid], keep[valid], num_rel[valid]
        kept_rank = np.cumsum(keep, axis=1) - 1  # rank among kept items, 0-based
        rows = np.arange(good.shape[0])
        first_rank = kept_rank[rows, np.argmax(good, axis=1)]
        last = good.shape[1] - 1 - np.argmax(good[:, ::-1], axis=1)
        last_rank = kept_rank[rows, last]
        hits_so_far = np.cumsum(good, axis=1)
        precision_at_hits = np.divide(hits_so_far, kept_rank + 1.0, where=good,
                                      out=np.zeros(good.shape))
        ap_sum += float((precision_at_hits.sum(axis=1) / num_rel).sum())
        inp_sum += float((num_rel / (last_rank + 1.0)).sum())
        cmc_hits += (first_rank[:, None] <= np.arange(max_rank)[None, :]).sum(axis=0)
        n_valid += int(valid.sum())
    if n_valid == 0:
        raise ValueError("no query has a valid match in the gallery (same identity, other camera)")
    return RankingMetrics(mAP=ap_sum / n_valid, cmc=cmc_hits / n_valid, mINP=inp_sum / n_valid,
                          num_valid_queries=n_valid)
