"""Grid search of GNN re-ranking settings with a held-out half of the queries.

Re-ranking with Market-1501 defaults can hurt on other data (sparse single-shot
galleries, other feature extractors), so ``tune`` chooses k1, k2, lamb and iterations
on one random half of the queries and reports mAP on the other half: the reported
gain is not fitted to the queries that measured it. "No re-ranking" is one of the
candidates: on single-shot data (one gallery match per query) re-ranking often lowers
mAP at every grid point, and then ``tune`` says so instead of choosing the least bad one.

Cheap because the mixing is linear: one ``gnn_rerank(lamb=0)`` per (k1, k2,
iterations) gives the GNN scores, and every ``lamb`` is ``(1 - lamb) * gnn + lamb *
cosine`` on top (the same float32 arithmetic ``gnn_rerank`` does, on the same unit
rows, with the cosine as a torch float32 product like gnn_rerank's kNN step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

import numpy as np
import torch

from ..checks import unit_rows
from ..rerank import gnn_rerank
from .feature_set import FeatureSet
from .metrics import evaluate

DEFAULTS = {"k1": 26, "k2": 7, "lamb": 0.3, "iterations": 2}


@dataclass
class TuneResult:
    """Outcome of :func:`tune`.

    Attributes:
        best: the chosen setting: ``{"rerank": False}`` when no re-ranking has the
            higher tune-half mAP, else ``{"rerank": True, "k1", "k2", "lamb",
            "iterations"}``.
        held_out: mAP on the held-out queries for ``"no re-ranking"``, ``"defaults"``
            (k1=26, k2=7, lamb=0.3, 2 iterations; None if invalid for this data) and
            ``"best"`` (the chosen setting, so the no-re-ranking value when that won).
        grid: one dict per setting tried, with its ``"tune_mAP"``.
        heatmap: ``[len(k1s), len(k2s)]`` tune-half mAP at the lamb and iterations of
            ``best_grid`` (NaN where k2 > k1 or k1 is too large).
        best_grid: ``{"k1", "k2", "lamb", "iterations"}`` of the grid point with the
            highest tune-half mAP, whether or not it beat no re-ranking.
        no_rerank_tune_mAP: tune-half mAP without re-ranking.
    """

    best: dict
    held_out: dict
    grid: list = field(default_factory=list)
    heatmap: np.ndarray | None = None
    best_grid: dict | None = None
    no_rerank_tune_mAP: float | None = None

    @property
    def setting(self) -> dict | None:
        """The chosen ``gnn_rerank`` keyword arguments, or None for no re-ranking."""
        return {k: self.best[k] for k in DEFAULTS} if self.best["rerank"] else None


def tune(
    data: FeatureSet, *, k1s, k2s, lambs, iterations_list, seed: int = 0, progress=None
) -> TuneResult:
    """Grid-search GNN settings on half the queries, report mAP on the other half.

    No re-ranking (the cosine scores) is compared with the grid points on the tune half
    like one more candidate, and wins ties (it is the same mAP for less work).

    Args:
        data: labelled features (at least 2 queries).
        k1s, k2s, lambs, iterations_list: the values to try; settings with ``k2 > k1`` or
            ``k1`` larger than the number of images are skipped.
        seed: the random split of the queries.
        progress: optional wrapper for the settings iterable (e.g. ``tqdm``).

    Raises:
        ValueError: fewer than 2 queries, no valid setting, or a half without any query
            that has a valid match.
    """
    q_pids, g_pids, q_cams, g_cams = data.labels()
    n_query, n_gallery = len(data.query_features), len(data.gallery_features)
    if n_query < 2:
        raise ValueError("tune needs at least 2 queries (they are split into two halves)")
    order = np.random.default_rng(seed).permutation(n_query)
    halves = {"tune": np.sort(order[: n_query // 2]), "held_out": np.sort(order[n_query // 2 :])}
    query = unit_rows(data.query_features, "the query features")
    gallery = unit_rows(data.gallery_features, "the gallery features")
    # the base similarity as gnn_rerank's kNN step computes it (torch float32 matmul)
    cosine = torch.matmul(torch.from_numpy(query), torch.from_numpy(gallery).T).numpy()

    def mean_ap(scores, half):
        rows = halves[half]
        try:
            return evaluate(scores[rows], q_pids[rows], g_pids, q_cams[rows], g_cams).mAP
        except ValueError as err:
            raise ValueError(f"the {half.replace('_', '-')} half of the queries: {err}") from err

    # both halves first: an error about a half comes before the grid's work
    no_rerank = {half: mean_ap(cosine, half) for half in halves}
    settings = [
        (k1, k2, it)
        for k1, k2, it in product(k1s, k2s, iterations_list)
        if k2 <= k1 <= n_query + n_gallery
    ]
    if not settings:
        raise ValueError(
            f"no valid setting in the grid (need k2 <= k1 <= "
            f"{n_query + n_gallery}, the number of images)"
        )
    grid, last_key, gnn = [], None, None
    for k1, k2, iterations in progress(settings) if progress else settings:
        # with k2 = 1 there is no propagation, so the iterations values share one run
        # (they come one after another in the grid)
        key = (k1, k2, 0 if k2 == 1 else iterations)
        if key != last_key:
            gnn = gnn_rerank(
                query, gallery, k1=k1, k2=k2, iterations=iterations, lamb=0.0, normalize=False
            )
            last_key = key
        for lamb in lambs:
            grid.append(
                {
                    "k1": k1,
                    "k2": k2,
                    "lamb": lamb,
                    "iterations": iterations,
                    "tune_mAP": mean_ap(_mix(gnn, cosine, lamb), "tune"),
                }
            )
    best_row = max(grid, key=lambda r: r["tune_mAP"])
    best_grid = {k: best_row[k] for k in DEFAULTS}
    rerank = best_row["tune_mAP"] > no_rerank["tune"]
    best = {"rerank": True, **best_grid} if rerank else {"rerank": False}

    def held_out_map(setting):
        scores = gnn_rerank(query, gallery, normalize=False, **setting)
        return mean_ap(scores, "held_out")

    defaults_valid = DEFAULTS["k1"] <= n_query + n_gallery
    held_out = {
        "no re-ranking": no_rerank["held_out"],
        "defaults": held_out_map(DEFAULTS) if defaults_valid else None,
    }
    held_out["best"] = held_out_map(best_grid) if rerank else held_out["no re-ranking"]
    heatmap = np.full((len(k1s), len(k2s)), np.nan)
    for row in grid:
        if row["lamb"] == best_grid["lamb"] and row["iterations"] == best_grid["iterations"]:
            heatmap[list(k1s).index(row["k1"]), list(k2s).index(row["k2"])] = row["tune_mAP"]
    return TuneResult(
        best=best,
        held_out=held_out,
        grid=grid,
        heatmap=heatmap,
        best_grid=best_grid,
        no_rerank_tune_mAP=no_rerank["tune"],
    )


def _mix(gnn: np.ndarray, cosine: np.ndarray, lamb: float) -> np.ndarray:
    """``(1 - lamb) * gnn + lamb * cosine`` in float32, as gnn_rerank mixes."""
    if lamb == 0:
        return gnn
    return np.float32(1.0 - lamb) * gnn + np.float32(lamb) * cosine
