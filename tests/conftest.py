"""Shared fixtures. CPU by default; the Triton kernel tests (``-m interpreter``) run
compiled on a CUDA GPU when there is one, else in the Triton interpreter."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

# Read when a kernel is decorated, so before any triton_rerank.kernels import. The
# CPU-path tests are unaffected: backend="auto" keeps CPU tensors on the CPU path.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

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


@pytest.fixture(scope="session")
def kernel_device() -> torch.device:
    """Where the Triton kernel tests run: the GPU, or the CPU (interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
