"""Inductive re-ranking of one query's shortlist against a frozen database graph.

The query is treated as one extra node (id ``g``) joining the database's graph,
while the database's own rows stay as they were computed without it. For query
``q`` with candidate set C (its FAISS shortlist):

* round 0: ``A0[q]`` marks ``q`` itself and its ``k1 - 1`` most similar candidates;
  the column ``A0[:, q]`` marks the candidates whose stored k1-th similarity is at
  most ``sim(q, c)`` (they would list ``q`` among their neighbours);
* every round r: ``M_r[q] = A_r[q] + A_r[:, q]`` (with ``M_r[q, q] = 2 A_r[q, q]``),
  and the database rows ``M_r[n]`` are the stored ones plus the entry
  ``M_r[n, q] = M_r[q, n]`` (M is symmetric); then
  ``A_{r+1}[q] = normalise(sum_t w_qt M_r[n_qt])`` over q's top-k2 (``q`` first,
  weight 1), and the column ``A_{r+1}[j, q] = inv_norm_r[j] * sum_t w_jt M_r[q, n_jt]``
  for the database rows j whose top-k2 touch ``M_r[q]`` (found by the reverse lists);
* scores, for candidates only:
  ``<A_R[q], A_R[j]> = inv_norm_{R-1}[j] * sum_t w_jt (z[n_jt] + A_R[q, q] * M_{R-1}[q, n_jt])``
  with ``z = M_{R-1} @ A_R[q]`` (M is symmetric), scattered from the query row's
  few hundred non-zeros.

Each query touches its candidates, their neighbours and a few hundred reverse
edges: the cost does not grow with the database size. What grows is the cost of each
touch: at 1M rows the arrays are far larger than the caches and the kernel waits on
memory. So ``z`` is written only at the nodes the scoring reads (a mask of one bit per
node, small enough to stay in cache), the rows the next items need (database vectors,
rows of ``M``, top-k2 and kNN lists, weights) are prefetched a few items ahead
(:mod:`.prefetch`), four similarities are summed at once (their memory waits overlap),
and the scratch rows over the database nodes are numpy arrays (:func:`_scratch`).

Grown shortlists (:func:`rerank_grown_shortlists`): the rows of ``cand_pos`` are
*seeds* (e.g. a short search); the shortlist is the ``shortlist`` items most similar to
the query (by float32 cosine, equal similarities by smaller key; all of them when
fewer) in a pool grown from the seeds through the frozen kNN lists, level by level:
level 1 adds the lists of every seed; while the pool holds fewer than ``shortlist``
items, the next level adds the lists of the previous level's items, most similar to
the query first, until the pool holds ``shortlist`` (or a level adds nothing). The
pool keeps the order items are met in (seeds first), and the shortlist is re-ranked
as a given one is.
"""

from __future__ import annotations

import numpy as np

from .aggregate import kth_largest
from .jit import njit, parallel_chunks, worker_count
from .lane_dot import lane_dot_rows
from .prefetch import prefetch

# items ahead of the one worked on whose rows are prefetched (see prefetch.py)
AHEAD = 4


@njit()
def _add(col, value, acc, stamp_of, stamp, touched, n_touched):
    """``acc[col] += value`` in a sparse accumulator; returns the new touched count."""
    if stamp_of[col] != stamp:
        stamp_of[col] = stamp
        acc[col] = value
        touched[n_touched] = col
        return n_touched + 1
    acc[col] += value
    return n_touched


@njit()
def _get(col, acc, stamp_of, stamp):
    return acc[col] if stamp_of[col] == stamp else np.float32(0.0)


@njit()
def _prefetch_m_row(e, base, n_db, m_indices, m_values):
    """Prefetch row ``M_r[e]`` (its two halves, ``A_r[e]`` and ``A_r.T[e]``)."""
    for half in (e, e + n_db):
        for s in range(base[half], base[half + 1], 16):
            prefetch(m_indices, s)
            prefetch(m_values, s)


