"""Clustering for unsupervised re-ID, exact and without any ``N x N`` matrix: re-ranked
distances as sparse matrices (``jaccard.py``: the k-reciprocal Jaccard distance;
``gnn.py``: the GNN re-ranked distance; ``cosine.py``: the plain baseline), DBSCAN
pseudo-labels on them (``pseudo_labels.py``), the ``rho`` rule for DBSCAN's radius
(``eps.py``) and the projects' ``compute_jaccard_distance`` call (``drop_in.py``).
"""

from .cosine import cosine_distance
from .drop_in import compute_jaccard_distance
from .eps import TooFewStoredPairs, eps_from_rho
from .gnn import gnn_distance
from .jaccard import jaccard_distance
from .pseudo_labels import pseudo_labels

__all__ = [
    "TooFewStoredPairs",
    "compute_jaccard_distance",
    "cosine_distance",
    "eps_from_rho",
    "gnn_distance",
    "jaccard_distance",
    "pseudo_labels",
]
