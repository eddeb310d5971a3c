"""tune(): the grid's cheap lamb mixing equals gnn_rerank, the split is honest, and
"no re-ranking" wins where re-ranking hurts."""

import numpy as np
import pytest

from triton_rerank import gnn_rerank
from triton_rerank.app.data import FeatureSet
from triton_rerank.evaluation.metrics import evaluate
from triton_rerank.evaluation.tuning import tune

SMALL_GRID = dict(k1s=[10, 20], k2s=[1, 3], lambs=[0.0, 0.5, 0.9], iterations_list=[1, 2])


def single_shot_features(n_ids: int = 30, n_decoys: int = 30) -> FeatureSet:
    """Single-shot data where neighbours of neighbours mislead, by construction.

    With c, d, e_i, w_j orthonormal and every row scaled to norm 1: query i is
    ``1.5 c + e_i`` and its one gallery match ``1.5 d + e_i``, so cosine ranks the
    match first (similarity 1/3.25; 0 for the other matches) and mAP without
    re-ranking is 100%. But the queries are closer to each other (2.25/3.25) than to
    their matches, so a query's k1 < n_ids nearest neighbours are other queries, whose
    next neighbours are decoys ``c + 3 w_j`` (gallery items of other identities,
    similarity 0.26 with every query, below the match's 0.31) that have the queries as
    their neighbours. GNN re-ranking scores by shared neighbours, so it puts the decoys
    first and the match, which shares none, last.
    """
    eye = np.eye(n_ids + n_decoys + 2, dtype=np.float32)
    c, d, ids, own = eye[-2], eye[-1], eye[:n_ids], eye[n_ids : n_ids + n_decoys]
    query, matches, decoys = 1.5 * c + ids, 1.5 * d + ids, c + 3 * own
    query, matches, decoys = (
        x / np.linalg.norm(x, axis=1, keepdims=True) for x in (query, matches, decoys)
    )
    g_pids = np.concatenate([np.arange(n_ids), n_ids + np.arange(n_decoys)])
    return FeatureSet(
        query,
        np.concatenate([matches, decoys]),
        np.arange(n_ids),
        g_pids,
        np.zeros(n_ids, np.int64),
        np.ones(n_ids + n_decoys, np.int64),
    )


def test_grid_scores_equal_gnn_rerank_and_halves_are_disjoint(digits):
    result = tune(digits, k1s=[10, 26], k2s=[1, 7], lambs=[0.0, 0.3], iterations_list=[2], seed=3)
    q_pids, g_pids, q_cams, g_cams = digits.labels()
    order = np.random.default_rng(3).permutation(len(q_pids))
    tune_half = np.sort(order[: len(q_pids) // 2])
    for row in result.grid:
        setting = {k: row[k] for k in ("k1", "k2", "lamb", "iterations")}
        scores = gnn_rerank(digits.query_features, digits.gallery_features, **setting)
        expected = evaluate(
            scores[tune_half], q_pids[tune_half], g_pids, q_cams[tune_half], g_cams
        ).mAP
        assert row["tune_mAP"] == pytest.approx(expected, abs=1e-6)
    best_row = max(result.grid, key=lambda r: r["tune_mAP"])
    setting = {k: best_row[k] for k in ("k1", "k2", "lamb", "iterations")}
    # re-ranking wins on digits (tune half: 87.9% vs 67.6%): best is the grid point
    assert best_row["tune_mAP"] > result.no_rerank_tune_mAP
    assert result.best == {"rerank": True, **setting} and result.setting == setting
    assert result.best_grid == setting
    assert set(result.held_out) == {"no re-ranking", "defaults", "best"}
    assert result.heatmap.shape == (2, 2) and np.isfinite(result.heatmap).all()


def test_needs_two_queries(digits):
    from triton_rerank.app.data import FeatureSet

    one = FeatureSet(
        digits.query_features[:1],
        digits.gallery_features,
        digits.query_pids[:1],
        digits.gallery_pids,
        digits.query_camids[:1],
        digits.gallery_camids,
    )
    with pytest.raises(ValueError, match="at least 2 queries"):
        tune(one, k1s=[5], k2s=[3], lambs=[0.3], iterations_list=[2])


def test_no_re_ranking_wins_on_misleading_single_shot_data():
    data = single_shot_features()
    result = tune(data, **SMALL_GRID)
    assert result.best == {"rerank": False} and result.setting is None
    q_pids, g_pids, q_cams, g_cams = data.labels()
    order = np.random.default_rng(0).permutation(len(q_pids))
    tune_half = np.sort(order[: len(q_pids) // 2])
    plain = evaluate(
        (data.query_features @ data.gallery_features.T)[tune_half],
        q_pids[tune_half],
        g_pids,
        q_cams[tune_half],
        g_cams,
    ).mAP
    assert result.no_rerank_tune_mAP == pytest.approx(plain) == 1.0
    assert max(r["tune_mAP"] for r in result.grid) < 0.1  # every grid point loses
    assert result.held_out["best"] == result.held_out["no re-ranking"] == 1.0
    assert result.held_out["defaults"] < 0.1
    best_grid = max(result.grid, key=lambda r: r["tune_mAP"])
    assert result.best_grid == {k: best_grid[k] for k in ("k1", "k2", "lamb", "iterations")}
    assert result.heatmap.shape == (2, 2) and np.isfinite(result.heatmap).all()