@njit()
def _mark_scored_nodes(positions, w_idx, needed, z_mq, mark):
    """Mark (``mark``) or unmark the nodes the scoring reads: the candidates' top-k2.

    ``positions`` [n] candidate rows, ``w_idx`` [n_db, k2] (-1 = no neighbour),
    ``needed`` [n_db / 64 + 1] one bit per node. Unmarking also zeroes ``z`` (column 0
    of ``z_mq`` [n_db + 1, 2]) there (the only places it was written) and clears the
    whole word, since every bit set in it belongs to a node of these same lists.
    """
    w_flat = w_idx.reshape(-1)
    k2 = w_idx.shape[1]
    for c in range(positions.shape[0]):
        if mark and c + 2 * AHEAD < positions.shape[0]:
            # the first read of these rows (the scoring reads them again, from cache);
            # a row can straddle two cache lines
            ahead = positions[c + 2 * AHEAD] * k2
            prefetch(w_flat, ahead)
            prefetch(w_flat, ahead + k2 - 1)
        j = positions[c]
        for t in range(k2):
            n = w_idx[j, t]
            if n >= 0:
                if mark:
                    needed[n >> 6] |= np.int64(1) << (n & 63)
                else:
                    z_mq[n, 0] = 0.0
                    needed[n >> 6] = 0


@njit()
def _similarities(query, vectors, positions, out):
    """``out[c]``: the float32 inner product of ``query`` with database row ``positions[c]``,
    summed in :func:`~.lane_dot.lane_dot`'s fixed order (so a pair's similarity has the
    same bits at every call site and in every build). The rows ``AHEAD`` items on are
    prefetched: they are scattered over the database."""
    n = positions.shape[0]
    flat = vectors.reshape(-1)
    d = vectors.shape[1]
    n_quads = n - n % 4
    for c in range(0, n_quads, 4):  # four rows at a time: their sums overlap
        for ahead in range(c + AHEAD, min(c + AHEAD + 4, n)):
            for e in range(0, d, 16):  # one float32 cache line each
                prefetch(flat, positions[ahead] * d + e)
        out[c], out[c + 1], out[c + 2], out[c + 3] = lane_dot_rows(
            query, vectors, (positions[c], positions[c + 1], positions[c + 2], positions[c + 3])
        )
    for c in range(n_quads, n):
        (out[c],) = lane_dot_rows(query, vectors, (positions[c],))


@njit()
def _top_by_value(values, keys, m, chosen):
    """Write into ``chosen`` the indices of the ``m`` largest ``values`` (all when fewer)
    by descending value, equal values by smaller key (keys are distinct); returns their
    number. An insertion into a sorted list of the best so far: candidates come roughly
    by descending value, so after the first ``m`` most of them fail at one comparison."""
    n_chosen = 0
    m = min(m, values.shape[0])
    if m <= 0:
        return 0
    for c in range(values.shape[0]):
        v, key = values[c], keys[c]
        if n_chosen < m:
            j = n_chosen
            n_chosen += 1
        else:
            last = chosen[m - 1]
            if not (v > values[last] or (v == values[last] and key < keys[last])):
                continue
            j = m - 1
        while j > 0:
            prev = chosen[j - 1]
            if not (v > values[prev] or (v == values[prev] and key < keys[prev])):
                break
            chosen[j] = prev
            j -= 1
        chosen[j] = c
    return n_chosen


@njit()
def _keep_most_similar(pos, sims, keys, n, m, seen, picked, tie):
    """Keep, in place and in their order, the ``m`` of ``pos[:n]`` (similarities
    ``sims``, keys ``keys``) most similar to the query, equal similarities by smaller
    key; unmark the dropped ones in ``seen``. Returns the number kept (``min(n, m)``)."""
    if n <= m:
        return n
    for c in range(n):
        picked[c] = sims[c]
    floor = kth_largest(picked[:n], m)
    n_above = 0
    n_tie = 0
    for c in range(n):
        if sims[c] > floor:
            n_above += 1
        elif sims[c] == floor:
            tie[n_tie] = keys[c]
            n_tie += 1
    # of the items at the floor, those with the m - n_above smallest keys stay
    tie_keys = np.sort(tie[:n_tie])
    last_key = tie_keys[m - n_above - 1]
    kept = 0
    for c in range(n):
        if sims[c] > floor or (sims[c] == floor and keys[c] <= last_key):
            pos[kept], sims[kept], keys[kept] = pos[c], sims[c], keys[c]
            kept += 1
        else:
            seen[pos[c]] = -1
    return kept


