"""torchreid compatibility: find torchreid's modules under either install layout.

PyPI's ``torchreid`` 0.2.5 ships deep-person-reid 1.4.0 under ``torchreid.reid``;
installs from the upstream repository put the same code at ``torchreid.*``.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def torchreid_module(name: str) -> ModuleType:
    """Import ``torchreid.reid.<name>`` (PyPI layout) or else ``torchreid.<name>`` (upstream).

    Args:
        name: dotted module path inside torchreid, e.g. ``"metrics"`` or ``"utils.rerank"``.

    Raises:
        ImportError: torchreid is not installed (install the ``torchreid`` extra), or has
            no such module.
    """
    try:
        import torchreid  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "torchreid is not installed; install it with: pip install 'triton-rerank[torchreid]'"
        ) from err
    for candidate in (f"torchreid.reid.{name}", f"torchreid.{name}"):
        try:
            return importlib.import_module(candidate)
        except ModuleNotFoundError as err:
            if err.name is None or not candidate.startswith(err.name):
                raise
    raise ImportError(f"torchreid has no module {name!r} under torchreid.reid or torchreid")
