"""Exact per-row top-k with the project's tie rule: equal values, smaller column first.

``torch.topk`` leaves the order of equal values unspecified, so on its own it can
neither pick nor order tied candidates by column index. :func:`topk_rows` asks it for
one extra element: if the k-th and (k+1)-th values differ, the chosen set is exact and
only needs sorting by (value desc, index asc); rows with a tie across that boundary
(rare for real scores, common for ``lamb=0`` tie blocks) fall back to a stable sort.
"""

from __future__ import annotations

import torch


def sort_by_value_then_index(values: torch.Tensor, indices: torch.Tensor):
    """Order each row by descending value, equal values by ascending index.

    Args:
        values: ``[r, k]`` scores.
        indices: ``[r, k]`` int64 column indices of those scores.

    Returns:
        ``(values, indices)``, both ``[r, k]``, reordered.
    """
    by_index = torch.argsort(indices, dim=1)
    values = torch.gather(values, 1, by_index)
    indices = torch.gather(indices, 1, by_index)
    by_value = torch.sort(values, dim=1, descending=True, stable=True).indices
    return torch.gather(values, 1, by_value), torch.gather(indices, 1, by_value)


def topk_rows(x: torch.Tensor, k: int):
    """Top-``k`` of every row of ``x``: descending, ties by smaller column index.

    Args:
        x: ``[r, c]`` float tensor without NaN.
        k: ``1 <= k <= c``.

    Returns:
        ``(values [r, k], indices [r, k] int64)``.

    Example:
        >>> topk_rows(torch.tensor([[1.0, 3.0, 3.0, 2.0]]), 2)
        (tensor([[3., 3.]]), tensor([[1, 2]]))
    """
    n_cols = x.shape[1]
    if k >= n_cols:
        order = torch.sort(x, dim=1, descending=True, stable=True)
        return order.values[:, :k], order.indices[:, :k]
    values, indices = torch.topk(x, k + 1, dim=1, largest=True, sorted=True)
    tied = values[:, k - 1] == values[:, k]
    values, indices = sort_by_value_then_index(values[:, :k], indices[:, :k])
    if bool(tied.any()):
        rows = torch.nonzero(tied).flatten()
        exact = torch.sort(x[rows], dim=1, descending=True, stable=True)
        values[rows] = exact.values[:, :k]
        indices[rows] = exact.indices[:, :k]
    return values, indices