@njit()
def _add_list(u_list, tie_keys, pos, keys, n, seen, stamp):
    """Append the nodes of ``u_list`` not yet ``seen`` (this ``stamp``) to the pool
    ``pos``/``keys`` of ``n`` items; returns the new size."""
    for u in u_list:
        if u >= 0 and seen[u] != stamp:
            seen[u] = stamp
            pos[n] = u
            keys[n] = tie_keys[u]
            n += 1
    return n


@njit()
def _prefetch_list(flat, start, width):
    """Prefetch ``flat[start : start + width]`` (int64, e.g. a kNN list), one cache line
    at a time."""
    for e in range(start, start + width, 8):
        prefetch(flat, e)
    prefetch(flat, start + width - 1)


_KEY_LIMIT = np.int64(1) << 32  # keys below it fit the low half of one sort key
_SIGN = np.uint32(0x80000000)


@njit()
def _most_similar_first(sims, keys):
    """The order of ``sims`` (float32, no NaN) by descending value, equal values by
    smaller key (``keys`` distinct int64). One sort of 64-bit integers whose high half
    orders the similarity (its bits, made to sort as unsigned integers, descending) and
    whose low half is the key; two stable sorts where a key does not fit 32 bits."""
    n = sims.shape[0]
    bits = sims.view(np.uint32)
    order_keys = np.empty(n, np.uint64)
    for c in range(n):
        key = keys[c]
        if key < 0 or key >= _KEY_LIMIT:
            by_key = np.argsort(keys)
            return by_key[np.argsort(-sims[by_key], kind="mergesort")]
        b = bits[c]
        if b == _SIGN:  # -0.0 ranks as +0.0
            b = np.uint32(0)
        ascending = ~b if b & _SIGN else b | _SIGN  # as unsigned integers, in float order
        order_keys[c] = (np.uint64(~ascending) << np.uint64(32)) | np.uint64(key)
    return np.argsort(order_keys)


@njit()
def _grow_pool(query, vectors, knn_idx, tie_keys, pos, sims, keys, n_seeds, grow, seen, stamp):
    """Grow the pool ``pos[:n_seeds]`` (the seeds) through the kNN lists, computing
    every pooled item's similarity to ``query`` into ``sims``; returns the pool's size.

    Level 1 adds the lists of all seeds. While the pool holds fewer than ``grow``
    items, the next level adds the lists of the previous level's items, most similar
    first (equal similarities by smaller key), and stops as soon as the pool holds
    ``grow`` (so it ends under ``grow + k1``), or when a level adds nothing.
    """
    n = n_seeds
    knn_flat = knn_idx.reshape(-1)
    k1 = knn_idx.shape[1]
    for c in range(n_seeds):
        if c + AHEAD < n_seeds:
            _prefetch_list(knn_flat, pos[c + AHEAD] * k1, k1)
        n = _add_list(knn_idx[pos[c]], tie_keys, pos, keys, n, seen, stamp)
    _similarities(query, vectors, pos[:n], sims[:n])
    level_start = n_seeds
    while n < grow and n > level_start:
        level_stop = n
        by_similarity = _most_similar_first(
            sims[level_start:level_stop], keys[level_start:level_stop]
        )
        n_level = by_similarity.shape[0]
        for t in range(n_level):
            if t + AHEAD < n_level:
                _prefetch_list(knn_flat, pos[level_start + by_similarity[t + AHEAD]] * k1, k1)
            item = pos[level_start + by_similarity[t]]
            n = _add_list(knn_idx[item], tie_keys, pos, keys, n, seen, stamp)
            if n >= grow:
                break
        _similarities(query, vectors, pos[level_stop:n], sims[level_stop:n])
        level_start = level_stop
    return n


@njit()
def _pool_width(n_seeds, k1, shortlist, n_db):
    """The most items a grown pool holds (:func:`_grow_pool`): the seeds' lists in full,
    or under ``shortlist + k1`` once later levels add."""
    return max(n_seeds * (1 + k1), min(shortlist, n_db) + k1)


