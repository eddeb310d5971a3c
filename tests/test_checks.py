"""Every bad input gets a clear error naming the problem."""

import numpy as np
import pytest
import torch

from triton_rerank import gnn_rerank

RNG = np.random.default_rng(0)
XQ = RNG.standard_normal((4, 8)).astype(np.float32)
XG = RNG.standard_normal((20, 8)).astype(np.float32)


def with_row(x, row, value):
    x = x.copy()
    x[row] = value
    return x


BAD_INPUTS = [
    # (query, gallery, kwargs, exception, message pattern)
    (XQ[0], XG, {}, ValueError, r"query must be 2-D \[n, d\], got 1-D"),
    (XQ, XG[None], {}, ValueError, r"gallery must be 2-D \[n, d\], got 3-D"),
    (
        XQ,
        XG[:, :5],
        {},
        ValueError,
        r"feature dimensions differ: query is \[4, 8\] and gallery "
        r"is \[20, 5\]",
    ),
    (XQ[:0], XG, {}, ValueError, r"query is empty"),
    (XQ, XG[:0], {}, ValueError, r"gallery is empty"),
    (XQ[:, :0], XG[:, :0], {}, ValueError, r"query has feature dimension 0"),
    (
        with_row(XQ, 2, np.nan),
        XG,
        {},
        ValueError,
        r"query contains NaN or inf in 1 row\(s\), "
        r"first at row 2",
    ),
    (XQ, with_row(XG, 7, np.inf), {}, ValueError, r"gallery contains NaN or inf .* row 7"),
    (
        XQ,
        with_row(XG, 3, 0.0),
        {},
        ValueError,
        r"gallery has 1 zero-norm row\(s\) \(first at "
        r"row 3\).*normalize=False",
    ),
    (XQ.astype(np.int64), XG, {}, TypeError, r"query must be a floating-point array .* int64"),
    (XQ, torch.from_numpy(XG).int(), {}, TypeError, r"same array type"),
    (
        torch.from_numpy(XQ),
        torch.from_numpy(XG).to(torch.int32),
        {},
        TypeError,
        r"gallery must be a floating-point tensor .* torch.int32",
    ),
    (XQ, torch.from_numpy(XG), {}, TypeError, r"query as numpy and gallery as torch"),
    (XQ.tolist(), XG, {}, TypeError, r"query must be a numpy.ndarray or a torch.Tensor, got list"),
    (XQ, XG, {"k1": 0}, ValueError, r"k1 must be >= 1, got 0"),
    (
        XQ,
        XG,
        {"k1": 25},
        ValueError,
        r"k1=25 is larger than 24 \(the number of nodes, "
        r"query \+ gallery = 24\)",
    ),
    (XQ, XG, {"k1": 2.5}, TypeError, r"k1 must be an integer, got 2.5"),
    (XQ, XG, {"k1": True}, TypeError, r"k1 must be an integer, got True"),
    (XQ, XG, {"k1": 5, "k2": 6}, ValueError, r"k2=6 is larger than 5 \(k2 must not exceed k1\)"),
    (XQ, XG, {"k2": 0}, ValueError, r"k2 must be >= 1, got 0"),
    (XQ, XG, {"iterations": -1}, ValueError, r"iterations must be >= 0, got -1"),
    (XQ, XG, {"lamb": 1.5}, ValueError, r"lamb must be in \[0, 1\], got 1.5"),
    (XQ, XG, {"lamb": float("nan")}, ValueError, r"lamb must be in \[0, 1\], got nan"),
    (XQ, XG, {"lamb": "0.3"}, TypeError, r"lamb must be a real number"),
    (XQ, XG, {"topk": 21}, ValueError, r"topk=21 is larger than 20 \(the gallery size 20\)"),
    (XQ, XG, {"topk": 0}, ValueError, r"topk must be >= 1, got 0"),
    (
        XQ,
        XG,
        {"backend": "cuda"},
        ValueError,
        r"backend must be one of \('auto', 'cpu', "
        r"'triton'\), got 'cuda'",
    ),
    (XQ, XG, {"normalize": "yes"}, TypeError, r"normalize must be True or False, got 'yes'"),
    (
        torch.from_numpy(XQ).to_sparse(),
        torch.from_numpy(XG),
        {},
        TypeError,
        r"query is a torch.sparse_coo tensor; pass a dense tensor",
    ),
    (
        torch.empty(4, 8, device="meta"),
        torch.empty(20, 8, device="meta"),
        {},
        ValueError,
        r"query is on the meta device, which holds no values",
    ),
    (
        XQ.astype(np.float64) * 1e39,
        XG,
        {"normalize": False},
        ValueError,
        r"query has values beyond the float32 range \(first in row 0\); with normalize=False",
    ),
    (
        XQ * 1e5,
        XG,
        {"normalize": False},
        ValueError,
        r"with normalize=False .* the longest has norm .* squared similarities would overflow",
    ),
    (
        XQ.astype(np.longdouble) * np.longdouble("1e4000"),
        XG,
        {},
        ValueError,
        r"query has values beyond the float64 range",
    ),
]


