# ruff: noqa: E741  (FAISS's own names for search results: D, I)
"""FAISS inductive mode: a saved database graph over an HNSW index.

For large databases, ``mode="inductive"`` propagates the database graph once,
offline (its kNN lists found by any index, here HNSW), and scores each query alone
against its shortlist. The graph is saved to a file and loaded into a fresh wrapper,
as a service would at start-up; results must be identical. Recall is measured against
exact mode's top-k (the transductive result, ``gnn_rerank(xq, xb, topk=k)``), next to
plain HNSW's.

Run: .venv/bin/python examples/faiss_inductive.py
"""

import os
import tempfile
import time

import faiss
import numpy as np

from triton_rerank.integrations.faiss import RerankedIndex

# --- clustered vectors: 200 clusters x 40 database vectors, d = 64 ---------------------
rng = np.random.default_rng(0)
n_clusters, per_cluster, d, k = 200, 40, 64, 20
centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
labels = np.repeat(np.arange(n_clusters), per_cluster)
xb = centres[labels] + 1.5 * rng.standard_normal((len(labels), d)).astype(np.float32)
q_labels = rng.integers(0, n_clusters, 300)
xq = centres[q_labels] + 1.5 * rng.standard_normal((len(q_labels), d)).astype(np.float32)
faiss.normalize_L2(xb)  # unit vectors: the index's inner product is the cosine
faiss.normalize_L2(xq)

# HNSW stores the vectors, so the wrapper can read them back (an IVF index would need
# index.make_direct_map() for that)
index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
index.add(xb)
params = dict(k1=26, k2=7, lamb=0.3)

start = time.perf_counter()
builder = RerankedIndex(index, mode="inductive", shortlist=200, **params)
builder.build_graph()  # each vector's k1 neighbours from the HNSW search
build_s = time.perf_counter() - start
with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "graph.npz")
    builder.save_graph(path)
    size_mb = os.path.getsize(path) / 2**20
    served = RerankedIndex(index, mode="inductive", shortlist=200, **params)
    served.load_graph(path)  # validated: checksum and fingerprint of this database

start = time.perf_counter()
D, I = served.search(xq, k)
search_s = time.perf_counter() - start
D_built, I_built = builder.search(xq, k)
_, I_exact = RerankedIndex(index, mode="exact", **params).search(xq, k)
_, I_plain = index.search(xq, k)

# top-k lists hold distinct ids: the share of exact mode's ids found, and of same-cluster ids
recall = {
    name: (I_[:, :, None] == I_exact[:, None, :]).any(2).mean()
    for name, I_ in (("plain", I_plain), ("inductive", I))
}
precision = {
    name: (labels[I_] == q_labels[:, None]).mean()
    for name, I_ in (("plain", I_plain), ("inductive", I), ("exact", I_exact))
}
print(f"{index.ntotal} vectors in HNSW, {len(xq)} queries, top-{k}")
print(f"graph: built in {build_s:.2f} s, file {size_mb:.1f} MB; search {search_s:.2f} s")
print(f"recall of exact mode's top-{k}:", ", ".join(f"{n} {v:.1%}" for n, v in recall.items()))
print(f"precision@{k} (same cluster):", ", ".join(f"{n} {v:.1%}" for n, v in precision.items()))

assert np.array_equal(I, I_built) and np.array_equal(D, D_built), "loaded graph differs"
assert np.all(np.diff(D, axis=1) <= 0), "scores not sorted"
assert recall["inductive"] > recall["plain"], "inductive should approach exact mode"
assert precision["inductive"] > precision["plain"] + 0.1, "re-ranking should help here"
print("OK")
