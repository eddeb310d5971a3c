"""The CPU backend (``backend="cpu"``): numpy, torch and numba, no GPU.

``pipeline.py`` runs it end to end; ``knn.py`` (certified canonical kNN lists, with the
fast pass's precision chosen by ``knn_precision.py``), ``propagation.py`` and
``scoring.py`` are its three steps, ``sparse_rows.py`` their row storage, and
``kernels/`` the compiled numba loops they call.
"""
