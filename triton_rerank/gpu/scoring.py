"""Final re-ranked scores of a block of queries: ``(1 - lamb) * <A[i], A[q + j]> + lamb *
<xq_i, xg_j>``, as the full ``[b, g]`` block or as its top-K per query.

The GNN term uses the two-hop form of ``tiles.two_hop_tile`` (``z = A[queries] @ M``
comes from ``aggregate.aggregate_dense``), the ``lamb`` term a ``tl.dot`` tile over the
features, both in one score tile. The full block is written tile by tile; the top-K
path streams over gallery tiles with the kernel of ``streaming_topk.py`` and writes
only ``[b, K]``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch_config
from .streaming_topk import streaming_topk
from .tiles import TwoHopTerms, input_precision, score_tile


@triton.jit
def _score_block_kernel(
    x_ptr,
    y_ptr,
    z_ptr,
    g_idx_ptr,
    g_val_ptr,
    g_inv_norm_ptr,
    out_ptr,
    n_rows,
    n_cols,
    dim,
    n_terms,
    stride_x,
    stride_y,
    stride_z,
    stride_out,
    keep,
    mix,
    HAS_DOT: tl.constexpr,
    HAS_TWO_HOP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    i_m = tl.program_id(0)
    i_n = tl.program_id(1)
    o_rows = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_cols = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_rows = o_rows < n_rows
    m_cols = o_cols < n_cols
    b_scores = score_tile(
        x_ptr,
        y_ptr,
        z_ptr,
        g_idx_ptr,
        g_val_ptr,
        g_inv_norm_ptr,
        o_rows,
        m_rows,
        o_cols,
        m_cols,
        dim,
        n_terms,
        stride_x,
        stride_y,
        stride_z,
        keep,
        mix,
        HAS_DOT,
        HAS_TWO_HOP,
        BLOCK_M,
        BLOCK_N,
        BLOCK_D,
        INPUT_PRECISION,
    )
    p_out = out_ptr + o_rows.to(tl.int64)[:, None] * stride_out + o_cols[None, :]
    tl.store(p_out, b_scores, mask=m_rows[:, None] & m_cols[None, :])


def score_block(
    x: torch.Tensor, y: torch.Tensor, *, lamb: float, two_hop: TwoHopTerms | None, out: torch.Tensor
) -> torch.Tensor:
    """Write ``(1 - lamb) * two_hop + lamb * x @ y.T`` into ``out``.

    Args:
        x: ``[b, d]`` contiguous fp32 query features (not read when ``lamb == 0``).
        y: ``[g, d]`` contiguous fp32 gallery features (likewise).
        lamb: weight of the inner product, in [0, 1].
        two_hop: the GNN term of these queries (``z [b, N]``), or None for inner
            products alone (then ``lamb`` must be 1).
        out: ``[b, g]`` float32 with unit column stride (a row block of a larger
            matrix is fine).

    Returns:
        ``out``.
    """
    n_rows, n_cols = out.shape
    terms = two_hop.contiguous() if two_hop else TwoHopTerms(x, x, x, x)  # x: never read
    launch = launch_config.score_block(out.device)
    grid = (triton.cdiv(n_rows, launch["BLOCK_M"]), triton.cdiv(n_cols, launch["BLOCK_N"]))
    _score_block_kernel[grid](
        x,
        y,
        terms.z,
        terms.g_idx,
        terms.g_val,
        terms.g_inv_norm,
        out,
        n_rows,
        n_cols,
        x.shape[1],
        terms.g_idx.shape[1] if two_hop else 0,
        x.stride(0),
        y.stride(0),
        terms.z.stride(0),
        out.stride(0),
        1.0 - lamb,
        lamb,
        HAS_DOT=lamb > 0,
        HAS_TWO_HOP=two_hop is not None,
        INPUT_PRECISION=input_precision(x.dtype),
        **launch,
    )
    return out


def topk_block(x: torch.Tensor, y: torch.Tensor, *, lamb: float, two_hop: TwoHopTerms, k: int):
    """Top-``k`` gallery items per query of the scores of :func:`score_block`, streamed
    over gallery tiles (``k <= launch_config.MAX_STREAMING_K``).

    Returns:
        ``(values [b, k] float32, indices [b, k] int64)``, descending, equal scores by
        smaller gallery index.
    """
    return streaming_topk(
        k,
        two_hop.z.shape[0],
        two_hop.g_idx.shape[0],
        x=x,
        y=y,
        mix=lamb,
        keep=1.0 - lamb,
        two_hop=two_hop,
    )
