"""Clustering for unsupervised re-ID: the k-reciprocal Jaccard distance as a sparse
matrix (``jaccard.py``) and DBSCAN pseudo-labels on it (``pseudo_labels.py``), exact
and without any ``N x N`` matrix.
"""

from .jaccard import jaccard_distance
from .pseudo_labels import pseudo_labels

__all__ = ["jaccard_distance", "pseudo_labels"]
