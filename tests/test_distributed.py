"""The distributed build and serving (``triton_rerank.distributed``) on a real local Ray
cluster: equal to single-host inductive mode, robust to killed shard actors and to a
driver that stops mid-build."""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")
faiss = pytest.importorskip("faiss")

from triton_rerank.app.synthetic import clustered_vectors  # noqa: E402
from triton_rerank.database.graph_file import (  # noqa: E402
    GraphFileError,
    read_graph_file,
    read_graph_shard_file,
)
from triton_rerank.distributed.batch_job import rerank_dataset  # noqa: E402
from triton_rerank.distributed.build import build_sharded_graph  # noqa: E402
from triton_rerank.distributed.build_worker import ShardBuilder  # noqa: E402
from triton_rerank.distributed.graph_shards import open_sharded_graph  # noqa: E402
from triton_rerank.distributed.serving import ShardedSearch  # noqa: E402
from triton_rerank.distributed.shards import (  # noqa: E402
    ShardSource,
    as_source,
    sources_from_dataset,
)
from triton_rerank.integrations.faiss import RerankedIndex  # noqa: E402

N, D, K = 2000, 32, 10
PARAMS = {"k1": 10, "k2": 4, "iterations": 2, "row_budget": 32}
# several batches per shard in the kNN join and the aggregation (the defaults hold a
# whole shard of these tests in one batch)
BATCHES = {"knn_rows": 300, "aggregate_rows": 256}


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """A local Ray cluster for the module (no dashboard, no usage reports)."""
    os.environ["RAY_DISABLE_USAGE_STATS"] = "1"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data():
    x, _ = clustered_vectors(N + 100, D, 40, spread=1.2, seed=7)
    return np.ascontiguousarray(x[:N]), np.ascontiguousarray(x[N:])


@pytest.fixture(scope="module")
def single_host(data):
    """Single-host inductive mode over an exact index: the graph and the results."""
    xb, xq = data
    index = faiss.IndexFlatIP(D)
    index.add(xb)
    reranked = RerankedIndex(
        index, k1=PARAMS["k1"], k2=PARAMS["k2"], iterations=PARAMS["iterations"], mode="inductive"
    )
    graph = reranked.build_graph(row_budget=PARAMS["row_budget"])
    return graph, reranked.search(xq, K)


def torch_loaded(actor) -> bool:
    """Whether the actor's process has imported torch."""
    return ray.get(actor.__ray_call__.remote(lambda self: "torch" in sys.modules))


# per build of `two_shards`: whether each actor had loaded torch once its last step ran
ACTORS_LOADED_TORCH = []


@pytest.fixture(scope="module")
def two_shards(data, tmp_path_factory):
    """A 2-shard graph of the database, built once for the tests that only read it."""
    folder = tmp_path_factory.mktemp("two_shards")

    def before_write(step, actors):
        if step == "write":  # every other step has run
            ACTORS_LOADED_TORCH.extend(torch_loaded(a) for a in actors)

    build_sharded_graph(split(data[0], 2), folder, **PARAMS, **BATCHES, on_step=before_write)
    return folder


def test_shard_actors_never_load_torch(data, two_shards):
    """The build and serving actors run on numpy, numba and FAISS only: torch would add
    about 480 MB to each worker's resident memory."""
    assert ACTORS_LOADED_TORCH == [False, False]
    search = ShardedSearch(two_shards, lamb=0.3)
    try:
        search.search(data[1], K)
        assert [torch_loaded(a) for a in search.actors] == [False, False]
    finally:
        search.close()


def split(x, n_shards):
    bounds = np.linspace(0, len(x), n_shards + 1).astype(int)
    return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def assert_same_graph(folder, graph):
    """Every shard row equals the single-host row of the same node (in caller positions):
    kNN lists exactly, propagated rows entry for entry in the same order (values within
    1e-6), inverse norms, reverse lists."""
    sharded = open_sharded_graph(folder)
    internal = graph._internal_id
    position = graph.caller_position
    for t, path in enumerate(sharded.files):
        m = read_graph_shard_file(path)
        g, offset = m["vectors"].shape[0], sharded.offsets[t]
        nodes = internal[offset + np.arange(g)]
        np.testing.assert_array_equal(m["knn_indices"], position[graph.knn_indices[nodes]])
        np.testing.assert_array_equal(m["knn_values"], graph.knn_values[nodes])
        np.testing.assert_allclose(m["inv_norm"], graph.inv_norm[:, nodes], rtol=0, atol=1e-6)
        for r in range(graph.n_rounds):
            for half in (0, 1):
                single = graph.m_indptr[r]
                mine = m["m_indptr"][r]
                for row in range(g):
                    s0, s1 = (
                        single[nodes[row] + half * graph.size],
                        single[nodes[row] + half * graph.size + 1],
                    )
                    m0, m1 = mine[row + half * g], mine[row + half * g + 1]
                    np.testing.assert_array_equal(
                        m["m_indices"][m0:m1], position[graph.m_indices[s0:s1]]
                    )
                    np.testing.assert_allclose(
                        m["m_values"][m0:m1], graph.m_values[s0:s1], rtol=0, atol=1e-6
                    )
        for row in range(g):
            n = nodes[row]
            single = graph.reverse.indptr
            mine = sorted(m["rev_rows"][m["rev_indptr"][row] : m["rev_indptr"][row + 1]])
            assert mine == sorted(position[graph.reverse.indices[single[n] : single[n + 1]]])


