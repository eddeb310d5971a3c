"""gnn_rerank(backend="triton") against the dense reference, and the backend dispatch."""

import sys

import numpy as np
import pytest
import torch
from compare import (
    assert_same_ranking,
    assert_same_topk,
    exact_with_duplicates,
    gaussian,
    half_unit_vectors,
)

from triton_rerank import gnn_rerank
from triton_rerank.reference import gnn_rerank_reference
from triton_rerank.rerank import resolve_backend

GRID = [  # (lamb, k2, iterations): each branch of the pipeline once
    (0.3, 7, 2),  # the reference setting
    (0.0, 3, 1),  # one round; lamb = 0 tie blocks
    (0.3, 1, 2),  # k2 = 1 skips propagation
    (0.0, 4, 3),  # more rounds than the original
    (0.3, 5, 0),  # no rounds
]


def _on(device, *arrays):
    return [torch.from_numpy(a).to(device) for a in arrays]


@pytest.mark.interpreter
@pytest.mark.parametrize("make_data", [gaussian, exact_with_duplicates])
@pytest.mark.parametrize(
    "lamb, k2, iterations", GRID, ids=[f"lamb{a}-k2{b}-it{c}" for a, b, c in GRID]
)
def test_matches_reference(lamb, k2, iterations, make_data, kernel_device):
    rng = np.random.default_rng(int(lamb * 10) + 10 * k2 + 100 * iterations)
    xq, xg = _on(kernel_device, *make_data(rng, 12, 70))
    kwargs = dict(k1=12, k2=k2, iterations=iterations, lamb=lamb)
    assert_scores_and_topk_match_reference(xq, xg, kwargs, topk=8)


def assert_scores_and_topk_match_reference(xq, xg, kwargs, *, topk):
    """backend="triton" agrees with the dense reference: full scores (float32, on the
    features' device) and the top-k."""
    ref = gnn_rerank_reference(xq, xg, **kwargs)
    scores = gnn_rerank(xq, xg, backend="triton", **kwargs)
    assert scores.device == xq.device and scores.dtype == torch.float32
    assert_same_ranking(scores, ref)
    values, indices = gnn_rerank(xq, xg, topk=topk, backend="triton", **kwargs)
    assert_same_topk(values, indices, ref, topk)


@pytest.mark.interpreter
def test_exactly_tied_data_matches_reference(kernel_device):
    # 16 distinct rows: exact kNN ties, duplicate nodes, lamb = 0 tie blocks
    rng = np.random.default_rng(5)
    xq, xg = _on(kernel_device, half_unit_vectors(rng, 10), half_unit_vectors(rng, 50))
    kwargs = dict(k1=12, k2=7, lamb=0.0)
    assert_scores_and_topk_match_reference(xq, xg, kwargs, topk=50)


@pytest.mark.interpreter
def test_blocked_and_fallback_paths(monkeypatch, kernel_device):
    import triton_rerank.gpu.pipeline as pipeline
    import triton_rerank.limits as limits

    # dense blocks of a few rows (many blocks in every step), and k1 / topk above the
    # streaming kernel's limit (score blocks + torch top-k)
    monkeypatch.setattr(limits, "GPU_BLOCK_BYTES", 4 * 3 * 100)
    monkeypatch.setattr(pipeline, "MAX_STREAMING_K", 8)
    rng = np.random.default_rng(21)
    xq, xg = _on(kernel_device, *gaussian(rng, 7, 50))
    kwargs = dict(k1=10, k2=4, lamb=0.3)
    assert_scores_and_topk_match_reference(xq, xg, kwargs, topk=9)


@pytest.mark.interpreter
def test_half_precision_features_match_reference(kernel_device):
    rng = np.random.default_rng(6)
    xq, xg = (t.to(torch.float16) for t in _on(kernel_device, *gaussian(rng, 8, 40)))
    kwargs = dict(k1=10, k2=4)
    assert_same_ranking(
        gnn_rerank(xq, xg, backend="triton", **kwargs),
        gnn_rerank_reference(xq.float(), xg.float(), **kwargs),
    )


@pytest.mark.interpreter
@pytest.mark.skipif(torch.cuda.is_available(), reason="numpy runs the interpreter on the CPU")
def test_numpy_in_numpy_out_in_the_interpreter():
    rng = np.random.default_rng(8)
    xq, xg = gaussian(rng, 6, 30)
    scores = gnn_rerank(xq, xg, k1=8, k2=3, backend="triton")
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, gnn_rerank(xq, xg, k1=8, k2=3), rtol=0, atol=2e-6)


def test_auto_keeps_cpu_tensors_on_the_cpu_path_even_when_interpreting(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"
    assert resolve_backend("auto", None) == "cpu"
    assert resolve_backend("triton", torch.device("cpu")) == "triton"
    assert resolve_backend("auto", torch.device("cuda")) == "triton"


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    xq, xg = gaussian(np.random.default_rng(0), 3, 20)
    with pytest.raises(
        ValueError,
        match=r"backend='triton' runs on CUDA tensors, got numpy "
        r"arrays; set TRITON_INTERPRET=1",
    ):
        gnn_rerank(xq, xg, k1=5, k2=3, backend="triton")
    with pytest.raises(ValueError, match=r"got tensors on cpu; set TRITON_INTERPRET=1"):
        gnn_rerank(torch.from_numpy(xq), torch.from_numpy(xg), k1=5, k2=3, backend="triton")


def test_triton_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # find_spec and import now fail
    with pytest.raises(ValueError, match=r"needs the triton package, which is not installed"):
        resolve_backend("triton", torch.device("cuda"))
    with pytest.warns(
        UserWarning,
        match=r"triton is not installed: re-ranking CUDA tensors "
        r"on the CPU path",
    ):
        assert resolve_backend("auto", torch.device("cuda")) == "cpu"
