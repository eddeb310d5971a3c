"""The search-backend protocol: what re-ranked search needs from a vector store.

:class:`~triton_rerank.database.reranked_search.RerankedSearch` runs the exact and the
inductive modes on any object with the members of :class:`SearchBackend`; the FAISS,
Milvus and LanceDB adapters (``triton_rerank.integrations.*``) are its implementations.
A backend is a thin view of one store (a FAISS index, a Milvus collection, a LanceDB
table): it searches, reads vectors back, counts, and says when its data changed. It
keeps no re-ranking state.

Ids are the store's own: an int64 array for integer ids, a numpy ``str`` array for
string ids (Milvus ``VARCHAR`` primary keys, LanceDB string columns). Vectors are
float32 as stored (not normalised: the re-ranking normalises them).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

# The metrics a backend may report: inner product, cosine similarity, (squared) L2
# distance. Other metrics (Hamming, Jaccard, BM25...) are refused by the adapters.
METRICS = ("ip", "cosine", "l2")


@dataclass(frozen=True)
class SearchHits:
    """The results of a batch search, padded to ``k`` per query.

    Attributes:
        distances: ``[n, k]`` float32 in the store's own convention (similarities for
            ``ip`` and ``cosine`` stores as the store reports them, distances for
            ``l2``); any value where ``found`` is False.
        ids: ``[n, k]`` the ids (int64, or ``str``); any value where ``found`` is False.
        found: ``[n, k]`` bool, True for the real results; each row's real results come
            first, best first.
    """

    distances: np.ndarray
    ids: np.ndarray
    found: np.ndarray


@runtime_checkable
class SearchBackend(Protocol):
    """A vector store seen by the re-ranking (see the module doc).

    Attributes:
        description: how messages name the store, e.g. ``"the index"`` or
            ``"collection 'photos'"``.
        dimension: d, the stored vectors' dimension.
        metric: one of :data:`METRICS`, the metric of :meth:`search`.
        exact: True when :meth:`search` is exhaustive (brute force): the inductive graph
            then takes the canonical kNN of the stored vectors, computed locally, instead
            of searching each row's neighbours.
    """

    description: str
    dimension: int
    metric: str
    exact: bool

    def count(self) -> int:
        """The number of stored rows, now."""
        ...

    def version(self) -> Hashable:
        """A cheap token of the stored data: it changes whenever rows are inserted or
        deleted (equal tokens promise no such change). Read before every search: the
        inductive graph and exact mode's cached kNN lists belong to one version."""
        ...

    def ids(self, filter=None) -> np.ndarray:
        """``[m]`` the id of every stored row (int64 or ``str``), without repeats; with
        ``filter`` (the store's own filter expression), of the rows it keeps.

        Without ``filter`` the order is the backend's canonical order, the same from
        call to call for the same data (it fixes the database positions, and so the
        fingerprint of saved graphs and the tie rule between equal scores)."""
        ...

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        """``[m, d]`` float32 the stored vectors of ``ids`` ``[m]``, in that order.

        Raises:
            ValueError: the store cannot return them (the message says why).
        """
        ...

    def search(self, queries: np.ndarray, k: int, *, filter=None) -> SearchHits:
        """The ``k`` nearest stored rows of each query by :attr:`metric`.

        Args:
            queries: ``[n, d]`` float32 unit rows.
            k: results per query, ``1 <= k <= count()``.
            filter: the store's own filter expression (candidates only from the rows it
                keeps), or None.
        """
        ...
