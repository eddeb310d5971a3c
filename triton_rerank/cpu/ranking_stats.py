"""Per-query ranking statistics for re-ID evaluation, without sorting the gallery.

Only the ranks of a query's correct matches matter for mAP, CMC and mINP. With the
matches sorted by (score desc, index asc), every other kept gallery item is "ahead
of" a suffix of them; one binary search per item finds where that suffix starts,
and a prefix sum over those counts gives each match's rank: ``O(g log m)`` per
query for ``m`` matches, instead of ``O(g log g)`` for a full sort.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .jit import njit


@njit()
def _is_ahead(score_a, index_a, score_b, index_b):
    """Whether item a ranks before item b: higher score, or equal score and smaller index."""
    return score_a > score_b or (score_a == score_b and index_a < index_b)


@njit(parallel=True)
def match_ranks(scores, q_pids, g_pids, q_cams, g_cams, rank_offsets, ranks):
    """Write, for each query, the 0-based ranks of its correct matches among kept items.

    Kept items exclude those with the query's identity AND camera (torchreid's
    Market-1501 protocol); correct matches have the query's identity and another camera.

    Args:
        scores: ``[q, g]`` similarities (no NaN).
        q_pids, g_pids, q_cams, g_cams: ``[q]`` / ``[g]`` int64 labels.
        rank_offsets: ``[q + 1]`` int64 prefix sums of the match counts per query.
        ranks: ``[rank_offsets[-1]]`` int64 output, each query's ranks in ascending order.
    """
    n_query, n_gallery = scores.shape
    for i in nb.prange(n_query):
        start, stop = rank_offsets[i], rank_offsets[i + 1]
        n_match = stop - start
        if n_match == 0:
            continue
        match_idx = np.empty(n_match, dtype=np.int64)
        m = 0
        for j in range(n_gallery):
            if g_pids[j] == q_pids[i] and g_cams[j] != q_cams[i]:
                match_idx[m] = j
                m += 1
        # sort the matches by (score desc, index asc); indices are already ascending,
        # so a stable sort on -score does it
        order = np.argsort(-scores[i, match_idx], kind="mergesort")
        match_idx = match_idx[order]
        match_scores = scores[i, match_idx]
        # ahead[t]: kept items (matches included) ahead of match t but of no earlier match
        ahead = np.zeros(n_match, dtype=np.int64)
        for j in range(n_gallery):
            if g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i]:
                continue  # dropped by the protocol
            s = scores[i, j]
            lo, hi = 0, n_match  # first match that item j is ahead of
            while lo < hi:
                mid = (lo + hi) // 2
                if _is_ahead(s, j, match_scores[mid], match_idx[mid]):
                    hi = mid
                else:
                    lo = mid + 1
            if lo < n_match:
                ahead[lo] += 1
        total = 0
        for t in range(n_match):
            total += ahead[t]
            ranks[start + t] = total
