"""The canonical pair similarity, the canonical unit rows, and the error bounds that let a
fast matrix product stand in for them.

**Canonical similarity.** The kNN step compares nodes ``i`` and ``j`` (float32 rows
``u_i``, ``u_j`` of length d) by::

    canonical(i, j) = float32( (((u_i0 * u_j0) + u_i1 * u_j1) + ...) + u_i,d-1 * u_j,d-1 )

with every product and sum in float64, summed in the order k = 0, 1, ..., d-1. A product
of two float32 numbers is exact in float64, so the only roundings are the float64
additions (in that fixed order) and the final rounding to float32: the value is a
deterministic function of the two rows alone. Identical rows give bit-identical values
wherever they sit and whichever block computes them; the value is symmetric; it is within
:func:`canonical_error` of the exact inner product. The kNN lists of every backend and
mode are the top-k of these values per row, equal values by smaller column index.

**Canonical unit rows.** With ``normalize=True`` a row x becomes
``float32(y / sqrt(sum_k y_k * y_k))`` with ``y = x * 2**-e`` (``2**e`` the power of two
just above ``max |x_k|``, so ``max |y_k|`` is in [0.5, 1)), all in float64, the squares
rounded to float64 and summed in order k = 0, 1, ...: scale-aware (rows of 1e-30 or 1e200
are fine), and deterministic per row like the similarity (:func:`unit_rows`).

**Certificates.** Computing every canonical value would cost several times a float32
matrix product, so the kNN runs a fast pass (bf16 or fp32 products on the CPU, float16 on
the GPU) that keeps a few extra candidates per row, computes the candidates' canonical
values, and proves with the bounds below that no other column can enter the row's top-k:
if the last kept candidate scored ``a`` in the fast pass, any other column is at most
``a + fast_error + canonical_error`` canonically; when the k-th canonical value of the
candidates is above that, the row is exact (tie order included, since the candidates'
order is the canonical one). Other rows are recomputed canonically.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that take tensors: the bounds also take numpy
# arrays (row_norms, the *_error functions, certify_threshold), so a process that checks
# numpy rows only (a shard actor of the distributed build) never loads torch.

FP32_UNIT = 2.0**-24  # unit roundoff of float32 (round to nearest)
BF16_UNIT = 2.0**-8  # unit roundoff of bfloat16
FP32_TINY = 2.0**-126  # smallest normal float32: what flush-to-zero can lose per operation
FP64_UNIT = 2.0**-53

# Rows normalised per step by unit_rows (bounds its float64 temporaries).
_UNIT_ROWS_PER_CHUNK = 8192


def _gamma(n: int, unit: float) -> float:
    """``n u / (1 - n u)``: the relative error bound of a sum of n terms in any order."""
    return n * unit / (1.0 - n * unit)


def _power_of_two(exponent: torch.Tensor) -> torch.Tensor:
    """``2.0 ** exponent`` in float64, built from its bits (exact; -1022 <= exponent <= 1023)."""
    import torch

    return torch.bitwise_left_shift(exponent.to(torch.int64) + 1023, 52).view(torch.float64)


@functools.cache
def _numba_installed() -> bool:
    return importlib.util.find_spec("numba") is not None


def unit_rows(x: torch.Tensor, out: torch.Tensor) -> None:
    """Write the canonical unit rows of ``x`` into ``out`` (see the module doc).

    Args:
        x: ``[n, d]`` finite floating-point rows, none all-zero (checked by the caller),
            on any device (CPU tensors: ``cpu/kernels/unit_rows.py``, the same arithmetic in one
            pass).
        out: ``[n, d]`` float32 on x's device.
    """
    import torch

    if x.device.type == "cpu" and out.is_contiguous() and _numba_installed():
        # the one import of the CPU backend from here (tests/test_layout.py allows it):
        # the same arithmetic in one numba pass, instead of d torch steps over the rows
        from .cpu.kernels.unit_rows import unit_rows as unit_rows_on_cpu

        source = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # exact
        unit_rows_on_cpu(source.contiguous().numpy(), out.numpy())
    else:
        unit_rows_with_torch(x, out)


def unit_rows_with_torch(x: torch.Tensor, out: torch.Tensor) -> None:
    """:func:`unit_rows` with torch operations (any device; the CUDA path)."""
    import torch

    for start in range(0, x.shape[0], _UNIT_ROWS_PER_CHUNK):
        stop = min(x.shape[0], start + _UNIT_ROWS_PER_CHUNK)
        rows = x[start:stop].to(torch.float64)
        _, exponent = torch.frexp(rows.abs().amax(dim=1))
        # y = rows * 2**-e in two exact steps (2**-e alone can overflow for tiny rows)
        half = torch.div(-exponent, 2, rounding_mode="floor")
        rows = rows * _power_of_two(half)[:, None]
        rows = rows * _power_of_two(-exponent - half)[:, None]
        columns = rows.T.contiguous()  # [d, rows]: each step below reads a row
        square_sum = torch.zeros(stop - start, dtype=torch.float64, device=x.device)
        for column in columns:  # sequential in k, one rounding per step
            square_sum += column * column
        torch.div(rows, torch.sqrt(square_sum)[:, None], out=rows)
        out[start:stop] = rows


# Rows whose float64 norms are computed at a time (keeps the float64 copies in cache).
_NORM_ROWS_PER_CHUNK = 4096


def norm_slack(dim: int) -> float:
    """Factor that rounds a float64 row norm up past its own rounding error."""
    return 1 + (dim + 4) * FP64_UNIT


def row_norms(x):
    """``[n]`` float64 L2 norms of the rows of ``x`` (a tensor, or a numpy array: then a
    numpy array), rounded up, for bounds."""
    if isinstance(x, np.ndarray):
        norms = np.empty(x.shape[0], dtype=np.float64)
        for start in range(0, x.shape[0], _NORM_ROWS_PER_CHUNK):
            rows = x[start : start + _NORM_ROWS_PER_CHUNK].astype(np.float64)
            norms[start : start + _NORM_ROWS_PER_CHUNK] = np.linalg.norm(rows, axis=1)
        return norms * norm_slack(x.shape[1])
    import torch

    norms = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], _NORM_ROWS_PER_CHUNK):
        rows = x[start : start + _NORM_ROWS_PER_CHUNK].to(torch.float64)
        torch.linalg.vector_norm(rows, dim=1, out=norms[start : start + _NORM_ROWS_PER_CHUNK])
    return norms * norm_slack(x.shape[1])


def canonical_error(x_norms, y_norm: float, dim: int):
    """``[n]``: a bound on ``|canonical(i, j) - <u_i, u_j>|`` over all j (a tensor or a
    numpy array, as ``x_norms``).

    The float64 sum of d exact products is off by at most ``gamma_d(2**-53) |u_i| |u_j|``
    (Cauchy-Schwarz bounds the sum of the products' magnitudes); the final rounding to
    float32 by ``2**-24`` of the value (at most ``|u_i| |u_j|``) or, below float32's normal
    range, by half its smallest step.

    Args:
        x_norms: ``[n]`` float64 norms of the rows i (:func:`row_norms`).
        y_norm: the largest norm of the rows j.
        dim: d.
    """
    relative = FP32_UNIT * (1 + 2 * FP32_UNIT) + _gamma(dim, FP64_UNIT)
    return relative * x_norms * y_norm + 2.0**-149


def fp32_product_error(x_norms, y_norm: float, dim: int):
    """``[n]`` (a tensor or a numpy array, as ``x_norms``): a bound on ``|fp32 product(i, j)
    - <u_i, u_j>|`` over all j, for a float32 matrix product of the rows in any summation
    order, with or without fused multiply-adds and with or without flush-to-zero of
    subnormals (d products and d - 1 sums, each rounded by at most ``2**-24`` of its
    magnitude, or by ``2**-126`` when flushed)."""
    return _gamma(dim + 1, FP32_UNIT) * x_norms * y_norm + 2 * (dim + 1) * FP32_TINY


def bf16_rounding(x: torch.Tensor):
    """The bfloat16 copy of float32 rows and what its rounding moved each row by.

    Returns:
        ``(x_bf16 [n, d] bfloat16, rounded_norms [n] float64, error_norms [n] float64)``:
        the copy, ``|bf16(u_i)|`` and ``|bf16(u_i) - u_i|`` (both slightly rounded up).
    """
    import torch

    x_bf16 = x.to(torch.bfloat16)
    rounded_norms = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    error_norms = torch.empty_like(rounded_norms)
    for start in range(0, x.shape[0], _NORM_ROWS_PER_CHUNK):
        rows = slice(start, start + _NORM_ROWS_PER_CHUNK)
        rounded = x_bf16[rows].to(torch.float64)
        torch.linalg.vector_norm(rounded, dim=1, out=rounded_norms[rows])
        rounded -= x[rows].to(torch.float64)  # exact: both are float32 values
        torch.linalg.vector_norm(rounded, dim=1, out=error_norms[rows])
    scale = norm_slack(x.shape[1])
    return x_bf16, rounded_norms * scale, error_norms * scale


def bf16_product_error(
    x_norms: torch.Tensor, rounded_norms: torch.Tensor, error_norms: torch.Tensor, dim: int
) -> torch.Tensor:
    """``[n]``: a bound on ``|s(i, j) - <u_i, u_j>|`` over all j, where ``s`` is the float32
    sum (any order, flush-to-zero allowed) of the products of the bfloat16-rounded rows,
    before the product's own bfloat16 output rounding (see :func:`bf16_output_slack`).

    With ``e = bf16(u) - u``: ``sum bf16(u_i) bf16(u_j) - sum u_i u_j = <e_i, bf16(u_j)> +
    <u_i, e_j>``, at most ``|e_i| |bf16(u_j)| + |u_i| |e_j|`` (Cauchy-Schwarz), with the
    actual rounding errors measured per row. bf16 products are exact in float32; the d - 1
    sums add ``gamma_d(2**-24) |bf16(u_i)| |bf16(u_j)|``. Hardware that treats bfloat16
    subnormal inputs as zero loses less than ``2**-126`` per product.

    Args:
        x_norms: ``[n]`` norms of the float32 rows i.
        rounded_norms, error_norms: ``[m]`` of every row j (and of the rows i), from
            :func:`bf16_rounding`; their maxima over j enter the bound.
        dim: d.
    """
    rounding = error_norms * float(rounded_norms.max()) + x_norms * float(error_norms.max())
    summing = _gamma(dim, FP32_UNIT) * rounded_norms * float(rounded_norms.max())
    return (1 + 4 * FP32_UNIT) * (rounding + summing) + 4 * (dim + 1) * FP32_TINY


# The bfloat16 output rounding of a product entry ``s``: ``|bf16(s) - s|`` is at most
# ``BF16_OUTPUT_RELATIVE |bf16(s)| + BF16_OUTPUT_ABSOLUTE`` (see bf16_output_slack).
BF16_OUTPUT_RELATIVE = BF16_UNIT / (1 - BF16_UNIT)
BF16_OUTPUT_ABSOLUTE = 2.0**-133


def bf16_output_slack(last_values: torch.Tensor) -> torch.Tensor:
    """How far above ``a`` the float32 sum of a product entry can be when its bfloat16
    output is at most ``a`` (round to nearest: ``|bf16(s) - s| <= 2**-8 |s|``, or half the
    smallest subnormal step)."""
    return last_values.abs() * BF16_OUTPUT_RELATIVE + BF16_OUTPUT_ABSOLUTE


def certify_threshold(last_values, fast_error, canonical_errors):
    """``[n]`` float64: above this, a canonical value beats every column the fast pass left
    out: ``a + fast_error + canonical_error``, rounded up (``a`` = the fast-pass value of
    the row's last kept candidate). Tensors, or numpy arrays (then a numpy array)."""
    if isinstance(last_values, np.ndarray):
        threshold = last_values.astype(np.float64) + fast_error + canonical_errors
        return np.nextafter(threshold, np.inf)
    import torch

    threshold = last_values.to(torch.float64) + fast_error + canonical_errors
    return torch.nextafter(
        threshold, torch.tensor(math.inf, dtype=torch.float64, device=threshold.device)
    )


def checked_dim(dim: int) -> int:
    """The feature dimension, within what the bounds' ``gamma_d`` terms allow."""
    if dim * FP32_UNIT >= 0.01:
        raise ValueError(
            f"feature dimension {dim} is too large for the float32 error bounds "
            f"of the kNN (at most {math.floor(0.01 / FP32_UNIT)})"
        )
    return dim