@njit()
def _grown_shortlist(
    query, seeds, vectors, knn_idx, tie_keys, shortlist, pos, sims, keys, seen, stamp, picked, tie
):
    """One query's grown shortlist (the module doc) into ``pos``/``sims``/``keys``, from
    its ``seeds`` row (-1 = none; repeats count once); marks its items ``stamp`` in
    ``seen``. Returns its size. ``pos``/``sims``/``keys``/``picked``/``tie`` have room
    for the whole pool (:func:`_pool_width` items)."""
    n = _add_list(seeds, tie_keys, pos, keys, 0, seen, stamp)
    n = _grow_pool(query, vectors, knn_idx, tie_keys, pos, sims, keys, n, shortlist, seen, stamp)
    return _keep_most_similar(pos, sims, keys, n, shortlist, seen, picked, tie)


@njit(nogil=True)
def _grow_queries(start, stop, queries, seeds, tie_keys, vectors, knn_idx, out):
    """:func:`grow_shortlists` for queries ``start .. stop - 1``."""
    shortlist = out.shape[1]
    width = _pool_width(seeds.shape[1], knn_idx.shape[1], shortlist, vectors.shape[0])
    pos = np.empty(width, np.int64)
    keys = np.empty(width, np.int64)
    sims = np.empty(width, np.float32)
    picked = np.empty(width, np.float32)
    tie = np.empty(width, np.int64)
    seen = np.full(vectors.shape[0], -1, np.int64)
    for i in range(start, stop):
        n = _grown_shortlist(
            queries[i], seeds[i], vectors, knn_idx, tie_keys, shortlist,
            pos, sims, keys, seen, i, picked, tie,
        )  # fmt: skip
        out[i, :n] = pos[:n]
        out[i, n:] = -1


def _check_shortlist(shortlist) -> None:
    if shortlist < 1:
        raise ValueError(f"shortlist must be at least 1, got {shortlist}")


def grow_shortlists(queries, seeds, tie_keys, vectors, knn_idx, shortlist, n_tasks):
    """The grown shortlists of :func:`rerank_grown_shortlists`, without the re-ranking.

    Args:
        queries: ``[b, d]`` float32 unit rows; seeds: ``[b, s]`` int64 database nodes
            (-1 = none; repeats count once); tie_keys, vectors, knn_idx: as
            :func:`rerank_shortlists`; shortlist: the largest shortlist, ``>= 1``;
            n_tasks: at most this many parallel chunks of queries.

    Returns:
        ``[b, shortlist]`` int64 nodes of each shortlist in the order they were met
        (seeds first), -1 after its last.
    """
    _check_shortlist(shortlist)
    out = np.empty((seeds.shape[0], shortlist), dtype=np.int64)
    parallel_chunks(
        _grow_queries, seeds.shape[0], queries, seeds, tie_keys, vectors, knn_idx, out,
        max_chunks=n_tasks,
    )  # fmt: skip
    return out