@pytest.mark.parametrize(
    "query, gallery, kwargs, exception, pattern",
    BAD_INPUTS,
    ids=[case[-1][:40] for case in BAD_INPUTS],
)
def test_bad_input_message(query, gallery, kwargs, exception, pattern):
    with pytest.raises(exception, match=pattern):
        gnn_rerank(query, gallery, k1=kwargs.pop("k1", 5), k2=kwargs.pop("k2", 3), **kwargs)


@pytest.mark.parametrize(
    "make",
    [
        lambda x: torch.nn.Parameter(torch.from_numpy(x)),  # a model's weights
        lambda x: torch.from_numpy(x).requires_grad_() * 2,  # a model's output
        lambda x: x.astype(np.longdouble),
        lambda x: x.astype(">f4"),  # big-endian file data
        lambda x: np.asfortranarray(x),
    ],
    ids=["parameter", "requires-grad", "longdouble", "big-endian", "fortran-order"],
)
def test_array_kinds_users_pass_are_re_ranked_like_float32(make):
    want = gnn_rerank(XQ, XG, k1=5, k2=3)
    ours = gnn_rerank(make(XQ), make(XG), k1=5, k2=3)
    ours = ours.numpy() if isinstance(ours, torch.Tensor) else ours
    np.testing.assert_allclose(ours, want, rtol=0, atol=1e-6)


def with_entries(x, row, values):
    x = x.copy()
    x[row, : len(values)] = values
    return x


@pytest.mark.parametrize(
    "entries",
    [[np.nan], [1.0, np.inf], [np.inf, -np.inf], [-np.inf]],
    ids=["one NaN", "one inf", "inf and -inf", "one -inf"],
)
@pytest.mark.parametrize("normalize", [True, False])
def test_a_single_non_finite_entry_is_found(entries, normalize):
    with pytest.raises(
        ValueError, match=r"gallery contains NaN or inf in 1 row\(s\), first at row 5"
    ):
        gnn_rerank(XQ, with_entries(XG, 5, entries), k1=5, k2=3, normalize=normalize)


def test_finite_rows_whose_sum_overflows_are_accepted():
    # float32 row sums overflow here (the fast finiteness check's sum), the values do not
    positive = np.abs(XG)
    huge = positive.copy()
    huge[3] *= np.float32(2.0**126)
    assert not np.isfinite(huge[3].sum()) and np.isfinite(huge).all()
    want = gnn_rerank(XQ, positive, k1=5, k2=3)
    np.testing.assert_array_equal(gnn_rerank(XQ, huge, k1=5, k2=3), want)


def test_zero_rows_are_fine_without_normalisation():
    scores = gnn_rerank(XQ, with_row(XG, 3, 0.0), k1=5, k2=3, normalize=False)
    assert np.isfinite(scores).all()


def test_mixed_devices_without_a_gpu():
    # the meta device exists everywhere, so the check runs on CPU-only machines too
    with pytest.raises(ValueError, match=r"same device, got query on cpu and gallery on meta"):
        gnn_rerank(torch.from_numpy(XQ), torch.empty(20, 8, device="meta"), k1=5, k2=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_devices():
    with pytest.raises(ValueError, match=r"same device, got query on cpu and gallery on cuda"):
        gnn_rerank(torch.from_numpy(XQ), torch.from_numpy(XG).cuda(), k1=5, k2=3)


def test_a_score_matrix_that_cannot_fit_suggests_topk(monkeypatch):
    import triton_rerank.limits as limits

    monkeypatch.setattr(limits, "available_bytes", lambda device=None: 4 * 4 * 19)
    with pytest.raises(
        MemoryError,
        match=r"the \[4, 20\] float32 score matrix \(topk=None\) "
        r"needs .* pass topk=K",
    ):
        gnn_rerank(XQ, XG, k1=5, k2=3)
    values, indices = gnn_rerank(XQ, XG, k1=5, k2=3, topk=3)  # the top-K path still runs
    assert values.shape == (4, 3)


def test_available_memory_is_read_from_the_host():
    from triton_rerank.limits import available_bytes

    assert available_bytes() is None or available_bytes() > 2**20
