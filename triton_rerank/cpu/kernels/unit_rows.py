"""Canonical unit rows on the CPU (the definition is in ``triton_rerank/canonical.py``),
in one pass per row without temporaries: the torch version there allocates float64 copies
of the rows, which costs more than the arithmetic."""

from __future__ import annotations

import math

import numpy as np

from .jit import njit, parallel_chunks


@njit(nogil=True)
def _unit_rows_chunk(start, stop, x, out):
    for i in range(start, stop):
        row = x[i]
        largest = 0.0
        for k in range(row.shape[0]):
            largest = max(largest, abs(np.float64(row[k])))
        exponent = math.frexp(largest)[1]
        half = -exponent // 2
        low, high = math.ldexp(1.0, half), math.ldexp(1.0, -exponent - half)
        square_sum = 0.0
        for k in range(row.shape[0]):
            y = np.float64(row[k]) * low * high
            square_sum += y * y
        norm = math.sqrt(square_sum)
        for k in range(row.shape[0]):
            out[i, k] = np.float32(np.float64(row[k]) * low * high / norm)


def unit_rows(x: np.ndarray, out: np.ndarray) -> None:
    """Write the canonical unit rows of ``x [n, d]`` (float32 or float64; finite,
    no all-zero row) into ``out [n, d]`` float32."""
    parallel_chunks(_unit_rows_chunk, x.shape[0], x, out)
