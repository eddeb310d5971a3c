"""evaluate() against real torchreid's evaluate_rank, plus hand-checked cases and errors."""

import numpy as np
import pytest
from triton_rerank.integrations.torchreid import torchreid_module

from triton_rerank import gnn_rerank
from triton_rerank.metrics import evaluate


def torchreid_evaluate(scores, *labels, max_rank=50):
    evaluate_rank = torchreid_module("metrics").evaluate_rank
    cmc, mAP = evaluate_rank(-scores, *labels, max_rank=max_rank, use_cython=False)
    return cmc, mAP


def synthetic_reid(rng, n_query=60, n_gallery=400, n_ids=30, n_cams=4):
    """Random scores plus labels where some queries have no valid match."""
    scores = rng.standard_normal((n_query, n_gallery))
    q_pids = rng.integers(0, n_ids + 5, n_query)  # ids >= n_ids never appear in the gallery
    g_pids = rng.integers(0, n_ids, n_gallery)
    g_pids[:20] = -1  # distractors
    return scores, q_pids, g_pids, rng.integers(0, n_cams, n_query), \
        rng.integers(0, n_cams, n_gallery)


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
    for scores in (pku.query_features @ pku.gallery_features.T,
                   gnn_rerank(pku.query_features, pku.gallery_features)):
        ours = evaluate(scores, *labels)
        cmc, mAP = torchreid_evaluate(scores, *labels)
        assert abs(ours.mAP - mAP) < 1e-6
        np.testing.assert_allclose(ours.cmc, cmc, atol=1e-6)


def test_small_gallery_caps_max_rank_like_torchreid():
    scores, q_pids, g_pids, q_cams, g_cams = synthetic_reid(np.random.default_rng(0),
                                                            n_gallery=30)
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
    torch = pytest.importorskip("torch")
    scores, *labels = synthetic_reid(np.random.default_rng(3))
    as_columns = [np.asarray(x)[None, :] for x in labels]  # MATLAB-style 1 x n
    a = evaluate(torch.from_numpy(scores), *as_columns)
    b = evaluate(scores, *labels)
    assert a.mAP == b.mAP and a.mINP == b.mINP


@pytest.mark.parametrize("args, pattern", [
    ((np.zeros(3), [1], [1, 2, 3], [0], [0, 0, 0]), r"scores must be 2-D"),
    ((np.zeros((1, 3)), [1], [1, 2], [0], [0, 0, 0]), r"g_pids must have shape \[3\]"),
    ((np.zeros((2, 3)), [1], [1, 2, 3], [0], [0, 0, 0]), r"q_pids must have shape \[2\]"),
    ((np.full((1, 2), np.nan), [1], [1, 2], [0], [1, 1]), r"scores contain NaN"),
    ((np.zeros((1, 2)), [1], [1, 2], [0], [0, 1]), r"no query has a valid match"),
])
def test_errors(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        evaluate(*args)


def test_max_rank_must_be_positive():
    with pytest.raises(ValueError, match=r"max_rank must be a positive integer, got 0"):
        evaluate(np.zeros((1, 2)), [1], [1, 2], [0], [1, 1], max_rank=0)


def test_map_at_k_by_hand():
    from triton_rerank.metrics import map_at_k

    database_labels = np.array([0, 0, 1, 1, 1, 2])
    retrieved = np.array([[0, 2, 1],      # hits at ranks 1 and 3: (1 + 2/3) / min(2, 3)
                          [5, 2, 3],      # ranks 2 and 3 of 3 relevant: (1/2 + 2/3) / 3
                          [2, -1, -1],    # label 2 at rank... none: 0
                          [0, 1, -1]])    # label 3 has no relevant item: 0
    query_labels = np.array([0, 1, 2, 3])
    expected = [(1 + 2 / 3) / 2, (1 / 2 + 2 / 3) / 3, 0.0, 0.0]
    assert map_at_k(retrieved, query_labels, database_labels) == pytest.approx(np.mean(expected))
    with pytest.raises(ValueError, match=r"retrieved must be \[q, k\]"):
        map_at_k(retrieved[0], query_labels, database_labels)


def test_list_recall_by_hand():
    from triton_rerank.metrics import list_recall

    found = np.array([[3, 1, 2], [7, 8, 9]])
    wanted = np.array([[1, 2, 5], [9, 7, 8]])  # 2 of 3, then 3 of 3 in another order
    assert list_recall(found, wanted) == pytest.approx((2 / 3 + 1) / 2)
    assert list_recall(found, found[:, :1]) == 1.0
