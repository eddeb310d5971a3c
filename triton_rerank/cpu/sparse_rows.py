"""``SparseRows``: the CSR container the CPU path passes between its steps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class SparseRows:
    """Rows of a sparse ``[n_rows, n_cols]`` float32 matrix in CSR form.

    Attributes:
        indptr: ``[n_rows + 1]`` int64; row r is ``indices/values[indptr[r]:indptr[r + 1]]``.
        indices: ``[nnz]`` int64 column ids (not necessarily sorted within a row); int32
            in the scoring's copies (:meth:`with_int32_indices`).
        values: ``[nnz]`` float32.
        n_cols: number of columns.
    """

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    n_cols: int

    @property
    def n_rows(self) -> int:
        return self.indptr.shape[0] - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @classmethod
    def from_dense_rows(cls, column_ids: np.ndarray, values: np.ndarray, n_cols: int):
        """Rows with exactly ``t`` non-zeros each: ``column_ids``/``values`` are ``[n, t]``."""
        n_rows, per_row = column_ids.shape
        indptr = np.arange(0, n_rows * per_row + 1, per_row, dtype=np.int64)
        return cls(
            indptr,
            np.ascontiguousarray(column_ids, dtype=np.int64).ravel(),
            np.ascontiguousarray(values, dtype=np.float32).ravel(),
            n_cols,
        )

    @classmethod
    def identity(cls, n: int):
        """The ``[n, n]`` identity."""
        ids = np.arange(n, dtype=np.int64)[:, None]
        return cls.from_dense_rows(ids, np.ones((n, 1), np.float32), n)

    def to_scipy(self) -> sp.csr_array:
        return sp.csr_array(
            (self.values, self.indices, self.indptr), shape=(self.n_rows, self.n_cols)
        )

    def to_dense(self) -> np.ndarray:
        """``[n_rows, n_cols]`` float32 (for tests and small inputs only)."""
        return self.to_scipy().toarray()

    def with_int32_indices(self) -> SparseRows:
        """The same rows with int32 column ids (``n_cols < 2**31``): a third less memory
        traffic for the kernels that stream them."""
        return SparseRows(self.indptr, self.indices.astype(np.int32), self.values, self.n_cols)

    def row_slice(self, start: int, stop: int) -> SparseRows:
        """Rows ``start:stop`` (views of the index and value arrays)."""
        lo, hi = self.indptr[start], self.indptr[stop]
        return SparseRows(
            self.indptr[start : stop + 1] - lo, self.indices[lo:hi], self.values[lo:hi], self.n_cols
        )
