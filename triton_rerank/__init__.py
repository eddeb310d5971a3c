"""triton-rerank: fast, memory-bounded GNN re-ranking for image retrieval.

Public API (imported lazily, so ``import triton_rerank`` stays cheap)::

    from triton_rerank import gnn_rerank, GNNReranker, evaluate, load_features
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys

__version__ = "0.1.0"

# The adapters live in the repository's top-level folder ``integrations/``, which an
# install (wheel or editable) maps to ``triton_rerank.integrations``. Run from a plain
# checkout (``PYTHONPATH=.``) nothing maps it; this finder, consulted after every other
# one, then finds it in the checkout (for that one name: its modules follow from it).
_CHECKOUT_ADAPTERS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "integrations"
)


class _CheckoutAdapterFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        init = os.path.join(_CHECKOUT_ADAPTERS, "__init__.py")
        if fullname != "triton_rerank.integrations" or not os.path.isfile(init):
            return None
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[_CHECKOUT_ADAPTERS]
        )


if not any(isinstance(f, _CheckoutAdapterFinder) for f in sys.meta_path):
    sys.meta_path.append(_CheckoutAdapterFinder())

_EXPORTS = {
    "gnn_rerank": "triton_rerank.rerank",
    "GNNReranker": "triton_rerank.rerank",
    "evaluate": "triton_rerank.evaluation.metrics",
    "RankingMetrics": "triton_rerank.evaluation.metrics",
    "load_features": "triton_rerank.app.data",
    "load_digits_split": "triton_rerank.app.data",
    "FeatureSet": "triton_rerank.evaluation.feature_set",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'triton_rerank' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
