"""GNN re-ranking inside torchreid's evaluation (no model, no dataset download).

Stand-in re-ID features: 60 identities, each a random centre on the unit sphere with
2 query and 12 gallery images around it (noise, so plain cosine ranking is mediocre).
torchreid's own pieces do the rest, as ``Engine._evaluate`` does: distance matrices
from ``compute_distance_matrix``, ``re_ranking`` looked up in the engine module, and
``evaluate_rank``. ``use_gnn_reranking`` swaps that ``re_ranking`` for GNN re-ranking;
``evaluate`` gives the same (cmc, mAP) straight from the features.

Run: .venv/bin/python examples/torchreid_evaluation.py
"""

import time
import warnings

import numpy as np
import torch

from triton_rerank.integrations.torchreid import evaluate, torchreid_module, use_gnn_reranking

# torchreid 0.2.5 from PyPI lives under torchreid.reid, upstream under torchreid; its
# metrics warn on import when their Cython part is not built (the Python one is used)
warnings.filterwarnings("ignore", message="Cython evaluation")
metrics = torchreid_module("metrics")
engine_module = torchreid_module("engine.engine")  # where Engine._evaluate finds re_ranking

# --- clustered stand-in features -------------------------------------------------------
rng = np.random.default_rng(0)
n_ids, n_query, n_gallery, d = 60, 2, 12, 32
centres = rng.standard_normal((n_ids, d))
centres /= np.linalg.norm(centres, axis=1, keepdims=True)
q_pids, g_pids = np.repeat(np.arange(n_ids), n_query), np.repeat(np.arange(n_ids), n_gallery)
qf = torch.from_numpy(centres[q_pids] + 0.22 * rng.standard_normal((len(q_pids), d))).float()
gf = torch.from_numpy(centres[g_pids] + 0.22 * rng.standard_normal((len(g_pids), d))).float()
q_cams, g_cams = np.zeros(len(q_pids), int), rng.integers(1, 6, len(g_pids))  # 5 cameras


def engine_evaluate(qf, gf, rerank):
    """What torchreid's Engine._evaluate does with normalize_feature=True."""
    qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    distmat = metrics.compute_distance_matrix(qf, gf, "euclidean").numpy()
    if rerank:  # the module-level name, so use_gnn_reranking's patch is seen here
        distmat = engine_module.re_ranking(
            distmat,
            metrics.compute_distance_matrix(qf, qf),
            metrics.compute_distance_matrix(gf, gf),
        )
    return metrics.evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams)


original = engine_module.re_ranking
results = {"no re-ranking": engine_evaluate(qf, gf, rerank=False)}
start = time.perf_counter()
results["k-reciprocal (torchreid)"] = engine_evaluate(qf, gf, rerank=True)
times = {"k-reciprocal (torchreid)": time.perf_counter() - start}
with use_gnn_reranking(k1=26, k2=7, lamb=0.3):  # instead of k-reciprocal (k1=20, k2=6)
    assert engine_module.re_ranking is not original, "use_gnn_reranking patched nothing"
    start = time.perf_counter()
    results["GNN (use_gnn_reranking)"] = engine_evaluate(qf, gf, rerank=True)
    times["GNN (use_gnn_reranking)"] = time.perf_counter() - start
assert engine_module.re_ranking is original, "torchreid's re_ranking was not restored"

# the same numbers straight from the features (no distance matrices)
results["GNN (evaluate)"] = evaluate(
    qf, gf, q_pids, g_pids, q_cams, g_cams, rerank="gnn", k1=26, k2=7, lamb=0.3
)

print(f"{len(q_pids)} queries, {len(g_pids)} gallery images, {n_ids} identities")
print(f"{'':26s} {'mAP':>7s} {'Rank-1':>7s} {'Rank-5':>7s} {'time':>7s}")
for name, (cmc, mAP) in results.items():
    took = f"{times[name]:6.2f}s" if name in times else ""
    print(f"{name:26s} {mAP:7.1%} {cmc[0]:7.1%} {cmc[4]:7.1%} {took:>7s}")

plain_map = results["no re-ranking"][1]
gnn_cmc, gnn_map = results["GNN (use_gnn_reranking)"]
direct_cmc, direct_map = results["GNN (evaluate)"]
assert abs(gnn_map - direct_map) < 1e-4, (gnn_map, direct_map)  # distances vs features
assert np.allclose(gnn_cmc, direct_cmc, atol=1e-4)
assert gnn_map > plain_map + 0.05, f"GNN re-ranking should lift mAP: {plain_map} -> {gnn_map}"
print("OK")
