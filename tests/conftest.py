"""Shared fixtures. CPU by default; Triton kernel tests (later) run under TRITON_INTERPRET=1."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

# torchreid warns at import when its Cython evaluator is not compiled; the Python one is used.
warnings.filterwarnings("ignore", message="Cython evaluation")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PKU_SKETCH = SHARED_DATA / "pku_sketch_pytorch_result.mat"


@pytest.fixture(scope="session")
def pku_path() -> Path:
    """The real PKU-Sketch feature file from ../shared/data (skips when absent)."""
    path = Path(os.environ.get("TRITON_RERANK_PKU", PKU_SKETCH))
    if not path.is_file():
        pytest.skip(f"real PKU-Sketch features not found at {path} (../shared is absent)")
    return path


@pytest.fixture(scope="session")
def pku(pku_path):
    from triton_rerank.data import load_features

    return load_features(pku_path)


@pytest.fixture(scope="session")
def digits():
    from triton_rerank.data import load_digits_split

    return load_digits_split(queries_per_class=5)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
