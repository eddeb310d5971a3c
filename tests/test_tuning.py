"""tune(): the grid's cheap lamb mixing equals gnn_rerank, and the split is honest."""

import numpy as np
import pytest

from triton_rerank import gnn_rerank
from triton_rerank.metrics import evaluate
from triton_rerank.tuning import tune


def test_grid_scores_equal_gnn_rerank_and_halves_are_disjoint(digits):
    result = tune(digits, k1s=[10, 26], k2s=[1, 7], lambs=[0.0, 0.3], iterations_list=[2],
                  seed=3)
    q_pids, g_pids, q_cams, g_cams = digits.labels()
    order = np.random.default_rng(3).permutation(len(q_pids))
    tune_half = np.sort(order[: len(q_pids) // 2])
    for row in result.grid:
        setting = {k: row[k] for k in ("k1", "k2", "lamb", "iterations")}
        scores = gnn_rerank(digits.query_features, digits.gallery_features, **setting)
        expected = evaluate(scores[tune_half], q_pids[tune_half], g_pids, q_cams[tune_half],
                            g_cams).mAP
        assert row["tune_mAP"] == pytest.approx(expected, abs=1e-6)
    best_row = max(result.grid, key=lambda r: r["tune_mAP"])
    assert result.best == {k: best_row[k] for k in ("k1", "k2", "lamb", "iterations")}
    assert set(result.held_out) == {"no re-ranking", "defaults", "best"}
    assert result.heatmap.shape == (2, 2) and np.isfinite(result.heatmap).all()


def test_needs_two_queries(digits):
    from triton_rerank.data import FeatureSet

    one = FeatureSet(digits.query_features[:1], digits.gallery_features, digits.query_pids[:1],
                     digits.gallery_pids, digits.query_camids[:1], digits.gallery_camids)
    with pytest.raises(ValueError, match="at least 2 queries"):
        tune(one, k1s=[5], k2s=[3], lambs=[0.3], iterations_list=[2])
