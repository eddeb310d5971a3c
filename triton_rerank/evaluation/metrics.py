"""Re-ID ranking metrics (mAP, CMC, mINP) under torchreid's Market-1501 protocol, vectorised.

Protocol (as ``torchreid.metrics.evaluate_rank``): for each query, gallery items
with the query's identity AND camera are dropped; queries left with no correct
match are skipped. Scores are similarities (higher is better); equal scores rank
by smaller gallery index.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from ..checks import as_numpy
from ..cpu.kernels.ranking_stats import match_ranks

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


def _label_array(x, name: str, n: int, source: str) -> np.ndarray:
    """``x`` as a 1-D numpy array of ``n`` labels: int64, or str for string labels.

    Raises:
        TypeError: not integer, integer-valued float or string labels.
        ValueError: the wrong shape, NaN/inf, or a float that is not an integer in the
            int64 range.
    """
    x = as_numpy(x)
    if x.ndim == 2 and 1 in x.shape:  # MATLAB-style 1 x n label rows
        x = x.reshape(-1)
    if x.ndim != 1 or x.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}] to match {source}, got {x.shape}")
    if x.dtype.kind == "O":  # e.g. a pandas column: strings, or numbers as Python objects
        for kind, dtype in ((str, str), (numbers.Integral, np.int64), (numbers.Real, np.float64)):
            if all(isinstance(v, kind) and not isinstance(v, bool) for v in x):
                x = x.astype(dtype)
                break
    if x.dtype.kind in "US":
        return x
    if x.dtype.kind in "biu":
        return x.astype(np.int64)
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must hold integer or string labels, got dtype {x.dtype}")
    bad = ~np.isfinite(x)
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} contains {x[at]} at position {at}: labels must be finite integers"
        )
    bad = x != np.round(x)
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must hold integer-valued labels, got {x[at]} at position {at}")
    bad = (x < -(2.0**63)) | (x >= 2.0**63)
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} has the label {x[at]} at position {at}, beyond the int64 range")
    return x.astype(np.int64)


def check_labels(
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    *,
    n_query: int,
    n_gallery: int,
    query_source: str,
    gallery_source: str,
):
    """Validate re-ID labels and return them as int64 arrays (see :func:`evaluate`).

    Args:
        q_pids, g_pids, q_camids, g_camids: the labels (numpy, torch or lists).
        n_query, n_gallery: the expected lengths.
        query_source, gallery_source: what the lengths come from, for the messages
            (e.g. ``"scores (5, 40)"``).

    Returns:
        ``(q_pids, g_pids, q_camids, g_camids)`` 1-D int64 numpy arrays; string labels
        are numbered jointly for query and gallery (equal strings, equal numbers).

    Raises:
        TypeError: labels that are neither integers, integer-valued floats nor strings, or
            a string array paired with a numeric one.
        ValueError: a wrong shape (1 x n rows are accepted), NaN/inf, non-integer floats
            or floats beyond the int64 range; each message names the array.
    """
    out = []
    for (q_name, q), (g_name, g) in (
        (("q_pids", q_pids), ("g_pids", g_pids)),
        (("q_camids", q_camids), ("g_camids", g_camids)),
    ):
        q = _label_array(q, q_name, n_query, query_source)
        g = _label_array(g, g_name, n_gallery, gallery_source)
        strings = q.dtype.kind in "US", g.dtype.kind in "US"
        if strings[0] != strings[1]:
            kinds = ["strings" if s else "numbers" for s in strings]
            raise TypeError(
                f"{q_name} holds {kinds[0]} and {g_name} {kinds[1]}: pass both "
                f"as strings or both as numbers"
            )
        if strings[0]:
            _, codes = np.unique(
                np.concatenate([q.astype(str), g.astype(str)]), return_inverse=True
            )
            q, g = codes[:n_query].astype(np.int64), codes[n_query:].astype(np.int64)
        out += [q, g]
    return tuple(out)


def evaluate(scores, q_pids, g_pids, q_camids, g_camids, *, max_rank: int = 50) -> RankingMetrics:
    """mAP, CMC and mINP of a ``[q, g]`` similarity matrix.

    Args:
        scores: ``[q, g]`` similarities (numpy or torch), higher is better.
        q_pids, g_pids: ``[q]`` / ``[g]`` identity labels (numpy, torch or lists; ``1 x n``
            rows are accepted): integers, integer-valued floats, or strings. String
            labels are compared as strings, across query and gallery alike (they are
            numbered jointly); a string array with a numeric partner is a TypeError.
        q_camids, g_camids: ``[q]`` / ``[g]`` camera ids, likewise.
        max_rank: length of the CMC curve (capped at g, like torchreid).

    Returns:
        :class:`RankingMetrics`. Equals torchreid's ``evaluate_rank(-scores, ...)``
        (which returns ``(cmc, mAP)``) when no scores tie.

    Raises:
        TypeError: labels of another kind (complex, objects other than strings), or
            strings paired with numbers; see :func:`check_labels`.
        ValueError: bad shapes, NaN/inf/non-integer float labels, NaN scores,
            ``max_rank < 1``, or no query with a valid match.

    Example:
        >>> m = evaluate(np.array([[0.9, 0.1]]), [1], [1, 2], [0], [1])
        >>> m.mAP, m.cmc[0]
        (1.0, 1.0)
    """
    scores = as_numpy(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [q, g], got shape {scores.shape}")
    n_query, n_gallery = scores.shape
    q_pids, g_pids, q_cams, g_cams = check_labels(
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        n_query=n_query,
        n_gallery=n_gallery,
        query_source=f"scores {scores.shape}",
        gallery_source=f"scores {scores.shape}",
    )
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    max_rank = min(int(max_rank), n_gallery)

    # correct matches per query: same identity, other camera
    n_match = np.zeros(n_query, dtype=np.int64)
    rows_per_block = max(1, _PAIRS_PER_BLOCK // max(1, n_gallery))
    for start in range(0, n_query, rows_per_block):
        stop = min(n_query, start + rows_per_block)
        same_pid = q_pids[start:stop, None] == g_pids[None, :]
        n_match[start:stop] = (same_pid & (q_cams[start:stop, None] != g_cams[None, :])).sum(1)
    offsets = np.zeros(n_query + 1, dtype=np.int64)
    np.cumsum(n_match, out=offsets[1:])
    ranks = np.empty(int(offsets[-1]), dtype=np.int64)
    match_ranks(np.ascontiguousarray(scores), q_pids, g_pids, q_cams, g_cams, offsets, ranks)

    valid = n_match > 0
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("no query has a valid match in the gallery (same identity, other camera)")
    query_of = np.repeat(np.arange(n_query), n_match)
    hits_before = np.arange(len(ranks)) - offsets[query_of]  # matches ranked above this one
    ap = np.bincount(query_of, (hits_before + 1) / (ranks + 1.0), n_query)[valid] / n_match[valid]
    first_rank = ranks[offsets[:-1][valid]]
    last_rank = ranks[offsets[1:][valid] - 1]
    cmc = (first_rank[:, None] <= np.arange(max_rank)[None, :]).mean(axis=0)
    return RankingMetrics(
        mAP=float(ap.mean()),
        cmc=cmc,
        mINP=float((n_match[valid] / (last_rank + 1.0)).mean()),
        num_valid_queries=n_valid,
    )


def map_at_k(retrieved, query_labels, database_labels) -> float:
    """Mean average precision of top-k retrieval lists (mAP@k, the usual retrieval metric
    for search results such as FAISS's).

    ``AP@k = sum_i P(i) * rel(i) / min(R, k)`` over the ``k`` listed positions, where R is
    the number of database items sharing the query's label (queries with R = 0 count as 0).

    Args:
        retrieved: ``[q, k]`` int database positions, best first (-1 = no result).
        query_labels: ``[q]`` labels of the queries.
        database_labels: ``[g]`` labels of the database items.

    Returns:
        mAP@k in [0, 1].
    """
    retrieved = as_numpy(retrieved)
    query_labels, database_labels = as_numpy(query_labels), as_numpy(database_labels)
    if retrieved.ndim != 2 or retrieved.shape[0] != query_labels.shape[0]:
        raise ValueError(
            f"retrieved must be [q, k] with q = {query_labels.shape[0]} queries, "
            f"got shape {retrieved.shape}"
        )
    k = retrieved.shape[1]
    relevant = (retrieved >= 0) & (
        database_labels[np.maximum(retrieved, 0)] == query_labels[:, None]
    )
    hits = np.cumsum(relevant, axis=1)
    precision_at_hits = np.where(relevant, hits / np.arange(1, k + 1), 0.0)
    labels, counts = np.unique(database_labels, return_counts=True)
    slot = np.clip(np.searchsorted(labels, query_labels), 0, len(labels) - 1)
    n_relevant = np.where(labels[slot] == query_labels, counts[slot], 0)
    ap = precision_at_hits.sum(axis=1) / np.maximum(np.minimum(n_relevant, k), 1)
    return float(ap.mean())


def list_recall(found, wanted) -> float:
    """Mean fraction of each row of ``wanted`` that the same row of ``found`` contains,
    in any order (e.g. how much of an exact search's top-k an approximate one returns).

    Args:
        found: ``[q, k_f]`` ids per query.
        wanted: ``[q, k_w]`` ids per query (k_w >= 1).

    Returns:
        The mean over queries, in [0, 1].
    """
    found, wanted = as_numpy(found), as_numpy(wanted)
    return float(
        np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, wanted, strict=True)])
    )
