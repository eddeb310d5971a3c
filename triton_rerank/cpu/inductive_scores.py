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
  ``<A_R[q], A_R[j]> = inv_norm_{R-1}[j] * sum_t w_jt (<A_R[q], M_{R-1}[n_jt]> +
  A_R[q, q] * M_{R-1}[q, n_jt])``, the dot products cached per node ``n``.

Each query touches its candidates, their neighbours and a few hundred reverse
edges: the cost does not grow with the database size.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True)
def _add(col, value, acc, stamp_of, stamp, touched, n_touched):
    """``acc[col] += value`` in a sparse accumulator; returns the new touched count."""
    if stamp_of[col] != stamp:
        stamp_of[col] = stamp
        acc[col] = value
        touched[n_touched] = col
        return n_touched + 1
    acc[col] += value
    return n_touched


@nb.njit(cache=True)
def _get(col, acc, stamp_of, stamp):
    return acc[col] if stamp_of[col] == stamp else np.float32(0.0)


@nb.njit(parallel=True, cache=True)
def rerank_shortlists(queries, cand_pos, vectors, knn_idx, w_idx, w_val, kth_value,
                      m_indptr, m_indices, m_values, inv_norm, rev_indptr, rev_rows, rev_w,
                      n_rounds, lamb, eps, n_tasks, out_val, out_pos):
    """Top-k re-ranked candidates of each query.

    Args:
        queries: ``[b, d]`` float32 unit rows.
        cand_pos: ``[b, L]`` int64 database positions of the shortlist (-1 = none).
        vectors: ``[g, d]`` float32 unit database rows.
        knn_idx: ``[g, k1]`` int64 database kNN lists, -1 where short (used when R = 0).
        w_idx: ``[g, k2]`` int64 top-k2 neighbours; w_val ``[g, k2]`` float32 weights.
        kth_value: ``[g]`` float32 the k1-th similarity of each list (-inf if short).
        m_indptr: ``[R, g + 1]`` int64 absolute offsets of the rows of ``M_0 .. M_{R-1}``
            into ``m_indices`` (int64) / ``m_values`` (float32).
        inv_norm: ``[R, g]`` float32, row r: ``1 / max(|A_{r+1}[j]|, eps)``.
        rev_indptr, rev_rows, rev_w: CSR of ``W.T``: the rows j (and weights) that list
            node n among their top-k2.
        n_rounds: R; 0 means no propagation (binary kNN rows, k1 = knn_idx width).
        lamb: weight of the cosine similarity in the final score.
        eps: the norm floor.
        n_tasks: parallel tasks (each owns scratch rows of g + 1 entries).
        out_val: ``[b, k]`` float32 output, ``-inf`` where fewer than k candidates.
        out_pos: ``[b, k]`` int64 output positions, -1 where fewer than k candidates.
    """
    n_batch, n_cand = cand_pos.shape
    n_db, dim = vectors.shape
    k1 = knn_idx.shape[1]
    k2 = w_idx.shape[1]
    top = out_val.shape[1]
    self_id = n_db
    n_tasks = min(n_batch, n_tasks)
    for task in nb.prange(n_tasks):
        # sparse accumulators over the database nodes plus the query (id g):
        # x = the query's current row, y = its column, mq = M_r[q], dots = cache
        x_acc = np.zeros(n_db + 1, np.float32)
        x_stamp = np.full(n_db + 1, -1, np.int64)
        x_cols = np.empty(n_db + 1, np.int64)
        y_acc = np.zeros(n_db + 1, np.float32)
        y_stamp = np.full(n_db + 1, -1, np.int64)
        y_cols = np.empty(n_db + 1, np.int64)
        mq_acc = np.zeros(n_db + 1, np.float32)
        mq_stamp = np.full(n_db + 1, -1, np.int64)
        mq_cols = np.empty(n_db + 1, np.int64)
        dot_acc = np.zeros(n_db + 1, np.float32)
        dot_stamp = np.full(n_db + 1, -1, np.int64)
        stamp = 0
        for i in range(task * n_batch // n_tasks, (task + 1) * n_batch // n_tasks):
            pos = np.sort(cand_pos[i][cand_pos[i] >= 0])
            n_valid = pos.shape[0]
            sims = np.empty(n_valid, np.float32)
            for c in range(n_valid):
                s = np.float32(0.0)
                for e in range(dim):
                    s += queries[i, e] * vectors[pos[c], e]
                sims[c] = s
            # by similarity, equal similarities by smaller position (pos is ascending)
            order = np.argsort(-sims, kind="mergesort")
            n_nbr = min(k1 - 1, n_valid)

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

            scores = np.empty(n_valid, np.float32)
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
                        for s in range(base[n], base[n + 1]):
                            n_x = _add(m_indices[s], w * m_values[s], x_acc, x_stamp, stamp,
                                       x_cols, n_x)
                        n_x = _add(self_id, w * _get(n, mq_acc, mq_stamp, stamp - 1), x_acc,
                                   x_stamp, stamp, x_cols, n_x)
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
                            n_y = _add(rev_rows[s], rev_w[s] * mq_acc[n], y_acc, y_stamp,
                                       stamp, y_cols, n_y)
                    # M_{r+1}[q] = A_{r+1}[q] + A_{r+1}[:, q]
                    n_mq = 0
                    for p in range(n_x):
                        col = x_cols[p]
                        n_mq = _add(col, x_acc[col], mq_acc, mq_stamp, stamp, mq_cols, n_mq)
                    n_mq = _add(self_id, x_acc[self_id], mq_acc, mq_stamp, stamp, mq_cols,
                                n_mq)
                    for p in range(n_y):
                        j = y_cols[p]
                        n_mq = _add(j, inv_norm[r, j] * y_acc[j], mq_acc, mq_stamp, stamp,
                                    mq_cols, n_mq)
                # mq (stamp - 1 after the last round's stamp) is M_{R-1}[q]; x is A_R[q]
                last = n_rounds - 1
                base = m_indptr[last]
                self_value = _get(self_id, x_acc, x_stamp, stamp)
                for c in range(n_valid):
                    j = pos[c]
                    total = np.float32(0.0)
                    for t in range(k2):
                        n = w_idx[j, t]
                        if dot_stamp[n] != stamp:
                            d = self_value * _get(n, mq_acc, mq_stamp, stamp - 1)
                            for s in range(base[n], base[n + 1]):
                                d += m_values[s] * _get(m_indices[s], x_acc, x_stamp, stamp)
                            dot_stamp[n] = stamp
                            dot_acc[n] = d
                        total += w_val[j, t] * dot_acc[n]
                    scores[c] = inv_norm[last, j] * total
            for c in range(n_valid):
                scores[c] = (np.float32(1.0) - lamb) * scores[c] + lamb * sims[c]
            ranked = np.argsort(-scores, kind="mergesort")
            for t in range(min(top, n_valid)):
                out_val[i, t] = scores[ranked[t]]
                out_pos[i, t] = pos[ranked[t]]