def assert_same_results(results, expected):
    np.testing.assert_array_equal(results[1], expected[1])
    np.testing.assert_allclose(results[0], expected[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_shards", [2, 4])
def test_sharded_build_and_search_equal_single_host(
    data, single_host, two_shards, tmp_path, n_shards
):
    xb, xq = data
    graph, expected = single_host
    folder = two_shards
    if n_shards != 2:
        folder = tmp_path / "graph"
        build_sharded_graph(split(xb, n_shards), folder, **PARAMS)
    assert_same_graph(folder, graph)
    search = ShardedSearch(folder, lamb=0.3)
    try:
        assert_same_results(search.search(xq, K), expected)
    finally:
        search.close()


def test_faiss_index_files_and_a_ray_dataset_give_the_same_graph(data, single_host, tmp_path):
    xb, xq = data
    graph, expected = single_host
    paths = []
    for t, part in enumerate(split(xb, 2)):
        index = faiss.IndexFlatIP(D)
        index.add(part)
        paths.append(str(tmp_path / f"shard{t}.faiss"))
        faiss.write_index(index, paths[-1])
    build_sharded_graph(paths, tmp_path / "from_faiss", **PARAMS)
    assert_same_graph(tmp_path / "from_faiss", graph)

    rows = ray.data.from_items([{"id": i, "vector": v} for i, v in enumerate(xb)])
    build_sharded_graph(
        sources_from_dataset(rows, 3), tmp_path / "from_dataset", **PARAMS, **BATCHES
    )
    assert_same_graph(tmp_path / "from_dataset", graph)

    # the batch job: (D, I) per block, the same as one search of the whole set
    search = ShardedSearch(tmp_path / "from_dataset", lamb=0.3)
    try:
        queries = ray.data.from_items([{"id": i, "vector": v} for i, v in enumerate(xq)])
        rerank_dataset(queries, search, K, tmp_path / "results", batch_size=40)
    finally:
        search.close()
    files = sorted((tmp_path / "results").glob("results-*.npz"))
    assert len(files) >= 3
    ids, distances, labels = [], [], []
    for f in files:
        with np.load(f) as block:
            ids.append(block["ids"])
            distances.append(block["D"])
            labels.append(block["I"])
    order = np.argsort(np.concatenate(ids))
    assert_same_results((np.concatenate(distances)[order], np.concatenate(labels)[order]), expected)


def test_ivf_shards_keep_every_candidate_that_can_be_in_the_lists(data, tmp_path):
    """Approximate inner-product shard indexes: the two-pass kNN join (float32 products,
    then canonical values of the candidates that can be in the top-k1 only) gives the
    lists of the one-pass join, which rescores every shard's candidates (run here by
    ShardBuilder itself, outside Ray)."""
    xb, _ = data
    paths = []
    for t, part in enumerate(split(xb, 2)):
        index = faiss.index_factory(D, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(part)
        index.add(part)
        index.nprobe = 2
        paths.append(str(tmp_path / f"ivf{t}.faiss"))
        faiss.write_index(index, paths[-1])
    sharded = build_sharded_graph(paths, tmp_path / "graph", **PARAMS, **BATCHES)
    graph_params = {name: PARAMS[name] for name in ("k1", "k2", "iterations", "row_budget")}
    builders = [
        ShardBuilder(
            t, as_source(p), sharded.offsets, **graph_params, work_dir=str(tmp_path / "ref")
        )
        for t, p in enumerate(paths)
    ]
    assert all(b.search_kind() == "products" for b in builders)
    for owner, path in zip(builders, sharded.files, strict=True):
        lists = [b.search(owner.vectors(), PARAMS["k1"]) for b in builders]  # every candidate
        owner.merge_knn(0, owner.g, *lists)
        expected = owner._step("knn-0")
        m = read_graph_shard_file(path)
        np.testing.assert_array_equal(m["knn_indices"], expected["indices"])
        np.testing.assert_array_equal(m["knn_values"], expected["values"])


def test_a_shard_actor_killed_during_the_build_changes_nothing(data, single_host, tmp_path):
    xb, _ = data
    graph, _ = single_host
    killed = []

    def kill_during(step, actors):
        if step in ("knn", "aggregate0"):  # tasks in flight on every actor
            ray.kill(actors[1], no_restart=False)
            killed.append(step)

    build_sharded_graph(split(xb, 2), tmp_path / "graph", on_step=kill_during, **PARAMS, **BATCHES)
    assert killed == ["knn", "aggregate0"]
    assert_same_graph(tmp_path / "graph", graph)


def test_a_shard_actor_killed_during_serving_changes_nothing(data, single_host, two_shards):
    _, xq = data
    _, expected = single_host
    search = ShardedSearch(two_shards, lamb=0.3)
    try:
        results = search.search(
            xq, K, on_scatter=lambda actors: ray.kill(actors[0], no_restart=False)
        )
        assert_same_results(results, expected)
        assert_same_results(search.search(xq, K), expected)  # the restarted actor serves
    finally:
        search.close()


class DriverStopped(Exception):
    pass


def test_a_rerun_resumes_after_the_driver_stopped(data, single_host, tmp_path):
    xb, _ = data
    graph, _ = single_host

    def stop(step, actors):
        if step == "round1-t":
            raise DriverStopped

    with pytest.raises(DriverStopped):
        build_sharded_graph(
            split(xb, 2),
            tmp_path / "graph",
            work_dir=tmp_path / "work",
            on_step=stop,
            **PARAMS,
            **BATCHES,
        )
    build_sharded_graph(
        split(xb, 2), tmp_path / "graph", work_dir=tmp_path / "work", **PARAMS, **BATCHES
    )
    report = (tmp_path / "graph" / "build_report.json").read_text()
    assert (
        '"resumed": [\n  "knn",\n  "order",\n  "reverse",\n  "round0-t",\n  "aggregate0"\n ]'
        in report
    )
    assert_same_graph(tmp_path / "graph", graph)


def test_shard_files_are_checked_like_graph_files(two_shards, tmp_path):
    shutil.copytree(two_shards, tmp_path / "graph")
    sharded = open_sharded_graph(tmp_path / "graph")
    with pytest.raises(GraphFileError, match="unexpected member 'shard_index'"):
        read_graph_file(sharded.files[0])
    damaged = bytearray(sharded.files[1].read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    sharded.files[1].write_bytes(bytes(damaged))
    with pytest.raises(GraphFileError):
        open_sharded_graph(tmp_path / "graph")
    # a shard file swapped for the other: the set does not tile the database
    sharded.files[1].write_bytes(sharded.files[0].read_bytes())
    with pytest.raises(GraphFileError, match="shard_index"):
        open_sharded_graph(tmp_path / "graph")


def test_npy_files_and_arrays_mix_as_shards(tmp_path, data):
    xb, _ = data
    np.save(tmp_path / "a.npy", xb[:1000])
    source = ShardSource("npy", str(tmp_path / "a.npy"))
    sharded = build_sharded_graph([source, xb[1000:]], tmp_path / "graph", **PARAMS)
    assert sharded.offsets == (0, 1000, N)


def test_shard_vectors_are_checked_and_normalised_as_the_library_does():
    """A shard's unit rows are the canonical ones, bit for bit, and bad shard vectors are
    refused with the problem named."""
    from triton_rerank.checks import check_unit_rows
    from triton_rerank.distributed.shards import checked_unit_rows

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((50, 17)) * np.logspace(-30, 30, 50)[:, None]).astype(np.float32)
    np.testing.assert_array_equal(checked_unit_rows(x), check_unit_rows(x, "x", 17)[0])
    bad = x.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in 1 row.*first at row 7"):
        checked_unit_rows(bad)
    bad = x.copy()
    bad[[4, 9]] = 0.0
    with pytest.raises(ValueError, match="2 zero-norm row.*first at row 4"):
        checked_unit_rows(bad)
    with pytest.raises(ValueError, match="must be 2-D"):
        checked_unit_rows(x[0])
    with pytest.raises(ValueError, match="is empty"):
        checked_unit_rows(x[:0])
