"""Re-ranking against a database that outlives one call: the exact mode
(``transductive.py``: the database's kNN lists cached, each batch propagated with them)
and the inductive mode (``inductive.py``: a database graph propagated once, queries
scored alone), with the inductive graph's file format (``graph_file.py``), and both
modes on any vector store that follows the search-backend protocol
(``search_backend.py``, ``reranked_search.py``): the FAISS, Milvus and LanceDB adapters
(``triton_rerank.integrations``) are built on them.
"""