@njit(nogil=True)
def _rerank_queries(
    worker,
    start,
    stop,
    queries,
    cand_pos,
    tie_keys,
    vectors,
    knn_idx,
    w_idx,
    w_val,
    kth_value,
    k2th_value,
    m_indptr,
    m_indices,
    m_values,
    inv_norm,
    rev_indptr,
    rev_rows,
    rev_w,
    n_rounds,
    row_budget,
    lamb,
    eps,
    grow,
    values,
    pairs,
    marks,
    lists,
    out_val,
    out_pos,
):
    """:func:`rerank_shortlists` (``grow == 0``) or :func:`rerank_grown_shortlists`
    (shortlist ``grow``) for queries ``start .. stop - 1``, in row ``worker`` of the
    scratch arrays (:func:`_scratch`)."""
    n_db = vectors.shape[0]
    k1 = knn_idx.shape[1]
    k2 = w_idx.shape[1]
    top = out_val.shape[1]
    self_id = n_db
    # sparse accumulators over the database nodes plus the query (id g):
    # x = the query's current row, y = its column, mq = M_r[q]; dense: z = M_{R-1} @ x
    # and a copy of M_{R-1}[q] (both zero between queries), side by side in z_mq
    # (columns 0 and 1): the scoring reads both at the same nodes, one cache line
    x_acc, y_acc, mq_acc = values[worker, 0], values[worker, 1], values[worker, 2]
    picked, z_mq = values[worker, 3], pairs[worker]
    x_stamp, y_stamp, mq_stamp, seen = (
        marks[worker, 0],
        marks[worker, 1],
        marks[worker, 2],
        marks[worker, 3],
    )
    x_cols, y_cols, mq_cols, kept = (
        lists[worker, 0],
        lists[worker, 1],
        lists[worker, 2],
        lists[worker, 3],
    )
    # bit n: z[n] is read by the scoring (n is in a candidate's top-k2); 1 bit per node
    # keeps the test in cache where z itself (4 bytes per node) is not
    needed = np.zeros((n_db >> 6) + 1, np.int64)
    w_weights = w_val.reshape(-1)
    # per query: the candidates (shortlist, then the added kNN lists), their similarities,
    # keys and scores; the query's nearest candidates and the ranked results
    width = _pool_width(cand_pos.shape[1], k1, grow, n_db) if grow > 0 else cand_pos.shape[1]
    capacity = width + max(k1 - 1, 0) * k1
    tie = np.empty(width if grow > 0 else 0, np.int64)
    pos = np.empty(capacity, np.int64)
    sims = np.empty(capacity, np.float32)
    keys = np.empty(capacity, np.int64)
    scores = np.empty(capacity, np.float32)
    order = np.empty(max(k1 - 1, 0), np.int64)
    ranked = np.empty(top, np.int64)
    # stamps mark what the accumulators and the pool hold for the current query: query
    # i takes the stamps_per_query stamps after i * stamps_per_query, so a worker's
    # scratch rows need no reset between the chunks it runs
    stamps_per_query = 2 + n_rounds
    stamp = start * stamps_per_query
    for i in range(start, stop):
        # candidates: the shortlist, plus the kNN lists of its k1 - 1 items most
        # similar to the query (they reach relevant items that the shortlist missed)
        stamp += 1
        if grow > 0:
            n_short = _grown_shortlist(
                queries[i], cand_pos[i], vectors, knn_idx, tie_keys, grow,
                pos, sims, keys, seen, stamp, picked, tie,
            )  # fmt: skip
        else:
            n_short = 0
            for c in range(cand_pos.shape[1]):
                u = cand_pos[i, c]
                if u >= 0:
                    pos[n_short] = u
                    keys[n_short] = tie_keys[u]
                    seen[u] = stamp
                    n_short += 1
            _similarities(queries[i], vectors, pos[:n_short], sims[:n_short])
        n_near = _top_by_value(sims[:n_short], keys[:n_short], k1 - 1, order)
        n_valid = n_short
        for t in range(n_near):
            n_valid = _add_list(knn_idx[pos[order[t]]], tie_keys, pos, keys, n_valid, seen, stamp)
        _similarities(queries[i], vectors, pos[n_short:n_valid], sims[n_short:n_valid])
        # the query's own neighbours: by similarity, equal similarities by smaller key
        n_nbr = _top_by_value(sims[:n_valid], keys[:n_valid], k1 - 1, order)

        # round 0: mq = A0[q] + A0[:, q]; x holds A0[q]
        stamp += 1
        n_x = _add(self_id, np.float32(1.0), x_acc, x_stamp, stamp, x_cols, 0)
        for t in range(n_nbr):
            n_x = _add(pos[order[t]], np.float32(1.0), x_acc, x_stamp, stamp, x_cols, n_x)
        n_mq = 0
        for p in range(n_x):
            col = x_cols[p]
            n_mq = _add(col, x_acc[col], mq_acc, mq_stamp, stamp, mq_cols, n_mq)
        n_mq = _add(self_id, np.float32(1.0), mq_acc, mq_stamp, stamp, mq_cols, n_mq)
        for c in range(n_valid):
            if sims[c] >= kth_value[pos[c]]:
                n_mq = _add(pos[c], np.float32(1.0), mq_acc, mq_stamp, stamp, mq_cols, n_mq)

        if n_rounds == 0:
            for c in range(n_valid):
                j = pos[c]
                lists_query = sims[c] >= kth_value[j]
                total = np.float32(1.0) if lists_query else np.float32(0.0)
                for t in range(k1 - 1 if lists_query else k1):
                    if knn_idx[j, t] >= 0:
                        total += _get(knn_idx[j, t], x_acc, x_stamp, stamp)
                scores[c] = total
        else:
            n_k2 = min(k2 - 1, n_valid)
            for r in range(n_rounds):
                base = m_indptr[r]
                stamp += 1
                # A_{r+1}[q] = normalise(M_r[q] + sum_t w_qt M_r[n_qt])
                n_x = 0
                for p in range(n_mq):
                    col = mq_cols[p]
                    n_x = _add(col, mq_acc[col], x_acc, x_stamp, stamp, x_cols, n_x)
                for t in range(n_k2):
                    c = order[t]
                    n = pos[c]
                    w = sims[c] * sims[c]
                    for half in (n, n + n_db):  # A_r[n] and A_r.T[n]
                        for s in range(base[half], base[half + 1]):
                            n_x = _add(
                                m_indices[s], w * m_values[s], x_acc, x_stamp, stamp, x_cols, n_x
                            )
                    n_x = _add(
                        self_id,
                        w * _get(n, mq_acc, mq_stamp, stamp - 1),
                        x_acc,
                        x_stamp,
                        stamp,
                        x_cols,
                        n_x,
                    )
                square_sum = np.float32(0.0)
                for p in range(n_x):
                    square_sum += x_acc[x_cols[p]] * x_acc[x_cols[p]]
                scale = np.float32(1.0) / max(np.sqrt(square_sum), eps)
                for p in range(n_x):
                    x_acc[x_cols[p]] *= scale
                if r == n_rounds - 1:
                    break
                # A_{r+1}[:, q] from the database rows whose top-k2 touch M_r[q]
                n_y = 0
                for p in range(n_mq):
                    n = mq_cols[p]
                    if n == self_id:
                        continue
                    for s in range(rev_indptr[n], rev_indptr[n + 1]):
                        n_y = _add(
                            rev_rows[s], rev_w[s] * mq_acc[n], y_acc, y_stamp, stamp, y_cols, n_y
                        )
                # M_{r+1}[q] = A_{r+1}[q] + A_{r+1}[:, q]
                n_mq = 0
                for p in range(n_x):
                    col = x_cols[p]
                    n_mq = _add(col, x_acc[col], mq_acc, mq_stamp, stamp, mq_cols, n_mq)
                n_mq = _add(self_id, x_acc[self_id], mq_acc, mq_stamp, stamp, mq_cols, n_mq)
                for p in range(n_y):
                    j = y_cols[p]
                    n_mq = _add(
                        j, inv_norm[r, j] * y_acc[j], mq_acc, mq_stamp, stamp, mq_cols, n_mq
                    )
            # mq (stamp - 1 after the last round's stamp) is M_{R-1}[q]; x is A_R[q].
            # z = M_{R-1} @ x over the database (M is symmetric, so z[n] is the dot
            # product of x with row n), scattered from x's few hundred non-zeros
            last = n_rounds - 1
            base = m_indptr[last]
            floor = -np.inf
            if n_x > row_budget:
                for p in range(n_x):
                    picked[p] = x_acc[x_cols[p]]
                floor = kth_largest(picked[:n_x], row_budget)
            # (dense rows, zero outside the entries written here and reset below: the
            # scoring reads them at random, without the accumulators' stamps)
            n_kept = 0
            for p in range(n_x):
                e = x_cols[p]
                if e != self_id and x_acc[e] >= floor:
                    kept[n_kept] = e
                    n_kept += 1
            _mark_scored_nodes(pos[:n_valid], w_idx, needed, z_mq, True)
            for p in range(min(AHEAD, n_kept)):
                _prefetch_m_row(kept[p], base, n_db, m_indices, m_values)
            for p in range(n_kept):
                e = kept[p]
                x_e = x_acc[e]
                if p + AHEAD < n_kept:
                    _prefetch_m_row(kept[p + AHEAD], base, n_db, m_indices, m_values)
                for half in (e, e + n_db):  # A_r[e] and A_r.T[e]
                    for s in range(base[half], base[half + 1]):
                        m = m_indices[s]
                        if (needed[m >> 6] >> (m & 63)) & 1:
                            z_mq[m, 0] += x_e * m_values[s]
            for p in range(n_mq):
                z_mq[mq_cols[p], 1] = mq_acc[mq_cols[p]]
            self_value = _get(self_id, x_acc, x_stamp, stamp)
            # <A_R[q], M_{R-1}[q]>: the term of the candidates that take q into
            # their own top-k2 (in place of their k2-th neighbour)
            x_dot_mq = np.float32(0.0)
            for p in range(n_x):
                e = x_cols[p]
                x_dot_mq += x_acc[e] * z_mq[e, 1]
            last_inv_norm = inv_norm[last]
            for c in range(n_valid):
                j = pos[c]
                if c + 2 * AHEAD < n_valid:  # (the top-k2 lists are cached by the marking)
                    ahead = pos[c + 2 * AHEAD]
                    prefetch(w_weights, ahead * k2)
                    prefetch(w_weights, ahead * k2 + k2 - 1)
                    prefetch(k2th_value, ahead)
                    prefetch(last_inv_norm, ahead)
                takes_query = sims[c] >= k2th_value[j]
                total = sims[c] * sims[c] * x_dot_mq if takes_query else np.float32(0.0)
                for t in range(k2 - 1 if takes_query else k2):
                    n = w_idx[j, t]
                    total += w_val[j, t] * (z_mq[n, 0] + self_value * z_mq[n, 1])
                scores[c] = last_inv_norm[j] * total
            # z was written at the marked nodes only
            _mark_scored_nodes(pos[:n_valid], w_idx, needed, z_mq, False)
            for p in range(n_mq):
                z_mq[mq_cols[p], 1] = 0.0
        for c in range(n_valid):
            scores[c] = (np.float32(1.0) - lamb) * scores[c] + lamb * sims[c]
        n_ranked = _top_by_value(scores[:n_valid], keys[:n_valid], top, ranked)
        for t in range(n_ranked):
            out_val[i, t] = scores[ranked[t]]
            out_pos[i, t] = pos[ranked[t]]


