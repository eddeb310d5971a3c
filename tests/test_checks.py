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
    (XQ, XG[:, :5], {}, ValueError, r"feature dimensions differ: query is \[4, 8\] and gallery "
                                    r"is \[20, 5\]"),
    (XQ[:0], XG, {}, ValueError, r"query is empty"),
    (XQ, XG[:0], {}, ValueError, r"gallery is empty"),
    (XQ[:, :0], XG[:, :0], {}, ValueError, r"query has feature dimension 0"),
    (with_row(XQ, 2, np.nan), XG, {}, ValueError, r"query contains NaN or inf in 1 row\(s\), "
                                                  r"first at row 2"),
    (XQ, with_row(XG, 7, np.inf), {}, ValueError, r"gallery contains NaN or inf .* row 7"),
    (XQ, with_row(XG, 3, 0.0), {}, ValueError, r"gallery has 1 zero-norm row\(s\) \(first at "
                                               r"row 3\).*normalize=False"),
    (XQ.astype(np.int64), XG, {}, TypeError, r"query must be a floating-point array .* int64"),
    (XQ, torch.from_numpy(XG).int(), {}, TypeError, r"same array type"),
    (torch.from_numpy(XQ), torch.from_numpy(XG).to(torch.int32), {}, TypeError,
     r"gallery must be a floating-point tensor .* torch.int32"),
    (XQ, torch.from_numpy(XG), {}, TypeError, r"query as numpy and gallery as torch"),
    (XQ.tolist(), XG, {}, TypeError, r"query must be a numpy.ndarray or a torch.Tensor, got list"),
    (XQ, XG, {"k1": 0}, ValueError, r"k1 must be >= 1, got 0"),
    (XQ, XG, {"k1": 25}, ValueError, r"k1=25 is larger than 24 \(the number of nodes, "
                                     r"query \+ gallery = 24\)"),
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
    (XQ, XG, {"backend": "cuda"}, ValueError, r"backend must be one of \('auto', 'torch', "
                                              r"'triton'\), got 'cuda'"),
]


@pytest.mark.parametrize("query, gallery, kwargs, exception, pattern", BAD_INPUTS,
                         ids=[case[-1][:40] for case in BAD_INPUTS])
def test_bad_input_message(query, gallery, kwargs, exception, pattern):
    with pytest.raises(exception, match=pattern):
        gnn_rerank(query, gallery, k1=kwargs.pop("k1", 5), k2=kwargs.pop("k2", 3), **kwargs)


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
