"""evaluate() against real torchreid's evaluate_rank, plus hand-checked cases and errors."""

import numpy as np
import pytest
import torch

from triton_rerank import gnn_rerank
from triton_rerank.evaluation.metrics import evaluate
from triton_rerank.integrations.torchreid import torchreid_module


def torchreid_evaluate(scores, *labels, max_rank=50):
    pytest.importorskip("torchreid", reason="the comparison needs the torchreid extra")
    evaluate_rank = torchreid_module("metrics").evaluate_rank
    cmc, mAP = evaluate_rank(-scores, *labels, max_rank=max_rank, use_cython=False)
    return cmc, mAP


def synthetic_reid(rng, n_query=60, n_gallery=400, n_ids=30, n_cams=4):
    """Random scores plus labels where some queries have no valid match."""
    scores = rng.standard_normal((n_query, n_gallery))
    q_pids = rng.integers(0, n_ids + 5, n_query)  # ids >= n_ids never appear in the gallery
    g_pids = rng.integers(0, n_ids, n_gallery)
    g_pids[:20] = -1  # distractors
    return (
        scores,
        q_pids,
        g_pids,
        rng.integers(0, n_cams, n_query),
        rng.integers(0, n_cams, n_gallery),
    )


@pytest.mark.parametrize("max_rank", [1, 10, 50])
def test_matches_torchreid_on_random_scores(max_rank):
    scores, *labels = synthetic_reid(np.random.default_rng(max_rank))
    ours = evaluate(scores, *labels, max_rank=max_rank)
    cmc, mAP = torchreid_evaluate(scores, *labels, max_rank=max_rank)
    assert ours.cmc.shape == (max_rank,)
    assert abs(ours.mAP - mAP) < 1e-6
    np.testing.assert_allclose(ours.cmc, cmc, atol=1e-6)


def test_matches_torchreid_on_real_pku_sketch(pku):
    labels = pku.labels()
    for scores in (
        pku.query_features @ pku.gallery_features.T,
        gnn_rerank(pku.query_features, pku.gallery_features),
    ):
        ours = evaluate(scores, *labels)
        cmc, mAP = torchreid_evaluate(scores, *labels)
        assert abs(ours.mAP - mAP) < 1e-6
        np.testing.assert_allclose(ours.cmc, cmc, atol=1e-6)


def test_small_gallery_caps_max_rank_like_torchreid():
    scores, q_pids, g_pids, q_cams, g_cams = synthetic_reid(np.random.default_rng(0), n_gallery=30)
    # torchreid itself fails when dropped items leave fewer than max_rank, so drop none
    labels = (q_pids, g_pids, np.zeros_like(q_cams), np.ones_like(g_cams))
    ours = evaluate(scores, *labels, max_rank=50)
    cmc, mAP = torchreid_evaluate(scores, *labels, max_rank=50)
    assert ours.cmc.shape == cmc.shape == (30,)
    np.testing.assert_allclose(ours.cmc, cmc, atol=1e-6)


def test_hand_checked_query():
    # ranking: g0 (match, same camera: dropped), g1 (miss), g2 (match), g3 (miss), g4 (match)
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    m = evaluate(scores, [1], [1, 2, 1, 3, 1], [0], [0, 1, 1, 1, 1], max_rank=4)
    # kept order: g1 g2 g3 g4 -> matches at ranks 2 and 4
    assert m.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    np.testing.assert_allclose(m.cmc, [0, 1, 1, 1])
    assert m.mINP == pytest.approx(2 / 4)
    assert m.num_valid_queries == 1


def test_ties_rank_smaller_gallery_index_first():
    m = evaluate(np.zeros((1, 3)), [5], [1, 5, 5], [0], [1, 1, 1])
    assert m.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_torch_scores_and_column_labels_are_accepted():
    scores, *labels = synthetic_reid(np.random.default_rng(3))
    as_columns = [np.asarray(x)[None, :] for x in labels]  # MATLAB-style 1 x n
    a = evaluate(torch.from_numpy(scores), *as_columns)
    b = evaluate(scores, *labels)
    assert a.mAP == b.mAP and a.mINP == b.mINP


