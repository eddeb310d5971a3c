"""Inductive re-ranking (frozen database graph, one query at a time) against its dense
oracle ``reference.inductive_scores_reference``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.compare import assert_same_topk
from triton_rerank.app.synthetic import clustered_vectors
from triton_rerank.cpu.knn import knn_graph
from triton_rerank.database.inductive import InductiveGraph, scored_neighbour_lists
from triton_rerank.reference import inductive_scores_reference


@pytest.fixture(scope="module")
def database():
    x, _ = clustered_vectors(260, 12, 8, spread=0.8, seed=4)
    return x[:10], np.ascontiguousarray(x[10:])


def exact_lists(x, k1):
    values, indices, _ = knn_graph(torch.from_numpy(x), k1)
    return values, indices


@pytest.mark.parametrize(
    "k1,k2,iterations,lamb", [(10, 4, 2, 0.3), (8, 3, 1, 0.0), (12, 5, 3, 0.5), (9, 1, 2, 0.2)]
)
def test_inductive_scores_match_the_dense_oracle(database, k1, k2, iterations, lamb):
    queries, xb = database
    values, indices = exact_lists(xb, k1)
    graph = InductiveGraph.build(xb, indices, k2=k2, iterations=iterations, row_budget=len(xb))
    everything = np.tile(np.arange(len(xb)), (len(queries), 1))
    scores, positions = graph.rerank(queries, everything, 40, lamb)
    oracle = np.stack(
        [
            inductive_scores_reference(
                xb, values, indices, q, k2=k2, iterations=iterations, lamb=lamb
            )
            for q in queries
        ]
    )
    assert_same_topk(scores, positions, oracle, 40)


def test_row_budget_keeps_the_largest_entries(database):
    queries, xb = database
    values, indices = exact_lists(xb, 10)
    full = InductiveGraph.build(xb, indices, k2=4, iterations=2, row_budget=len(xb))
    small = InductiveGraph.build(xb, indices, k2=4, iterations=2, row_budget=8)
    last_a = slice(full.m_indptr[1, 0], full.m_indptr[1, len(xb)])
    assert full.m_indptr[1, len(xb)] - full.m_indptr[1, 0] > 8 * len(xb)
    assert small.m_indptr[1, len(xb)] - small.m_indptr[1, 0] == 8 * len(xb)
    kept = slice(small.m_indptr[1, 0], small.m_indptr[1, len(xb)])
    # each pruned row keeps the 8 largest of the full row's values
    for node in range(0, len(xb), 37):
        f0, f1 = full.m_indptr[1, node], full.m_indptr[1, node + 1]
        s0, s1 = small.m_indptr[1, node], small.m_indptr[1, node + 1]
        np.testing.assert_allclose(
            np.sort(small.m_values[s0:s1]), np.sort(full.m_values[f0:f1])[-8:], rtol=1e-6
        )
    assert full.m_values[last_a].size > small.m_values[kept].size
    everything = np.tile(np.arange(len(xb)), (len(queries), 1))
    a = full.rerank(queries, everything, 10, 0.3)[1]
    b = small.rerank(queries, everything, 10, 0.3)[1]
    assert np.mean([len(set(r) & set(s)) for r, s in zip(a, b, strict=True)]) >= 8


def test_candidates_are_the_shortlist_and_its_nearest_lists(database):
    queries, xb = database
    _, indices = exact_lists(xb, 6)
    graph = InductiveGraph.build(xb, indices, k2=3, iterations=2)
    sims = queries @ xb.T
    shortlist = np.argsort(-sims, axis=1)[:, :20]
    scores, positions = graph.rerank(queries, shortlist, 60, 0.3)
    for q in range(len(queries)):
        nearest = shortlist[q][:5]  # k1 - 1 = 5
        allowed = set(shortlist[q]) | set(indices[nearest].ravel())
        found = positions[q][positions[q] >= 0]
        assert set(found) <= allowed and len(found) == len(allowed)
        assert np.all(np.isneginf(scores[q][positions[q] < 0]))


def test_neighbour_lists_from_an_approximate_search_are_repaired():
    x, _ = clustered_vectors(50, 8, 4, seed=1)
    found = np.tile(np.arange(5, dtype=np.int64), (50, 1))  # a poor "search"
    found[:, 4] = -1
    values, indices = scored_neighbour_lists(x, found)
    for node in range(50):
        assert node in indices[node]  # self added
        valid = indices[node] >= 0
        np.testing.assert_allclose(
            values[node][valid], x[indices[node][valid]] @ x[node], rtol=0, atol=1e-6
        )
        assert np.all(np.diff(values[node][valid]) <= 0)
        assert np.all(np.isneginf(values[node][~valid]))


def grown_reference(xb, lists, queries, seeds, shortlist):
    """Dense reference of a grown shortlist: per query the ``shortlist`` rows most similar
    to it (float64, ties by smaller position) in a pool of its seeds and their kNN lists,
    grown while it holds fewer than ``shortlist`` rows by the lists of the last level's
    rows, most similar first, stopping once it holds ``shortlist``; kept in the order
    they are met, -1 padded."""
    rows = []
    for q, row in zip(queries, seeds, strict=True):
        pool = list(dict.fromkeys([s for s in row if s >= 0]))
        level = list(pool)
        grow_all = True  # level 1: every seed's list, whatever the pool's size
        while level and (grow_all or len(pool) < shortlist):
            if not grow_all:
                sims = np.sort(-(xb[level].astype(np.float64) @ q.astype(np.float64)))
                level = [level[i] for i in np.argsort(-(xb[level] @ q), kind="stable")]
            start = len(pool)
            for t, s in enumerate(level):
                pool += [u for u in lists[s] if u >= 0 and u not in pool]
                if not grow_all and len(pool) >= shortlist:
                    # no near-tie where the level stops: float32 and float64 agree on it
                    assert t + 1 == len(level) or sims[t + 1] - sims[t] > 1e-5
                    break
            level, grow_all = pool[start:], False
        pool = np.array(pool)
        sims = xb[pool].astype(np.float64) @ q.astype(np.float64)
        if len(pool) > shortlist:
            order = np.lexsort((pool, -sims))
            cut = np.sort(-sims)
            # no near-tie at the cut: float32 and float64 similarities keep the same rows
            assert cut[shortlist] - cut[shortlist - 1] > 1e-5
            pool = pool[np.sort(order[:shortlist])]
        rows.append(pool)
    out = np.full((len(queries), max(len(r) for r in rows)), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@pytest.mark.parametrize(
    "shortlist,n_seeds",
    [
        (40, 12),  # level 1 (the seeds' lists) holds more: the cut keeps the most similar
        (150, 3),  # level 1 holds fewer: later levels grow the pool, stopping mid-level
        (1000, 12),  # more than the graph reaches from the seeds: all of it
    ],
)
def test_grown_shortlists_rerank_as_the_reference_shortlist(database, shortlist, n_seeds):
    queries, xb = database
    _, indices = exact_lists(xb, 8)
    graph = InductiveGraph.build(xb, indices, k2=3, iterations=2)
    lists = scored_neighbour_lists(xb, indices)[1]  # the graph's lists, in positions
    seeds = np.argsort(-(queries @ xb.T), axis=1, kind="stable")[:, :n_seeds]
    grown = grown_reference(xb, lists, queries, seeds, shortlist)
    sizes = (grown >= 0).sum(axis=1)
    shortlists = graph.grow_shortlists(queries, seeds, shortlist)
    for got, want in zip(shortlists, grown, strict=True):
        assert set(got[got >= 0]) == set(want[want >= 0])
        assert np.all(got[(got >= 0).sum() :] == -1)
    if shortlist < len(xb):
        assert np.all(sizes == shortlist)  # the pool reached the shortlist and was cut
    else:
        assert sizes.min() > 12 * 8  # beyond the seeds' lists
    # every candidate ranked (k = the database): the two candidate sets are compared whole
    k = len(xb)
    scores, positions = graph.rerank_grown(queries, seeds, k, 0.3, shortlist)
    want_scores, want_positions = graph.rerank(queries, grown, k, 0.3)
    np.testing.assert_array_equal(positions, want_positions)
    np.testing.assert_array_equal(scores, want_scores)
    # padding and repeated seeds change nothing
    padded = np.concatenate([seeds, seeds[:, :2], np.full((len(seeds), 3), -1)], axis=1)
    again = graph.rerank_grown(queries, padded, k, 0.3, shortlist)
    np.testing.assert_array_equal(again[1], positions)
    np.testing.assert_array_equal(again[0], scores)


@pytest.mark.parametrize("k1,k2,iterations", [(10, 4, 2), (12, 5, 3)])
def test_a_short_shortlist_scores_as_the_dense_oracle(database, k1, k2, iterations):
    """A shortlist far smaller than the database (so the scoring reads the propagated
    rows of neighbours that are not candidates): each candidate's score is the oracle's,
    given a shortlist holding what the query's own row and column need (its k1 - 1
    nearest items and every item whose list would take it)."""
    queries, xb = database
    values, indices = exact_lists(xb, k1)
    graph = InductiveGraph.build(xb, indices, k2=k2, iterations=iterations, row_budget=len(xb))
    rng = np.random.default_rng(0)
    for q in queries:
        sims = xb @ q
        nearest = np.argsort(-sims, kind="stable")[: k1 - 1]
        listing = np.flatnonzero(sims >= values[:, -1])
        extra = rng.choice(len(xb), 5, replace=False)
        shortlist = np.unique(np.concatenate([nearest, listing, extra]))
        assert len(shortlist) < len(xb) // 3
        oracle = inductive_scores_reference(
            xb, values, indices, q, k2=k2, iterations=iterations, lamb=0.3
        )
        scores, positions = graph.rerank(q[None], shortlist[None], len(xb), 0.3)
        found = positions[0] >= 0
        assert found.sum() < len(xb) // 2
        np.testing.assert_allclose(scores[0][found], oracle[positions[0][found]], rtol=0, atol=2e-5)


@pytest.mark.parametrize("key_offset", [0, 1 << 40, -5])
def test_growth_order_is_by_similarity_then_key(key_offset):
    """The order in which a grown level's lists are added: descending similarity, equal
    similarities (+0.0 and -0.0 among them) by smaller key; keys that do not fit 32 bits
    take the two-sort path, with the same order."""
    from triton_rerank.cpu.kernels.inductive_scores import _most_similar_first

    rng = np.random.default_rng(3)
    sims = rng.choice(np.float32([0.5, 0.25, 0.0, -0.0, -0.25, 1e-30, -1e-30]), 300)
    keys = rng.permutation(10_000)[:300].astype(np.int64) + key_offset
    expected = np.lexsort((keys, -sims.astype(np.float64)))
    np.testing.assert_array_equal(_most_similar_first(sims, keys), expected)
