"""``FeatureSet``: query and gallery features with their identity and camera labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FeatureSet:
    """Query and gallery features with optional identity and camera labels.

    The constructor checks nothing; :func:`load_features` checks what it reads.

    Attributes:
        query_features: ``[q, d]`` float32.
        gallery_features: ``[g, d]`` float32.
        query_pids, gallery_pids: ``[q]`` / ``[g]`` int64 identities, or None.
        query_camids, gallery_camids: ``[q]`` / ``[g]`` int64 cameras, or None.
    """

    query_features: np.ndarray
    gallery_features: np.ndarray
    query_pids: np.ndarray | None = None
    gallery_pids: np.ndarray | None = None
    query_camids: np.ndarray | None = None
    gallery_camids: np.ndarray | None = None

    @property
    def has_labels(self) -> bool:
        return all(
            x is not None
            for x in (self.query_pids, self.gallery_pids, self.query_camids, self.gallery_camids)
        )

    def labels(self):
        """``(q_pids, g_pids, q_camids, g_camids)``, the argument order of ``evaluate``."""
        if not self.has_labels:
            raise ValueError("this feature set has no identity/camera labels")
        return self.query_pids, self.gallery_pids, self.query_camids, self.gallery_camids