@pytest.mark.parametrize(
    "args, pattern",
    [
        ((np.zeros(3), [1], [1, 2, 3], [0], [0, 0, 0]), r"scores must be 2-D"),
        ((np.zeros((1, 3)), [1], [1, 2], [0], [0, 0, 0]), r"g_pids must have shape \[3\]"),
        ((np.zeros((2, 3)), [1], [1, 2, 3], [0], [0, 0, 0]), r"q_pids must have shape \[2\]"),
        ((np.full((1, 2), np.nan), [1], [1, 2], [0], [1, 1]), r"scores contain NaN"),
        ((np.zeros((1, 2)), [1], [1, 2], [0], [0, 1]), r"no query has a valid match"),
    ],
)
def test_errors(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        evaluate(*args)


def test_max_rank_must_be_positive():
    with pytest.raises(ValueError, match=r"max_rank must be a positive integer, got 0"):
        evaluate(np.zeros((1, 2)), [1], [1, 2], [0], [1, 1], max_rank=0)


def test_map_at_k_by_hand():
    from triton_rerank.evaluation.metrics import map_at_k

    database_labels = np.array([0, 0, 1, 1, 1, 2])
    retrieved = np.array(
        [
            [0, 2, 1],  # hits at ranks 1 and 3: (1 + 2/3) / min(2, 3)
            [5, 2, 3],  # ranks 2 and 3 of 3 relevant: (1/2 + 2/3) / 3
            [2, -1, -1],  # label 2 at rank... none: 0
            [0, 1, -1],
        ]
    )  # label 3 has no relevant item: 0
    query_labels = np.array([0, 1, 2, 3])
    expected = [(1 + 2 / 3) / 2, (1 / 2 + 2 / 3) / 3, 0.0, 0.0]
    assert map_at_k(retrieved, query_labels, database_labels) == pytest.approx(np.mean(expected))
    with pytest.raises(ValueError, match=r"retrieved must be \[q, k\]"):
        map_at_k(retrieved[0], query_labels, database_labels)


def test_list_recall_by_hand():
    from triton_rerank.evaluation.metrics import list_recall

    found = np.array([[3, 1, 2], [7, 8, 9]])
    wanted = np.array([[1, 2, 5], [9, 7, 8]])  # 2 of 3, then 3 of 3 in another order
    assert list_recall(found, wanted) == pytest.approx((2 / 3 + 1) / 2)
    assert list_recall(found, found[:, :1]) == 1.0


def _labels(**changes):
    """Valid labels of a 2 x 4 problem (query 0 has a match), with some replaced."""
    labels = dict(
        q_pids=np.array([1, 2]),
        g_pids=np.array([1, 2, 1, 3]),
        q_camids=np.array([0, 0]),
        g_camids=np.array([1, 1, 0, 1]),
    )
    return {**labels, **changes}


BAD_LABELS = [
    # (replaced labels, message pattern)
    (
        dict(q_pids=np.array([1.0, np.nan])),
        r"q_pids contains nan at position 1: labels must "
        r"be finite integers",
    ),
    (dict(g_camids=np.array([1, 1, np.inf, 1])), r"g_camids contains inf at position 2"),
    (dict(g_pids=torch.tensor([1.0, 2.0, -np.inf, 3.0])), r"g_pids contains -inf at position 2"),
    (
        dict(q_camids=np.array([0.0, 0.5])),
        r"q_camids must hold integer-valued labels, got 0.5 "
        r"at position 1",
    ),
    (
        dict(g_pids=np.array([1, 2, 1, 1e19])),
        r"g_pids has the label 1e\+19 at position 3, "
        r"beyond the int64 range",
    ),
    (
        dict(q_pids=np.array([[1, 2], [3, 4]])),
        r"q_pids must have shape \[2\] to match scores "
        r"\(2, 4\), got \(2, 2\)",
    ),
    (
        dict(g_camids=np.int64(1)),
        r"g_camids must have shape \[4\] to match scores \(2, 4\), "
        r"got \(\)",
    ),
    (dict(q_pids=np.array([1, np.nan], dtype=object)), r"q_pids contains nan at position 1"),
]


@pytest.mark.parametrize(
    "changes, pattern",
    BAD_LABELS,
    ids=[
        "nan",
        "inf",
        "minus-inf-tensor",
        "non-integer",
        "beyond-int64",
        "2-d",
        "scalar",
        "nan-object",
    ],
)
def test_bad_label_values_are_a_value_error(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        evaluate(np.zeros((2, 4)), **_labels(**changes))


WRONG_KINDS = [
    (
        dict(q_pids=np.array([1, 2], dtype=np.complex64)),
        r"q_pids must hold integer or string labels, got dtype complex64",
    ),
    (
        dict(g_camids=np.array([1, None, 0, 1], dtype=object)),
        r"g_camids must hold integer or string labels, got dtype object",
    ),
    (
        dict(q_pids=np.array(["a", "b"])),
        r"q_pids holds strings and g_pids numbers: pass both as strings or both as numbers",
    ),
    (dict(g_camids=["c1", "c1", "c0", "c1"]), r"q_camids holds numbers and g_camids strings"),
]


@pytest.mark.parametrize(
    "changes, pattern",
    WRONG_KINDS,
    ids=["complex", "object-none", "strings-with-numbers", "numbers-with-strings"],
)
def test_labels_of_the_wrong_kind_are_a_type_error(changes, pattern):
    with pytest.raises(TypeError, match=pattern):
        evaluate(np.zeros((2, 4)), **_labels(**changes))


def test_string_labels_are_numbered_jointly_for_query_and_gallery():
    scores, q_pids, g_pids, q_cams, g_cams = synthetic_reid(np.random.default_rng(5))
    expected = evaluate(scores, q_pids, g_pids, q_cams, g_cams)
    names = np.array([f"person-{i:03d}" for i in range(-1, 40)])
    # the gallery alone has fewer identities than the query: joint numbering matters
    as_strings = (
        names[q_pids + 1],
        names[g_pids + 1],
        np.array([f"cam{c}" for c in q_cams], dtype=object),  # a pandas-like column
        np.array([f"cam{c}" for c in g_cams]).astype(np.bytes_),
    )
    ours = evaluate(scores, *as_strings)
    assert ours.mAP == expected.mAP and ours.mINP == expected.mINP
    np.testing.assert_array_equal(ours.cmc, expected.cmc)


def test_integer_valued_float_labels_and_tensors_that_require_grad():
    scores, *labels = synthetic_reid(np.random.default_rng(6))
    expected = evaluate(scores, *labels)
    as_floats = [np.asarray(x, dtype=np.float64) for x in labels]  # as read from .mat files
    assert evaluate(scores, *as_floats).mAP == expected.mAP
    as_objects = [np.array(x.tolist(), dtype=object) for x in (labels[0], as_floats[1])]
    assert evaluate(scores, *as_objects, *labels[2:]).mAP == expected.mAP  # Python ints/floats
    parameter = torch.nn.Parameter(torch.from_numpy(scores))
    grad_labels = [torch.tensor(x, dtype=torch.float32, requires_grad=True) for x in labels]
    ours = evaluate(parameter * 1.0, *grad_labels)  # a tensor with a grad_fn
    assert ours.mAP == expected.mAP
    np.testing.assert_array_equal(ours.cmc, expected.cmc)


def test_bfloat16_score_tensors_are_evaluated_like_float32():
    scores = torch.tensor([[0.5, 0.25, 0.125], [0.0, 1.0, 0.5]])
    labels = ([0, 1], [0, 1, 1], [0, 0], [1, 1, 1])
    ours, want = evaluate(scores.bfloat16(), *labels), evaluate(scores, *labels)
    assert (ours.mAP, ours.mINP) == (want.mAP, want.mINP)
    np.testing.assert_array_equal(ours.cmc, want.cmc)
