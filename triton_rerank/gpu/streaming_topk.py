"""The streaming top-k kernel: ``topk(x @ y.T, k)`` per row without the ``[n, m]`` matrix.

Fused top-k of inner products: ``topk(x @ y.T, k)`` per row without the ``[n, m]`` matrix.

Each program owns ``BLOCK_M`` rows of x and streams over all of y in ``BLOCK_N``-column
tiles: a tile of scores (``tl.dot``, fp32 accumulation) becomes packed int64 keys (see
``tiles.py``), its own top ``K_PAD`` (``tl.topk``) is merged into the running top
``K_PAD`` with one bitonic step, and only the final ``[n, k]`` values and int64
indices are written. Ties: equal scores, smaller column first.

The same kernel gives the final re-ranked top-K: its score tile can add the two-hop
term of the propagated graph (``tiles.two_hop_tile``) to the mixed inner product.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch_config
from .launch_config import MAX_STREAMING_K  # noqa: F401 (re-exported)
from .tiles import (
    EMPTY_KEY,
    TwoHopTerms,
    bitonic_merge,
    input_precision,
    merge_topk,
    pack_keys,
    score_tile,
    unpack_keys,
)


@triton.jit
def _streaming_topk_kernel(
    x_ptr,
    y_ptr,
    z_ptr,
    g_idx_ptr,
    g_val_ptr,
    g_inv_norm_ptr,
    out_val_ptr,
    out_idx_ptr,
    n_rows,
    n_cols,
    dim,
    n_terms,
    k,
    stride_x,
    stride_y,
    stride_z,
    keep,
    mix,
    HAS_DOT: tl.constexpr,
    HAS_TWO_HOP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    K_PAD: tl.constexpr,
    LOG_M: tl.constexpr,
    LOG_N: tl.constexpr,
    LOG_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    i_m = tl.program_id(0)
    o_rows = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_rows = o_rows < n_rows
    b_top = tl.full([BLOCK_M, K_PAD], EMPTY_KEY, tl.int64)
    for col_start in range(0, n_cols, BLOCK_N):
        o_cols = col_start + tl.arange(0, BLOCK_N)
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
        b_keys = tl.where(m_cols[None, :], pack_keys(b_scores, o_cols), EMPTY_KEY)
        b_top = merge_topk(b_top, b_keys, LOG_M, LOG_N, LOG_K)
    b_top = bitonic_merge(b_top, LOG_M, LOG_K, 1)
    b_values, b_cols = unpack_keys(b_top)
    o_k = tl.arange(0, K_PAD)
    o_out = o_rows.to(tl.int64)[:, None] * k + o_k[None, :]
    m_out = m_rows[:, None] & (o_k < k)[None, :]
    tl.store(out_val_ptr + o_out, b_values, mask=m_out)
    tl.store(out_idx_ptr + o_out, b_cols, mask=m_out)


def _log2(power_of_two: int) -> int:
    return power_of_two.bit_length() - 1


def streaming_config(
    k: int, dtype: torch.dtype, device: torch.device, tuning: dict | None = None
) -> dict:
    """Keyword arguments of a streaming kernel launch for the top-``k`` of ``dtype``
    features on ``device``, besides the flags HAS_DOT and HAS_TWO_HOP: block sizes and
    ``num_warps`` (``launch_config.streaming_topk``, then ``tuning``), INPUT_PRECISION, K_PAD
    and the LOG_* sizes of the sorting network."""
    k_pad = max(2, triton.next_power_of_2(k))
    config = {
        **launch_config.streaming_topk(k_pad, device),
        "INPUT_PRECISION": input_precision(dtype),
        **(tuning or {}),
    }
    if config["BLOCK_N"] < k_pad:
        raise ValueError(f"BLOCK_N {config['BLOCK_N']} is below the padded k {k_pad}")
    return {
        **config,
        "K_PAD": k_pad,
        "LOG_M": _log2(config["BLOCK_M"]),
        "LOG_N": _log2(config["BLOCK_N"]),
        "LOG_K": _log2(k_pad),
    }


def streaming_topk(
    k: int,
    n_rows: int,
    n_cols: int,
    *,
    x: torch.Tensor,
    y: torch.Tensor,
    mix: float = 1.0,
    keep: float = 0.0,
    two_hop: TwoHopTerms | None = None,
    tuning: dict | None = None,
):
    """Top-``k`` per row of ``mix * x @ y.T + keep * two_hop`` (checked inputs only).

    Args:
        k: ``1 <= k <= min(n_cols, MAX_STREAMING_K)``.
        n_rows, n_cols: the score matrix is ``[n_rows, n_cols]``.
        x: ``[n_rows, d]`` contiguous features (fp32/fp16/bf16).
        y: ``[n_cols, d]`` contiguous features of x's dtype.
        mix: weight of the inner product; 0 leaves it out (x and y are then not read).
        keep: weight of the two-hop term.
        two_hop: the propagated graph's terms, or None for plain inner products.
        tuning: overrides of the launch settings (``BLOCK_M``, ``BLOCK_N``, ``BLOCK_D``,
            ``num_warps``, ``INPUT_PRECISION``), for benchmarks; BLOCK_M and BLOCK_N
            must be powers of two with ``BLOCK_N >= K_PAD``.

    Returns:
        ``(values [n_rows, k] float32, indices [n_rows, k] int64)`` on x's device,
        by descending score, equal scores by smaller column.
    """
    if x.dtype == torch.bfloat16 and x.device.type != "cuda":
        # the interpreter (numpy) has no bfloat16 dot; bf16 -> fp32 is exact, and so
        # are the products, as on the GPU
        x, y = x.float(), y.float()
    config = streaming_config(k, x.dtype, x.device, tuning)
    values = torch.empty(n_rows, k, dtype=torch.float32, device=x.device)
    indices = torch.empty(n_rows, k, dtype=torch.int64, device=x.device)
    terms = two_hop.contiguous() if two_hop else TwoHopTerms(x, x, x, x)  # x: never read
    grid = (triton.cdiv(n_rows, config["BLOCK_M"]),)
    _streaming_topk_kernel[grid](
        x,
        y,
        terms.z,
        terms.g_idx,
        terms.g_val,
        terms.g_inv_norm,
        values,
        indices,
        n_rows,
        n_cols,
        x.shape[1],
        terms.g_idx.shape[1] if two_hop else 0,
        k,
        x.stride(0),
        y.stride(0),
        terms.z.stride(0),
        keep,
        mix,
        HAS_DOT=mix != 0,
        HAS_TWO_HOP=two_hop is not None,
        **config,
    )
    return values, indices
