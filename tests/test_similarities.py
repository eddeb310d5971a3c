"""gnn_rerank_similarities: GNN re-ranking from the three similarity blocks.

Against gnn_rerank and the dense reference on exact data, over several row chunks,
for every float dtype (float16 and bfloat16 included), for tensors that require grad,
and every bad input with its message.
"""

import numpy as np
import pytest
import torch
from compare import assert_same_ranking, assert_same_topk, four_halves_vectors

from triton_rerank import gnn_rerank, limits
from triton_rerank.reference import gnn_rerank_reference
from triton_rerank.rerank import gnn_rerank_similarities

KWARGS = dict(k1=10, k2=4, lamb=0.3)


def exact_blocks(n_query=12, n_gallery=50, seed=0):
    """Features whose similarities are exact in float32 (and bfloat16: multiples of 0.25
    in [-1, 1]), and their three blocks ``(q_g, q_q, g_g)`` as float32 numpy."""
    rng = np.random.default_rng(seed)
    xq, xg = four_halves_vectors(rng, n_query), four_halves_vectors(rng, n_gallery)
    return (xq, xg), (xq @ xg.T, xq @ xq.T, xg @ xg.T)


def random_blocks(n_query=12, n_gallery=50, seed=1):
    """Similarities of gaussian unit rows, rounded (not exact in any narrow dtype)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_query + n_gallery, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    xq, xg = x[:n_query], x[n_query:]
    return xq @ xg.T, xq @ xq.T, xg @ xg.T


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, None], ids=lambda r: f"rows{r}")
def test_several_chunks_match_features_and_reference(chunk_rows, monkeypatch):
    # 12 queries and 50 gallery rows: with 3 rows per chunk, 4 query chunks and 17 gallery
    # chunks (the last ones partial); None keeps the 64 MB default (one chunk each)
    (xq, xg), blocks = exact_blocks()
    if chunk_rows is not None:
        monkeypatch.setattr(limits, "SIMILARITY_CHUNK_BYTES", 4 * (12 + 50) * chunk_rows)
    scores = gnn_rerank_similarities(*blocks, **KWARGS)
    np.testing.assert_array_equal(scores, gnn_rerank(xq, xg, **KWARGS))
    ref = gnn_rerank_reference(xq, xg, **KWARGS)
    assert_same_ranking(scores, ref)
    values, indices = gnn_rerank_similarities(*blocks, topk=8, **KWARGS)
    assert_same_topk(values, indices, ref, 8)


def _as(matrix: np.ndarray, kind: str):
    """``matrix`` as ``"numpy-float16"`` / ``"torch-bfloat16"`` etc."""
    library, dtype = kind.split("-")
    if library == "numpy":
        return matrix.astype(dtype)
    return torch.from_numpy(matrix).to(getattr(torch, dtype))


@pytest.mark.parametrize("kind", ["torch-bfloat16", "torch-float16", "numpy-float16"])
def test_narrow_floats_give_the_similarities_of_their_float32_values(kind, monkeypatch):
    # scale 0.3 is not exact in 16 bits: the narrow values must be scaled in float32,
    # chunk by chunk (5 rows at a time here), not in their own precision
    monkeypatch.setattr(limits, "SIMILARITY_CHUNK_BYTES", 4 * (12 + 50) * 5)
    narrow = [_as(m, kind) for m in random_blocks()]
    widened = [torch.as_tensor(m).float().numpy() for m in narrow]  # exact
    kwargs = dict(scale=0.3, offset=0.1, **KWARGS)
    ours = gnn_rerank_similarities(*narrow, **kwargs)
    assert isinstance(ours, type(narrow[0])) and ours.dtype in (np.float32, torch.float32)
    np.testing.assert_array_equal(np.asarray(ours), gnn_rerank_similarities(*widened, **kwargs))
    values, indices = gnn_rerank_similarities(*narrow, topk=5, **kwargs)
    expected = gnn_rerank_similarities(*widened, topk=5, **kwargs)
    np.testing.assert_array_equal(np.asarray(values), expected[0])
    np.testing.assert_array_equal(np.asarray(indices), expected[1])


def test_bfloat16_blocks_from_the_torchreid_drop_in():
    from triton_rerank.integrations.torchreid import re_ranking

    # squared euclidean distances 2 - 2 cos of exact rows: exact in bfloat16
    (xq, xg), blocks = exact_blocks()
    distances = [torch.from_numpy(2 - 2 * m).bfloat16() for m in blocks]
    dist = re_ranking(*distances, **KWARGS)
    assert isinstance(dist, np.ndarray) and dist.dtype == np.float32
    np.testing.assert_allclose(dist, 2 - 2 * gnn_rerank(xq, xg, **KWARGS), rtol=0, atol=1e-6)


def test_tensors_that_require_grad_are_read_detached():
    from triton_rerank.integrations.torchreid import re_ranking

    blocks = random_blocks()
    expected = gnn_rerank_similarities(*blocks, **KWARGS)
    parameters = [torch.nn.Parameter(torch.from_numpy(m)) for m in blocks]
    scores = gnn_rerank_similarities(*parameters, **KWARGS)
    assert not scores.requires_grad
    np.testing.assert_array_equal(scores.numpy(), expected)
    # outputs of a model run without torch.no_grad(), in bfloat16
    model = torch.nn.Linear(16, 16).bfloat16()
    x = model(torch.randn(62, 16, dtype=torch.bfloat16))
    assert x.requires_grad
    xq, xg = x[:12], x[12:]
    outputs = [xq @ xg.T, xq @ xq.T, xg @ xg.T]
    scores = gnn_rerank_similarities(*outputs, **KWARGS)
    np.testing.assert_array_equal(
        scores.numpy(),
        gnn_rerank_similarities(*[m.detach().float() for m in outputs], **KWARGS).numpy(),
    )
    distances = [2 - 2 * m for m in parameters]  # tensors with a grad_fn
    assert all(d.requires_grad for d in distances)
    np.testing.assert_array_equal(
        re_ranking(*distances, **KWARGS),
        re_ranking(*[d.detach().numpy() for d in distances], **KWARGS),
    )


def test_results_come_back_as_q_g_came():
    q_g, q_q, g_g = random_blocks()
    mixed = gnn_rerank_similarities(
        torch.from_numpy(q_g), q_q, torch.from_numpy(g_g), topk=3, **KWARGS
    )
    assert all(isinstance(t, torch.Tensor) for t in mixed)
    numpy_out = gnn_rerank_similarities(q_g, torch.from_numpy(q_q), g_g, **KWARGS)
    assert isinstance(numpy_out, np.ndarray)


Q_G, Q_Q, G_G = random_blocks(4, 9)


def _replace(position: int, value):
    blocks = [Q_G, Q_Q, G_G]
    blocks[position] = value
    return blocks


BAD_DTYPES = [
    # (blocks, message pattern)
    (_replace(0, Q_G.astype(np.int64)), r"q_g must hold floats, got dtype int64"),
    (_replace(1, Q_Q > 0), r"q_q must hold floats, got dtype bool"),
    (_replace(2, G_G.astype(np.complex64)), r"g_g must hold floats, got dtype complex64"),
    (_replace(0, Q_G.astype(object)), r"q_g must hold floats, got dtype object"),
    (_replace(1, torch.from_numpy(Q_Q).int()), r"q_q must hold floats, got dtype torch.int32"),
    (_replace(2, torch.from_numpy(G_G) > 0), r"g_g must hold floats, got dtype torch.bool"),
    (
        _replace(0, torch.from_numpy(Q_G).to(torch.complex64)),
        r"q_g must hold floats, got dtype torch.complex64",
    ),
    (_replace(1, Q_Q.tolist()), r"q_q must be a numpy.ndarray or a torch.Tensor, got list"),
]


@pytest.mark.parametrize(
    "blocks, pattern",
    BAD_DTYPES,
    ids=[
        "numpy-int64",
        "numpy-bool",
        "numpy-complex",
        "numpy-object",
        "torch-int32",
        "torch-bool",
        "torch-complex",
        "list",
    ],
)
def test_matrices_without_floats_are_a_type_error_naming_the_matrix(blocks, pattern):
    with pytest.raises(TypeError, match=pattern):
        gnn_rerank_similarities(*blocks, k1=5, k2=2)


BAD_AFFINE = [
    # (kwargs, exception, message pattern)
    ({"scale": float("nan")}, ValueError, r"scale must be a finite real number, got nan"),
    ({"scale": float("inf")}, ValueError, r"scale must be a finite real number, got inf"),
    (
        {"scale": np.float32(-np.inf)},
        ValueError,
        r"scale must be a finite real number, got np.float32\(-inf\)",
    ),
    (
        {"scale": 0},
        ValueError,
        r"scale must be non-zero \(every similarity would be the "
        r"offset\), got 0",
    ),
    ({"scale": "-0.5"}, TypeError, r"scale must be a finite real number, got '-0.5'"),
    ({"scale": None}, TypeError, r"scale must be a finite real number, got None"),
    ({"scale": True}, TypeError, r"scale must be a finite real number, got True"),
    ({"scale": 1j}, TypeError, r"scale must be a finite real number, got 1j"),
    ({"offset": float("nan")}, ValueError, r"offset must be a finite real number, got nan"),
    ({"offset": -float("inf")}, ValueError, r"offset must be a finite real number, got -inf"),
    (
        {"offset": torch.tensor(1.0)},
        TypeError,
        r"offset must be a finite real number, got tensor\(1\.\)",
    ),
]


@pytest.mark.parametrize(
    "kwargs, exception, pattern",
    BAD_AFFINE,
    ids=[
        "scale-nan",
        "scale-inf",
        "scale-numpy-minus-inf",
        "scale-zero",
        "scale-str",
        "scale-none",
        "scale-bool",
        "scale-complex",
        "offset-nan",
        "offset-minus-inf",
        "offset-tensor",
    ],
)
def test_bad_scale_or_offset_is_blamed_on_the_parameter(kwargs, exception, pattern):
    # checked before the matrices: here even the matrices are bad (NaN), yet the message
    # names the parameter
    with pytest.raises(exception, match=pattern):
        gnn_rerank_similarities(np.full((4, 9), np.nan), Q_Q, G_G, k1=5, k2=2, **kwargs)


def _with(matrix, row, value):
    matrix = matrix.copy()
    matrix[row, 1] = value
    return matrix


BAD_VALUES = [
    # (blocks, kwargs, message pattern)
    (_replace(1, _with(Q_Q, 2, np.nan)), {}, r"q_q contains NaN or inf \(first in row 2\)"),
    (
        _replace(2, torch.from_numpy(_with(G_G, 7, np.inf)).bfloat16()),
        {},
        r"g_g contains NaN or inf \(first in row 7\)",
    ),
    (
        _replace(0, _with(Q_G.astype(np.float64), 3, 1e300)),
        {},
        r"q_g row 3 overflows float32 as similarities offset \+ scale \* x with scale=1.0, "
        r"offset=0.0",
    ),
    (
        _replace(0, _with(Q_G, 1, 3e38)),
        {"scale": 10.0},
        r"q_g row 1 overflows float32 as similarities offset \+ scale \* x with scale=10.0",
    ),
]


@pytest.mark.parametrize(
    "blocks, kwargs, pattern",
    BAD_VALUES,
    ids=["nan", "inf-bfloat16", "float64-beyond-float32", "scaled-beyond-float32"],
)
def test_bad_entries_name_the_matrix_and_row(blocks, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        gnn_rerank_similarities(*blocks, k1=5, k2=2, **kwargs)
