"""Final re-ranked scores for a block of queries, without the [N, N] matrix.

For query row ``i`` and gallery item ``j`` the score is ``<A[i], A[q + j]>`` where
the gallery row is itself a weighted sum of rows of a symmetric sparse matrix M::

    A[q + j] = inv_norm[j] * sum_t g_val[j, t] * M[g_idx[j, t]]

so ``<A[i], A[q + j]> = inv_norm[j] * sum_t g_val[j, t] * Z[g_idx[j, t]]`` with
``Z = A[i] @ M`` (a dense row of length N, built once per query). This needs
``nnz(A[i]) * nnz(M row)`` + ``g * t`` operations per query, instead of
``nnz(A[i]) * nnz(A[q + j])`` summed over the gallery (about 4x fewer at
Market-1501 scale).

The last propagation round gives ``M = A + A.T`` (symmetric) and ``g_val`` = the
gallery's squared-similarity weights; without propagation M is the identity and the
gallery rows are the binary kNN rows.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .jit import njit

# Parallel tasks per call; each owns one dense scratch row of N floats for its queries.
_TASKS = 64


@njit(parallel=True)
def score_queries(q_indptr, q_indices, q_values, m_indptr, m_indices, m_values,
                  g_idx, g_val, g_inv_norm, lamb, out):
    """Write ``(1 - lamb) * score + lamb * out`` into ``out`` (``out`` holds the base).

    Args:
        q_indptr, q_indices, q_values: CSR of the block's query rows of A, ``[b, N]``.
        m_indptr, m_indices, m_values: CSR of the symmetric matrix M, ``[N, N]``.
        g_idx: ``[g, t]`` int64 node ids making up each gallery row.
        g_val: ``[g, t]`` float32 their weights.
        g_inv_norm: ``[g]`` float32 scale of each gallery row.
        lamb: mixing weight of the base similarity; with 0 the base is not read.
        out: ``[b, g]`` float32; holds ``Xq @ Xg.T`` on entry when ``lamb > 0``.
    """
    n_queries, n_gallery = out.shape
    n_nodes = m_indptr.shape[0] - 1
    keep = np.float32(1.0 - lamb)
    mix = np.float32(lamb)
    n_tasks = min(n_queries, _TASKS)
    for task in nb.prange(n_tasks):
        z = np.zeros(n_nodes, dtype=np.float32)
        for i in range(task * n_queries // n_tasks, (task + 1) * n_queries // n_tasks):
            for p in range(q_indptr[i], q_indptr[i + 1]):
                c = q_indices[p]
                v = q_values[p]
                for s in range(m_indptr[c], m_indptr[c + 1]):
                    z[m_indices[s]] += v * m_values[s]
            for j in range(n_gallery):
                total = np.float32(0.0)
                for t in range(g_idx.shape[1]):
                    total += g_val[j, t] * z[g_idx[j, t]]
                score = total * g_inv_norm[j]
                if lamb == 0.0:
                    out[i, j] = score
                else:
                    out[i, j] = keep * score + mix * out[i, j]
            z[:] = 0.0
