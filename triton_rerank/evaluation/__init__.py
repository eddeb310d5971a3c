"""Measuring re-ranking: retrieval metrics (``metrics.py``: mAP, CMC, mINP with re-ID's
camera rule), the labelled feature set they read (``feature_set.py``) and the choice of
parameters on held-out queries (``tuning.py``)."""
