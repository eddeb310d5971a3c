"""Neighbour aggregation: rows of ``W @ S`` for sparse W and S, as Triton kernels.

W (the weights) and S (the rows being summed) are sparse rows in CSR form
(:class:`CsrRows`), so the kernels serve every product the pipeline needs: a
propagation round (``W`` = the k2 squared-similarity weights, ``S = A + A.T``), the
gallery rows' norms, and ``Z = A[queries] @ M`` of the final scoring (``W`` = the
queries' rows).

- :func:`aggregate_sparse`: L2-normalised rows (and their norms) as CSR. Work and memory
  traffic follow the non-zeros, never the ``N`` columns: each program sums its rows
  into a private dense scratch row with atomic adds (source rows overlap), then reads
  the sums back with atomic exchanges that reset the scratch to 0. The first read of a
  column gets its sum, repeated reads of it get 0 and are dropped, so no sort is needed.
- :func:`aggregate_dense`: plain dense ``[r, n_cols]`` rows (the ``z`` of the scoring).

Sums are accumulated with fp32 atomics: their order, and so the last bits of a sum,
may change from run to run on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .. import limits
from ..limits import NORM_EPS
from . import launch_config


@dataclass(frozen=True)
class CsrRows:
    """Rows of a sparse ``[n_rows, n_cols]`` fp32 matrix in CSR form, as torch tensors.

    Attributes:
        indptr: ``[n_rows + 1]`` int64; row r is ``indices/values[indptr[r]:indptr[r + 1]]``.
        indices: ``[nnz]`` int64 column ids, unique within a row (in any order).
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
    def from_fixed_width(
        cls, column_ids: torch.Tensor, values: torch.Tensor, n_cols: int
    ) -> CsrRows:
        """Rows with exactly ``t`` entries each: ``column_ids`` int64 / ``values`` ``[n, t]``."""
        n_rows, per_row = column_ids.shape
        indptr = torch.arange(
            0, n_rows * per_row + 1, per_row, dtype=torch.int64, device=column_ids.device
        )
        return cls(
            indptr,
            column_ids.reshape(-1).contiguous(),
            values.reshape(-1).to(torch.float32).contiguous(),
            n_cols,
        )

    def row_slice(self, start: int, stop: int) -> CsrRows:
        """Rows ``start:stop`` as a view: the sliced indptr still points into the
        shared index and value buffers (the kernels read offsets as they are)."""
        return CsrRows(self.indptr[start : stop + 1], self.indices, self.values, self.n_cols)

    @classmethod
    def stack(cls, parts: list[CsrRows]) -> CsrRows:
        """The rows of ``parts`` (each with an indptr starting at 0), one after another."""
        indptrs, offset = [parts[0].indptr[:1]], 0
        for part in parts:
            indptrs.append(part.indptr[1:] + offset)
            offset += part.indices.shape[0]
        return cls(
            torch.cat(indptrs),
            torch.cat([p.indices for p in parts]),
            torch.cat([p.values for p in parts]),
            parts[0].n_cols,
        )

    def rebased(self) -> CsrRows:
        """The same rows with an indptr starting at 0 and buffers holding only them."""
        first, last = int(self.indptr[0]), int(self.indptr[-1])
        return CsrRows(
            self.indptr - first, self.indices[first:last], self.values[first:last], self.n_cols
        )


@triton.jit
def _weighted_sources(w_cols_ptr, w_vals_ptr, s_indptr_ptr, w_block, w_stop, BLOCK_W: tl.constexpr):
    """Entries ``w_block : w_block + BLOCK_W`` of W: ``(offsets, mask, weights, source
    row starts, source row stops)``, each ``[BLOCK_W]``."""
    o_w = w_block + tl.arange(0, BLOCK_W)
    m_w = o_w < w_stop
    b_source = tl.load(w_cols_ptr + o_w, mask=m_w, other=0)
    b_weight = tl.load(w_vals_ptr + o_w, mask=m_w, other=0.0)
    b_start = tl.load(s_indptr_ptr + b_source, mask=m_w, other=0)
    b_stop = tl.load(s_indptr_ptr + b_source + 1, mask=m_w, other=0)
    return o_w, m_w, b_weight, b_start, b_stop


