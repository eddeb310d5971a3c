"""Re-ranking against a database that outlives one call: the exact mode
(``transductive.py``: the database's kNN lists cached, each batch propagated with them)
and the inductive mode (``inductive.py``: a database graph propagated once, queries
scored alone), with the inductive graph's file format (``graph_file.py``). The FAISS
adapter (``triton_rerank.integrations.faiss``) is built on them.
"""
