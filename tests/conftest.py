"""Shared fixtures. CPU by default; the Triton kernel tests (``-m interpreter``) run
compiled on a CUDA GPU when there is one, else in the Triton interpreter."""

from __future__ import annotations

import importlib
import os
import pkgutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

# Read when a kernel is decorated, so before any triton_rerank.gpu import. The
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
    from triton_rerank.app.data import load_features

    return load_features(pku_path)


@pytest.fixture(scope="session")
def digits():
    from triton_rerank.app.data import load_digits_split

    return load_digits_split(queries_per_class=5)


@pytest.fixture(scope="session")
def kernel_device() -> torch.device:
    """Where the Triton kernel tests run: the GPU, or the CPU (interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# What the kernel launchers' new buffers hold under ``poisoned_kernel_outputs``.
POISON_FLOAT = float("nan")
POISON_INT = -7


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill ``t`` with values no kernel writes: NaN, -7 (ints), the maximum (unsigned), True."""
    if t.is_floating_point() or t.is_complex():
        return t.fill_(POISON_FLOAT)
    if t.dtype == torch.bool:
        return t.fill_(True)
    return t.fill_(POISON_INT if t.dtype.is_signed else torch.iinfo(t.dtype).max)


class _PoisonedTorch:
    """The ``torch`` module as the kernel launchers see it, except that ``torch.empty``
    and ``torch.empty_like`` return poisoned buffers (``torch.zeros`` etc. are untouched:
    there the zeros are part of the contract)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs):
        return poison(torch.empty(*args, **kwargs))

    @staticmethod
    def empty_like(*args, **kwargs):
        return poison(torch.empty_like(*args, **kwargs))


def kernel_launcher_modules():
    """``triton_rerank.gpu.*``: every module that allocates kernel outputs."""
    import triton_rerank.gpu as kernels

    names = [f"{kernels.__name__}.{m.name}" for m in pkgutil.iter_modules(kernels.__path__)]
    return [importlib.import_module(n) for n in names]


@pytest.fixture
def poisoned_kernel_outputs(monkeypatch):
    """Kernel launchers allocate poisoned buffers (NaN floats, -7 ints) instead of
    ``torch.empty``'s leftovers (often zeros, sometimes garbage): an output element a
    kernel forgets to write then fails the comparison instead of passing by luck or
    crashing later. Use with ``pytest.mark.usefixtures("poisoned_kernel_outputs")``."""
    proxy = _PoisonedTorch()
    for module in kernel_launcher_modules():
        if getattr(module, "torch", None) is torch:
            monkeypatch.setattr(module, "torch", proxy)
    return proxy
