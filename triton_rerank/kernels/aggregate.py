"""Neighbour aggregation: dense rows ``out[r] = sum_p w[r, p] * S[c[r, p]]``, optionally
L2-normalised, in one kernel.

W (the weights) and S (the rows being summed) are sparse rows in CSR form
(:class:`CsrRows`), so the kernel serves every product the pipeline needs: a
propagation round (``W`` = the k2 squared-similarity weights, ``S = A + A.T``), the
gallery rows' norms, and ``Z = A[queries] @ M`` of the final scoring (``W`` = the
queries' rows). The output is a dense ``[r, n_cols]`` block, so callers take rows a
block at a time (its size bounds the memory) and compact them to CSR when needed.

One program per output row: it scatters each weighted source row into the dense row
with atomic adds (source rows overlap), then, when asked, sums the squares of the row
and divides it by ``max(norm, 1e-12)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..propagate import NORM_EPS


@dataclass(frozen=True)
class CsrRows:
    """Rows of a sparse ``[n_rows, n_cols]`` fp32 matrix in CSR form, as torch tensors.

    Attributes:
        indptr: ``[n_rows + 1]`` int64; row r is ``indices/values[indptr[r]:indptr[r + 1]]``.
        indices: ``[nnz]`` int64 column ids, unique within a row.
        values: ``[nnz]`` float32.
        n_cols: number of columns.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    n_cols: int

    @property
    def n_rows(self) -> int:
        return self.indptr.shape[0] - 1

    @classmethod
    def from_fixed_width(cls, column_ids: torch.Tensor, values: torch.Tensor,
                         n_cols: int) -> CsrRows:
        """Rows with exactly ``t`` entries each: ``column_ids`` int64 / ``values`` ``[n, t]``."""
        n_rows, per_row = column_ids.shape
        indptr = torch.arange(0, n_rows * per_row + 1, per_row, dtype=torch.int64,
                              device=column_ids.device)
        return cls(indptr, column_ids.reshape(-1).contiguous(),
                   values.reshape(-1).to(torch.float32).contiguous(), n_cols)

    def row_slice(self, start: int, stop: int) -> CsrRows:
        """Rows ``start:stop`` as a view: the sliced indptr still points into the
        shared index and value buffers (the kernel reads offsets as they are)."""
        return CsrRows(self.indptr[start:stop + 1], self.indices, self.values, self.n_cols)


@triton.jit
def _aggregate_kernel(w_indptr_ptr, w_cols_ptr, w_vals_ptr, s_indptr_ptr, s_cols_ptr,
                      s_vals_ptr, out_ptr, norms_ptr, n_cols, eps,
                      NORMALIZE: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_E: tl.constexpr,
                      BLOCK_SWEEP: tl.constexpr):
    i_r = tl.program_id(0)
    p_out = out_ptr + i_r.to(tl.int64) * n_cols
    w_start = tl.load(w_indptr_ptr + i_r)
    w_stop = tl.load(w_indptr_ptr + i_r + 1)
    # BLOCK_W weighted source rows at a time, BLOCK_E entries of each per step
    for w_block in range(w_start, w_stop, BLOCK_W):
        o_w = w_block + tl.arange(0, BLOCK_W)
        m_w = o_w < w_stop
        b_source = tl.load(w_cols_ptr + o_w, mask=m_w, other=0)
        b_weight = tl.load(w_vals_ptr + o_w, mask=m_w, other=0.0)
        b_start = tl.load(s_indptr_ptr + b_source, mask=m_w, other=0)
        b_stop = tl.load(s_indptr_ptr + b_source + 1, mask=m_w, other=0)
        for e_start in range(0, tl.max(b_stop - b_start, axis=0), BLOCK_E):
            o_e = b_start[:, None] + e_start + tl.arange(0, BLOCK_E)[None, :]
            m_e = o_e < b_stop[:, None]
            b_cols = tl.load(s_cols_ptr + o_e, mask=m_e, other=0)
            b_vals = tl.load(s_vals_ptr + o_e, mask=m_e, other=0.0)
            tl.atomic_add(p_out + b_cols, b_weight[:, None] * b_vals, mask=m_e)
    if NORMALIZE:
        tl.debug_barrier()  # every atomic add of this row lands before the sweep reads it
        b_squares = tl.zeros([BLOCK_SWEEP], dtype=tl.float32)
        for c_start in range(0, n_cols, BLOCK_SWEEP):
            o_c = c_start + tl.arange(0, BLOCK_SWEEP)
            b_row = tl.load(p_out + o_c, mask=o_c < n_cols, other=0.0)
            b_squares += b_row * b_row
        norm = tl.sqrt(tl.sum(b_squares, axis=0))
        tl.store(norms_ptr + i_r, norm)
        divisor = tl.maximum(norm, eps)
        for c_start in range(0, n_cols, BLOCK_SWEEP):
            o_c = c_start + tl.arange(0, BLOCK_SWEEP)
            m_c = o_c < n_cols
            b_row = tl.load(p_out + o_c, mask=m_c, other=0.0)
            tl.store(p_out + o_c, b_row / divisor, mask=m_c)


def aggregate_rows(weights: CsrRows, source: CsrRows, *, normalize: bool):
    """Dense rows ``W @ S``, each L2-normalised when ``normalize``.

    Args:
        weights: ``[r, n_s]`` W: row r lists the source rows to add and their weights.
        source: ``[n_s, n_cols]`` S.
        normalize: divide each output row by ``max(its L2 norm, 1e-12)``.

    Returns:
        ``(rows [r, n_cols] float32, norms)`` on the inputs' device; ``norms`` is the
        ``[r]`` float32 L2 norms before normalisation, or None without ``normalize``.
    """
    device = source.values.device
    n_rows = weights.n_rows
    rows = torch.zeros(n_rows, source.n_cols, dtype=torch.float32, device=device)
    norms = torch.empty(n_rows if normalize else 1, dtype=torch.float32, device=device)
    if n_rows == 0:
        return rows, norms if normalize else None
    buffers = [t.contiguous() for t in (weights.indptr, weights.indices, weights.values,
                                        source.indptr, source.indices, source.values)]
    _aggregate_kernel[(n_rows,)](
        *buffers, rows, norms, source.n_cols, NORM_EPS, NORMALIZE=normalize,
        BLOCK_W=16, BLOCK_E=64, BLOCK_SWEEP=1024, num_warps=4)
    return rows, norms if normalize else None