def _scratch(n_workers: int, n_db: int):
    """Scratch rows of ``n_db + 1`` entries for each of ``n_workers`` threads:
    ``values [n_workers, 4, n_db + 1]`` float32 (x, y, mq accumulators, the selection
    buffer), ``pairs [n_workers, n_db + 1, 2]`` float32 zeros (z and the copy of mq,
    node by node), ``marks [n_workers, 4, n_db + 1]`` int64 -1 (the
    three accumulators' stamps and the pool's), ``lists [n_workers, 4, n_db + 1]``
    int64 (the accumulators' touched columns and the kept entries of x).

    Allocated by numpy rather than inside the kernel: numpy asks the kernel for
    transparent huge pages on arrays this large (numba's allocator does not), and the
    kernel reads and writes them at scattered nodes, so with 4 KB pages nearly every
    access would also miss the TLB (at 1M nodes, about 10% of the re-ranking's time).
    """
    values = np.zeros((n_workers, 4, n_db + 1), np.float32)
    pairs = np.zeros((n_workers, n_db + 1, 2), np.float32)
    marks = np.full((n_workers, 4, n_db + 1), -1, np.int64)
    lists = np.empty((n_workers, 4, n_db + 1), np.int64)
    return values, pairs, marks, lists


def rerank_shortlists(
    queries,
    cand_pos,
    tie_keys,
    vectors,
    knn_idx,
    w_idx,
    w_val,
    kth_value,
    k2th_value,
    m_indptr,
    m_indices,
    m_values,
    inv_norm,
    rev_indptr,
    rev_rows,
    rev_w,
    n_rounds,
    row_budget,
    lamb,
    eps,
    out_val,
    out_pos,
    *,
    grow=0,
):
    """Top-k re-ranked candidates of each query (its shortlist, plus the kNN lists of
    the shortlisted items most similar to it).

    Args:
        queries: ``[b, d]`` float32 unit rows.
        cand_pos: ``[b, L]`` int64 database nodes of the shortlist (-1 = none).
        tie_keys: ``[g]`` int64 distinct keys: equal similarities and scores rank the
            node with the smaller key first.
        vectors: ``[g, d]`` float32 unit database rows.
        knn_idx: ``[g, k1]`` int64 database kNN lists, -1 where short (used when R = 0).
        w_idx: ``[g, k2]`` int64 top-k2 neighbours; w_val ``[g, k2]`` float32 weights.
        kth_value: ``[g]`` float32 the k1-th similarity of each list (-inf if short).
        k2th_value: ``[g]`` float32 the k2-th similarity of each list (-inf if short).
        m_indptr: ``[R, 2g + 1]`` int64 absolute offsets into ``m_indices`` (int32) /
            ``m_values`` (float32) of the rows of ``A_r`` (rows ``0 .. g-1``) and ``A_r.T``
            (rows ``g .. 2g-1``), ``r < R``: ``M_r[n]`` is rows ``n`` and ``g + n``.
        inv_norm: ``[R, g]`` float32, row r: ``1 / max(|A_{r+1}[j]|, eps)``.
        rev_indptr, rev_rows, rev_w: CSR of ``W.T``: the rows j (and weights) that list
            node n among their top-k2.
        n_rounds: R; 0 means no propagation (binary kNN rows, k1 = knn_idx width).
        row_budget: the query's last row enters ``z`` with its largest entries only.
        lamb: weight of the cosine similarity in the final score.
        eps: the norm floor.
        (The queries run in parallel chunks on ``numba.get_num_threads()`` threads;
        each thread owns scratch rows of g + 1 entries, about 88 bytes per database node.)
        out_val: ``[b, k]`` float32 output, ``-inf`` where fewer than k candidates.
        out_pos: ``[b, k]`` int64 output positions, -1 where fewer than k candidates.
        grow: 0, or (:func:`rerank_grown_shortlists`) grow each shortlist from
            ``cand_pos`` as seeds to at most ``grow`` nodes.
    """
    n_workers = worker_count(cand_pos.shape[0])
    if n_workers == 0:
        return
    values, pairs, marks, lists = _scratch(n_workers, vectors.shape[0])
    parallel_chunks(
        _rerank_queries,
        cand_pos.shape[0],
        queries,
        cand_pos,
        tie_keys,
        vectors,
        knn_idx,
        w_idx,
        w_val,
        kth_value,
        k2th_value,
        m_indptr,
        m_indices,
        m_values,
        inv_norm,
        rev_indptr,
        rev_rows,
        rev_w,
        n_rounds,
        row_budget,
        lamb,
        eps,
        grow,
        values,
        pairs,
        marks,
        lists,
        out_val,
        out_pos,
        pass_worker=True,
    )


