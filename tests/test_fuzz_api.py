"""Fuzz test of the public API: random shapes, dtypes, magnitudes, duplicates, parameters
and array types. Every call either raises a documented error whose message names the
problem, or returns what the dense reference returns (rankings identical up to ties).

CI runs a fixed, bounded set of examples (``derandomize``); set ``FUZZ_EXAMPLES`` for a
longer run.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from compare import assert_same_ranking, assert_same_topk
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from triton_rerank import evaluate, gnn_rerank
from triton_rerank.reference import gnn_rerank_reference
from triton_rerank.rerank import gnn_rerank_similarities

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)

# What a documented error's message must mention: the argument or the property at fault.
NAMED = re.compile(
    r"query|gallery|k1|k2|iterations|lamb|topk|normalize|backend|q_g|q_q|g_g|"
    r"scale|offset|scores|pids|camids|max_rank|float32|float64|NaN|inf|"
    r"zero-norm|dimension|empty|dtype|device|same array type|tensor|array"
)

NUMPY_DTYPES = [
    np.float16,
    np.float32,
    np.float32,
    np.float64,
    np.float64,
    np.longdouble,
    ">f4",
    np.int32,
    np.complex64,
    np.bool_,
]
TORCH_DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float32,
    torch.float64,
    torch.int64,
]


@st.composite
def feature_arrays(draw):
    """A query/gallery pair as a user could pass it, valid or not."""
    empty = draw(st.sampled_from([False] * 19 + [True]))  # 5%: an empty side
    n_query = 0 if empty and draw(st.booleans()) else draw(st.integers(1, 9))
    n_gallery = 0 if empty and not n_query == 0 else draw(st.integers(1, 30))
    dim = draw(st.sampled_from([1, 3, 8, 8, 17, 17, 0]))
    dim_gallery = draw(st.sampled_from([dim] * 9 + [dim + 1]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = rng.standard_normal((n_query + n_gallery, max(dim, dim_gallery)))
    kind = draw(st.sampled_from(["gaussian", "copies", "all identical", "few values"]))
    if kind == "copies" and len(rows) > 1:
        rows[rng.integers(0, len(rows), len(rows) // 2)] = rows[0]
    elif kind == "all identical":
        rows[:] = rows[:1]
    elif kind == "few values":
        rows = np.sign(rows) * 0.5
    rows *= draw(st.sampled_from([1.0, 1e-30, 1e-3, 1e3, 1e20, 1e200]))
    corrupt = draw(st.sampled_from([None] * 6 + ["nan", "inf", "zero row"]))
    if corrupt and len(rows):
        row = draw(st.integers(0, len(rows) - 1))
        rows[row] = {"nan": np.nan, "inf": np.inf, "zero row": 0.0}[corrupt]
    xq, xg = rows[:n_query, :dim], rows[n_query:, :dim_gallery]
    float_dtype = draw(st.sampled_from([True, True, True, True, False]))
    if draw(st.booleans()):
        dtype = draw(st.sampled_from(NUMPY_DTYPES[:7] if float_dtype else NUMPY_DTYPES[7:]))
        with np.errstate(all="ignore"):
            return xq.astype(dtype), xg.astype(dtype)
    dtype = draw(st.sampled_from(TORCH_DTYPES[:5] if float_dtype else TORCH_DTYPES[5:]))
    xq, xg = torch.from_numpy(xq).to(dtype), torch.from_numpy(xg).to(dtype)
    if draw(st.booleans()) and dtype.is_floating_point:
        xq, xg = xq.requires_grad_(), xg.requires_grad_()
    return xq, xg


@st.composite
def parameters(draw, n_nodes: int = 40, n_gallery: int = 30):
    """Mostly valid parameters for ``n_nodes`` / ``n_gallery`` (every range boundary
    included), sometimes anything at all."""
    if draw(st.sampled_from([False, False, False, True])):
        junk = st.integers(-1, 45) | st.sampled_from([2.5, True, "7", None])
        return dict(
            k1=draw(junk),
            k2=draw(junk),
            iterations=draw(st.integers(-1, 3)),
            lamb=draw(st.sampled_from([0.0, 0.3, 1.0, -0.1, float("nan"), "x"])),
            topk=draw(st.none() | st.integers(-1, 35)),
            normalize=draw(st.sampled_from([True, False, "yes"])),
        )
    # (the valid ones: every range boundary is reachable)
    k1 = draw(st.integers(1, max(1, min(n_nodes, 30))))
    return dict(
        k1=k1,
        k2=draw(st.integers(1, k1)),
        iterations=draw(st.integers(0, 3)),
        lamb=draw(st.sampled_from([0.0, 0.3, 1.0]) | st.floats(0, 1)),
        topk=draw(st.none() | st.integers(1, max(1, n_gallery))),
        normalize=draw(st.sampled_from([True, True, False])),
    )


def documented(error: Exception) -> bool:
    return isinstance(error, (ValueError, TypeError, MemoryError)) and bool(
        NAMED.search(str(error))
    )


def as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().double().numpy()
    return np.asarray(x, dtype=np.float64)


@FUZZ
@given(st.data())
def test_gnn_rerank_errors_are_documented_and_results_are_the_reference(data):
    xq, xg = data.draw(feature_arrays())
    params = data.draw(parameters(len(xq) + len(xg), len(xg)))
    try:
        result = gnn_rerank(xq, xg, **params)
    except Exception as error:  # noqa: BLE001 - the assertion below is the point
        assert documented(error), f"{type(error).__name__}: {error}"
        event(f"error: {type(error).__name__}: {str(error)[:60]}")
        return
    event("re-ranked")
    reference = gnn_rerank_reference(
        as_float64(xq),
        as_float64(xg),
        k1=params["k1"],
        k2=params["k2"],
        iterations=params["iterations"],
        lamb=params["lamb"],
        normalize=params["normalize"],
    )
    atol = 2e-5 if params["normalize"] else 2e-5 * float(reference.abs().max() + 1)
    if params["topk"] is None:
        assert_same_ranking(result, reference, atol=atol)
    else:
        assert_same_topk(*result, reference, params["topk"], atol=atol)


@st.composite
def similarity_blocks(draw):
    n_query, n_gallery = draw(st.integers(0, 6)), draw(st.integers(0, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n_query + n_gallery, 6))
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sims = x @ x.T
    blocks = [sims[:n_query, n_query:], sims[:n_query, :n_query], sims[n_query:, n_query:]]
    if draw(st.booleans()) and blocks[1].size:
        blocks[1] = blocks[1][:, :-1]  # wrong shape
    if draw(st.booleans()) and blocks[0].size:
        blocks[0] = blocks[0].copy()
        blocks[0].flat[0] = draw(st.sampled_from([np.nan, np.inf, 0.5]))
    kind = draw(st.sampled_from(["numpy", "numpy", "torch", "torch-bf16", "int", "list"]))
    if kind == "torch":
        blocks = [torch.from_numpy(b) for b in blocks]
    elif kind == "torch-bf16":
        blocks = [torch.from_numpy(b).bfloat16() for b in blocks]
    elif kind == "int":
        blocks = [np.nan_to_num(b).astype(np.int64) for b in blocks]
    elif kind == "list":
        blocks = [b.tolist() for b in blocks]
    scale = draw(st.sampled_from([1.0, -0.5, float("nan"), 0.0]))
    return blocks, scale


@FUZZ
@given(st.data())
def test_gnn_rerank_similarities_errors_are_documented(data):
    (q_g, q_q, g_g), scale = data.draw(similarity_blocks())
    n_query, n_gallery = len(q_q), len(g_g)
    params = data.draw(parameters(n_query + n_gallery, n_gallery))
    del params["normalize"]
    try:
        result = gnn_rerank_similarities(q_g, q_q, g_g, scale=scale, offset=1 - scale, **params)
    except Exception as error:  # noqa: BLE001
        assert documented(error), f"{type(error).__name__}: {error}"
        return
    scores = result if params["topk"] is None else result[0]
    assert np.isfinite(np.asarray(scores, dtype=np.float64)).all()


@FUZZ
@given(
    st.integers(0, 8),
    st.integers(0, 12),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["ints", "floats", "nan", "strings", "short", "2-D", "torch"]),
)
def test_evaluate_errors_are_documented(n_query, n_gallery, seed, labels):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n_query, n_gallery)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 3, n_query), rng.integers(0, 3, n_gallery)
    q_cams, g_cams = np.zeros(n_query, np.int64), np.ones(n_gallery, np.int64)
    if labels == "floats":
        q_pids = q_pids + 0.5
    elif labels == "nan":
        g_pids = np.where(np.arange(n_gallery) == 0, np.nan, g_pids)
    elif labels == "strings":
        q_pids, g_pids = q_pids.astype(str), g_pids.astype(str)
    elif labels == "short":
        g_cams = g_cams[:-1]
    elif labels == "2-D":
        q_cams = q_cams[:, None].repeat(2, axis=1)
    elif labels == "torch":
        scores = torch.from_numpy(scores).requires_grad_()
    try:
        result = evaluate(scores, q_pids, g_pids, q_cams, g_cams)
    except Exception as error:  # noqa: BLE001
        assert documented(error), f"{type(error).__name__}: {error}"
        return
    assert 0 <= result.mAP <= 1 and 0 <= result.mINP <= 1


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_fuzz_covers_both_fast_passes(precision, monkeypatch):
    # one fixed valid example per pass, so the fuzz's results do not hinge on the CPU
    monkeypatch.setenv("TRITON_RERANK_KNN_PRECISION", precision)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    x[5:9] = x[0]
    ref = gnn_rerank_reference(x[:7], x[7:], k1=10, k2=4)
    assert_same_ranking(gnn_rerank(x[:7], x[7:], k1=10, k2=4), ref)
