"""triton-rerank: fast, memory-bounded GNN re-ranking for image retrieval.

Public API (imported lazily, so ``import triton_rerank`` stays cheap)::

    from triton_rerank import gnn_rerank, GNNReranker, evaluate, load_features
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "gnn_rerank": "triton_rerank.rerank",
    "GNNReranker": "triton_rerank.rerank",
    "evaluate": "triton_rerank.metrics",
    "RankingMetrics": "triton_rerank.metrics",
    "load_features": "triton_rerank.data",
    "load_digits_split": "triton_rerank.data",
    "FeatureSet": "triton_rerank.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'triton_rerank' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