def rerank_grown_shortlists(
    queries,
    seeds,
    tie_keys,
    vectors,
    knn_idx,
    w_idx,
    w_val,
    kth_value,
    k2th_value,
    m_indptr,
    m_indices,
    m_values,
    inv_norm,
    rev_indptr,
    rev_rows,
    rev_w,
    n_rounds,
    row_budget,
    lamb,
    eps,
    shortlist,
    out_val,
    out_pos,
):
    """:func:`rerank_shortlists` of shortlists grown from seeds through the kNN lists
    (see the module doc): each query's shortlist is the ``shortlist`` nodes most similar
    to it among its seeds and their ``knn_idx`` rows (all of them when fewer).

    Args:
        seeds: ``[b, s]`` int64 database nodes (-1 = none; repeats count once).
        shortlist: the largest shortlist, ``>= 1``.
        the others: as :func:`rerank_shortlists` (``knn_idx`` is used in every case).
    """
    _check_shortlist(shortlist)
    rerank_shortlists(
        queries,
        seeds,
        tie_keys,
        vectors,
        knn_idx,
        w_idx,
        w_val,
        kth_value,
        k2th_value,
        m_indptr,
        m_indices,
        m_values,
        inv_norm,
        rev_indptr,
        rev_rows,
        rev_w,
        n_rounds,
        row_budget,
        lamb,
        eps,
        out_val,
        out_pos,
        grow=shortlist,
    )