@triton.jit
def _scatter_row(
    p_row,
    w_start,
    w_stop,
    w_cols_ptr,
    w_vals_ptr,
    s_indptr_ptr,
    s_cols_ptr,
    s_vals_ptr,
    BLOCK_W: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """``p_row[c] += w * S[s, c]`` for every entry ``(s, w)`` of one row of W: BLOCK_W
    source rows at a time, BLOCK_E entries of each per step."""
    for w_block in range(w_start, w_stop, BLOCK_W):
        _, _, b_weight, b_start, b_stop = _weighted_sources(
            w_cols_ptr, w_vals_ptr, s_indptr_ptr, w_block, w_stop, BLOCK_W
        )
        for e_start in range(0, tl.max(b_stop - b_start, axis=0), BLOCK_E):
            o_e = b_start[:, None] + e_start + tl.arange(0, BLOCK_E)[None, :]
            m_e = o_e < b_stop[:, None]
            b_cols = tl.load(s_cols_ptr + o_e, mask=m_e, other=0)
            b_vals = tl.load(s_vals_ptr + o_e, mask=m_e, other=0.0)
            # the row is this program's alone, and barriers order its steps: no fences
            tl.atomic_add(
                p_row + b_cols, b_weight[:, None] * b_vals, mask=m_e, sem="relaxed", scope="cta"
            )


@triton.jit
def _sparse_rows_kernel(
    w_indptr_ptr,
    w_cols_ptr,
    w_vals_ptr,
    w_out_ptr,
    s_indptr_ptr,
    s_cols_ptr,
    s_vals_ptr,
    scratch_ptr,
    out_cols_ptr,
    out_vals_ptr,
    norms_ptr,
    n_rows,
    n_cols,
    eps,
    WRITE_ROWS: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_OUT: tl.constexpr,
):
    i_program = tl.program_id(0)
    p_scratch = scratch_ptr + i_program.to(tl.int64) * n_cols  # all zeros between rows
    # exchanged as int32 bits (the same zero): the interpreter has no fp32 atomic_xchg
    p_scratch_bits = p_scratch.to(tl.pointer_type(tl.int32), bitcast=True)
    for i_r in range(i_program, n_rows, tl.num_programs(0)):
        w_start = tl.load(w_indptr_ptr + i_r)
        w_stop = tl.load(w_indptr_ptr + i_r + 1)
        _scatter_row(
            p_scratch,
            w_start,
            w_stop,
            w_cols_ptr,
            w_vals_ptr,
            s_indptr_ptr,
            s_cols_ptr,
            s_vals_ptr,
            BLOCK_W,
            BLOCK_E,
        )
        tl.debug_barrier()  # every add of this row lands before it is read back
        # Read back along the same entries; entry e of source row p of W goes to slot
        # w_out[p] + e of the output (0 there when its column was read before).
        b_squares = tl.zeros([BLOCK_W, BLOCK_E], dtype=tl.float32)
        for w_block in range(w_start, w_stop, BLOCK_W):
            o_w, m_w, _, b_start, b_stop = _weighted_sources(
                w_cols_ptr, w_vals_ptr, s_indptr_ptr, w_block, w_stop, BLOCK_W
            )
            b_out = tl.load(w_out_ptr + o_w, mask=m_w, other=0)
            for e_start in range(0, tl.max(b_stop - b_start, axis=0), BLOCK_E):
                o_e = e_start + tl.arange(0, BLOCK_E)[None, :]
                m_e = o_e < (b_stop - b_start)[:, None]
                b_cols = tl.load(s_cols_ptr + b_start[:, None] + o_e, mask=m_e, other=0)
                b_bits = tl.atomic_xchg(
                    p_scratch_bits + b_cols,
                    tl.zeros([BLOCK_W, BLOCK_E], dtype=tl.int32),
                    mask=m_e,
                    sem="relaxed",
                    scope="cta",
                )
                b_sum = tl.where(m_e, b_bits.to(tl.float32, bitcast=True), 0.0)
                b_squares += b_sum * b_sum
                if WRITE_ROWS:
                    o_out = b_out[:, None] + o_e
                    tl.store(out_cols_ptr + o_out, b_cols, mask=m_e)
                    tl.store(out_vals_ptr + o_out, b_sum, mask=m_e)
        norm = tl.sqrt(tl.sum(tl.sum(b_squares, axis=1), axis=0))
        tl.store(norms_ptr + i_r, norm)
        if WRITE_ROWS:
            tl.debug_barrier()  # the row's slots are written before they are scaled
            divisor = tl.maximum(norm, eps)
            out_stop = tl.load(w_out_ptr + w_stop)
            for out_start in range(tl.load(w_out_ptr + w_start), out_stop, BLOCK_OUT):
                o_out = out_start + tl.arange(0, BLOCK_OUT)
                m_out = o_out < out_stop
                b_vals = tl.load(out_vals_ptr + o_out, mask=m_out, other=0.0)
                tl.store(out_vals_ptr + o_out, b_vals / divisor, mask=m_out)
        tl.debug_barrier()  # the scratch row is all zeros again before the next row


def _slot_offsets(weights: CsrRows, source: CsrRows) -> torch.Tensor:
    """``[nnz(W) + 1]`` int64: entry p of W (indptr from 0) owns output slots
    ``offsets[p]:offsets[p + 1]``, one per entry of its source row."""
    offsets = torch.zeros(
        weights.indices.shape[0] + 1, dtype=torch.int64, device=weights.indices.device
    )
    torch.cumsum(source.indptr.diff()[weights.indices], dim=0, out=offsets[1:])
    return offsets


def _row_chunks(row_slots: torch.Tensor, max_slots: int) -> list[tuple[int, int]]:
    """Row ranges owning at most ``max_slots`` slots each (or a single row), from the
    ``[r + 1]`` CPU slot offsets of the rows."""
    chunks, start, n_rows = [], 0, row_slots.shape[0] - 1
    while start < n_rows:
        fits = int(torch.searchsorted(row_slots, row_slots[start] + max_slots, right=True)) - 1
        stop = min(n_rows, max(fits, start + 1))
        chunks.append((start, stop))
        start = stop
    return chunks


def _launch_sparse(weights: CsrRows, source: CsrRows, *, write_rows: bool):
    """One launch of the sparse kernel over all rows of ``weights`` (indptr from 0).
    Returns ``(rows or None, norms)`` as :func:`aggregate_sparse`."""
    device = source.values.device
    n_rows = weights.n_rows
    w_out = _slot_offsets(weights, source)
    n_slots = int(w_out[-1]) if write_rows else 1
    out_cols = torch.empty(n_slots, dtype=torch.int64, device=device)
    out_vals = torch.empty(n_slots, dtype=torch.float32, device=device)
    norms = torch.zeros(n_rows, dtype=torch.float32, device=device)
    if n_rows:
        n_programs = launch_config.program_count(n_rows, device)
        scratch = torch.zeros(n_programs, source.n_cols, dtype=torch.float32, device=device)
        buffers = [
            t.contiguous()
            for t in (
                weights.indptr,
                weights.indices,
                weights.values,
                w_out,
                source.indptr,
                source.indices,
                source.values,
            )
        ]
        _sparse_rows_kernel[(n_programs,)](
            *buffers,
            scratch,
            out_cols,
            out_vals,
            norms,
            n_rows,
            source.n_cols,
            NORM_EPS,
            WRITE_ROWS=write_rows,
            **launch_config.aggregate_sparse(),
        )
    if not write_rows:
        return None, norms
    keep = out_vals != 0  # drops the repeated columns' slots
    kept_before = torch.zeros(n_slots + 1, dtype=torch.int64, device=device)
    torch.cumsum(keep, dim=0, out=kept_before[1:])
    indptr = kept_before[w_out[weights.indptr]]
    return CsrRows(indptr, out_cols[keep], out_vals[keep], source.n_cols), norms


def aggregate_sparse(weights: CsrRows, source: CsrRows, *, write_rows: bool = True):
    """Rows of ``W @ S``, each divided by ``max(its L2 norm, 1e-12)``, as CSR.

    Args:
        weights: ``[r, n_s]`` W: row i lists the source rows to add and their weights.
        source: ``[n_s, n_cols]`` S.
        write_rows: False to compute the norms alone (the rows are then not kept).

    Returns:
        ``(rows, norms)``: ``rows`` a :class:`CsrRows` ``[r, n_cols]`` (non-zero entries
        only, columns in no particular order) or None without ``write_rows``; ``norms``
        the ``[r]`` float32 L2 norms before normalisation.

    Memory: one output slot per summed entry (the lengths of the source rows named by
    W, about 21 bytes each with the compaction) before the zeros are dropped; rows are
    taken in launches of at most ``limits.GPU_MAX_SLOTS_PER_LAUNCH`` slots. Plus one ``n_cols``
    scratch row per program.
    """
    weights = weights.rebased()
    if not write_rows:
        return _launch_sparse(weights, source, write_rows=False)
    row_slots = _slot_offsets(weights, source)[weights.indptr].cpu()
    parts = [
        _launch_sparse(weights.row_slice(start, stop).rebased(), source, write_rows=True)
        for start, stop in _row_chunks(row_slots, limits.GPU_MAX_SLOTS_PER_LAUNCH) or [(0, 0)]
    ]
    if len(parts) == 1:
        return parts[0]
    return CsrRows.stack([rows for rows, _ in parts]), torch.cat([norms for _, norms in parts])


@triton.jit
def _dense_rows_kernel(
    w_indptr_ptr,
    w_cols_ptr,
    w_vals_ptr,
    s_indptr_ptr,
    s_cols_ptr,
    s_vals_ptr,
    out_ptr,
    n_cols,
    BLOCK_W: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    i_r = tl.program_id(0)
    _scatter_row(
        out_ptr + i_r.to(tl.int64) * n_cols,
        tl.load(w_indptr_ptr + i_r),
        tl.load(w_indptr_ptr + i_r + 1),
        w_cols_ptr,
        w_vals_ptr,
        s_indptr_ptr,
        s_cols_ptr,
        s_vals_ptr,
        BLOCK_W,
        BLOCK_E,
    )


def aggregate_dense(weights: CsrRows, source: CsrRows) -> torch.Tensor:
    """Dense rows ``W @ S`` (not normalised), one program per row.

    Args:
        weights: ``[r, n_s]`` W (a :meth:`CsrRows.row_slice` view is fine).
        source: ``[n_s, n_cols]`` S.

    Returns:
        ``[r, n_cols]`` float32 on the inputs' device.
    """
    rows = torch.zeros(
        weights.n_rows, source.n_cols, dtype=torch.float32, device=source.values.device
    )
    if weights.n_rows:
        buffers = [
            t.contiguous()
            for t in (
                weights.indptr,
                weights.indices,
                weights.values,
                source.indptr,
                source.indices,
                source.values,
            )
        ]
        _dense_rows_kernel[(weights.n_rows,)](
            *buffers, rows, source.n_cols, **launch_config.aggregate_dense()
        )
    return rows
