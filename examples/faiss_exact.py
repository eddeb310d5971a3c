# ruff: noqa: E741  (FAISS's own names for search results: D, I)
"""FAISS exact mode: re-ranked search over an IndexFlatIP equals gnn_rerank.

``RerankedIndex(index, mode="exact")`` reads the vectors back from the index, caches
the database's kNN lists, and lets each query batch join the graph, so
``search(xq, k)`` gives the same results as ``gnn_rerank(xq, xb, topk=k)``. Checked
here on clustered vectors with exact duplicates in the database (ties are broken by the
smaller index on both sides); exits non-zero on any difference.

Run: .venv/bin/python examples/faiss_exact.py
"""

import time

import faiss
import numpy as np

from triton_rerank import gnn_rerank
from triton_rerank.integrations.faiss import RerankedIndex

# --- clustered vectors: 100 clusters x 30 database vectors, d = 64 ---------------------
rng = np.random.default_rng(0)
n_clusters, per_cluster, d, k = 100, 30, 64, 10
centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
labels = np.repeat(np.arange(n_clusters), per_cluster)
xb = centres[labels] + 1.5 * rng.standard_normal((len(labels), d)).astype(np.float32)
xb[1::50] = xb[::50]  # exact duplicates, as real galleries have
q_labels = rng.integers(0, n_clusters, 200)
xq = centres[q_labels] + 1.5 * rng.standard_normal((len(q_labels), d)).astype(np.float32)
faiss.normalize_L2(xb)  # cosine = inner product for the plain index
faiss.normalize_L2(xq)

index = faiss.IndexFlatIP(d)
index.add(xb)
reranked = RerankedIndex(index, k1=26, k2=7, lamb=0.3, mode="exact")

start = time.perf_counter()
D, I = reranked.search(xq, k)  # FAISS conventions: D float32 [n, k], I int64 [n, k]
first = time.perf_counter() - start  # includes the database's kNN lists (cached)
start = time.perf_counter()
D2, I2 = reranked.search(xq, k)  # cached database graph
second = time.perf_counter() - start
D_ref, I_ref = gnn_rerank(xq, xb, k1=26, k2=7, lamb=0.3, topk=k)

_, I_plain = index.search(xq, k)
precision_plain = (labels[I_plain] == q_labels[:, None]).mean()
precision_rerank = (labels[I] == q_labels[:, None]).mean()
print(f"{index.ntotal} database vectors, {len(xq)} queries, top-{k}")
print(f"precision@{k}: plain {precision_plain:.1%}, re-ranked {precision_rerank:.1%}")
print(f"search: {first:.2f} s first (builds the kNN lists), {second:.2f} s cached")

assert D.dtype == np.float32 and I.dtype == np.int64 and I.shape == (len(xq), k)
assert np.array_equal(I, I_ref), "exact mode ranks differently from gnn_rerank"
assert np.allclose(D, D_ref, atol=1e-5), np.abs(D - D_ref).max()
assert np.array_equal(I, I2) and np.array_equal(D, D2), "cached search differs"
assert precision_rerank > precision_plain + 0.1, "re-ranking should help on clustered vectors"
print(f"identical to gnn_rerank (max |D - D_ref| = {np.abs(D - D_ref).max():.1e})")
print("OK")
