"""topk_rows: exact top-k with the tie rule (equal values: smaller column first)."""

import numpy as np
import pytest
import torch

from triton_rerank.topk import topk_rows


def stable_topk(x: torch.Tensor, k: int):
    order = torch.sort(x, dim=1, descending=True, stable=True)
    return order.values[:, :k], order.indices[:, :k]


@pytest.mark.parametrize(
    "rows, cols, k",
    [
        (1, 1, 1),  # single element
        (7, 33, 5),  # unaligned sizes
        (16, 100, 99),  # k = cols - 1: topk(k + 1) covers every column
        (4, 50, 50),  # k = cols: full sort path
    ],
    ids=lambda v: str(v),
)
def test_tie_free_rows_match_stable_sort(rows, cols, k):
    # arange + randperm: distinct values, so indices compare exactly
    x = torch.stack(
        [
            torch.randperm(cols, generator=torch.Generator().manual_seed(r)).float()
            for r in range(rows)
        ]
    )
    ref_values, ref_indices = stable_topk(x, k)
    values, indices = topk_rows(x, k)
    assert indices.dtype == torch.int64
    torch.testing.assert_close(values, ref_values)
    torch.testing.assert_close(indices, ref_indices)


@pytest.mark.parametrize("k", [1, 3, 8, 19, 20])
def test_ties_are_broken_by_smaller_column(k):
    # few distinct values: ties inside the top-k and across its boundary
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (64, 20), generator=gen).float()
    ref_values, ref_indices = stable_topk(x, k)
    values, indices = topk_rows(x, k)
    torch.testing.assert_close(values, ref_values)
    torch.testing.assert_close(indices, ref_indices)


def test_all_equal_row_takes_first_columns():
    values, indices = topk_rows(torch.zeros(3, 10), 4)
    assert indices.tolist() == [[0, 1, 2, 3]] * 3
    assert np.all(values.numpy() == 0)
