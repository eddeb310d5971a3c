"""Running top-k neighbour lists fed block by block, and the tie rule's order of a list.

Numpy and numba only (no torch), so that processes that only merge and order lists,
such as the shard actors of the distributed build, need not load torch (about 480 MB
resident).
"""

from __future__ import annotations

import numpy as np

from .kernels.knn_select import update_from_columns, update_from_rows

# Extra candidates per row of the fast pass: enough for the certificate to prove every
# row of re-ID features in practice (the bfloat16 error bound is about 4e-3 on unit rows,
# the float32 one about d * 6e-8); see benchmarks/results/cpu_knn.md for the shares.
CANDIDATE_MARGIN = {"bf16": 32, "fp32": 4}


def _as_array(block) -> np.ndarray:
    """A numpy view of a float32 array or CPU tensor; a bfloat16 tensor as its uint16 bits."""
    if isinstance(block, np.ndarray):
        return block
    import torch  # only a tensor gets here, so torch is loaded already

    if block.dtype == torch.bfloat16:
        return block.view(torch.int16).numpy().view(np.uint16)
    return block.numpy()


class NeighbourLists:
    """Running top-``k`` neighbour lists of ``n`` nodes, fed one similarity block at a time.

    Attributes:
        values: ``[n, k]`` float32, descending per row (``-inf`` until filled).
        indices: ``[n, k]`` int64 neighbour ids, equal values by smaller id.
    """

    def __init__(self, n: int, k: int):
        self.values = np.full((n, k), -np.inf, dtype=np.float32)
        self.indices = np.full((n, k), -1, dtype=np.int64)

    def offer(
        self,
        block,
        row_start: int,
        col_start: int,
        *,
        to_rows: bool = True,
        columns_from: int | None = None,
    ) -> None:
        """Offer ``block [b, m]``: ``block[r, c]`` is the similarity of nodes
        ``row_start + r`` and ``col_start + c``.

        Args:
            block: float32 numpy array or CPU tensor, or a bfloat16 CPU tensor
                (C-contiguous).
            to_rows: offer each row's entries to the row's node.
            columns_from: also offer columns ``columns_from:`` to the columns' nodes.
        """
        block = _as_array(block)
        if to_rows:
            update_from_rows(block, row_start, col_start, self.values, self.indices)
        if columns_from is not None and columns_from < block.shape[1]:
            update_from_columns(
                block, row_start, col_start, columns_from, self.values, self.indices
            )


def sorted_neighbour_lists(values: np.ndarray, indices: np.ndarray):
    """Search results reordered by the project's tie rule.

    Args:
        values: ``[g, k]`` similarities, ``-inf`` = none (no NaN).
        indices: ``[g, k]`` int64 positions, -1 = none.

    Returns:
        ``(values [g, k] float32, indices [g, k] int64)`` by descending similarity,
        equal similarities by smaller position.
    """
    values = np.asarray(values, np.float32)
    indices = np.asarray(indices, np.int64)
    by_index = np.argsort(indices, axis=1, kind="stable")
    values = np.take_along_axis(values, by_index, axis=1)
    indices = np.take_along_axis(indices, by_index, axis=1)
    # stable on the negated values: equal values keep the ascending positions
    by_value = np.argsort(-values, axis=1, kind="stable")
    return (
        np.take_along_axis(values, by_value, axis=1),
        np.take_along_axis(indices, by_value, axis=1),
    )
