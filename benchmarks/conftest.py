"""Shared data for the pytest-benchmark suites (stage timings at a few sizes).

Run for timings and the regression check with ``benchmarks/regress.sh``; plain
``pytest`` (and CI) runs them once each with ``--benchmark-disable`` (set in
pyproject.toml), so they stay correct without timing noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from triton_rerank.app.synthetic import ReidShape, reid_like_features

# (name, shape): small enough for CI's single runs, large enough to time
SIZES = {
    "N2k": ReidShape(
        n_query=400, n_gallery=1600, dim=128, n_ids=100, n_cams=6, distractor_fraction=1 / 8
    ),
    "N10k": ReidShape(
        n_query=1500, n_gallery=8500, dim=256, n_ids=400, n_cams=6, distractor_fraction=1 / 8
    ),
}


@pytest.fixture(scope="session", params=sorted(SIZES), ids=sorted(SIZES))
def features(request):
    """Unit-norm synthetic re-ID features of one size: a FeatureSet."""
    return reid_like_features(SIZES[request.param], seed=0)


@pytest.fixture(scope="session")
def nodes(features):
    """``[N, d]`` float32 tensor, queries first."""
    return torch.from_numpy(np.concatenate([features.query_features, features.gallery_features]))
