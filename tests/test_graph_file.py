"""Saved inductive graphs are never trusted (``triton_rerank.database.graph_file``).

A damaged, truncated or edited graph file is refused with a ValueError naming the
file and the problem; a file edited consistently (checksum recomputed) is refused by
the structural checks or is searched safely. No file crashes the process: the fuzz
test loads and searches its files in a worker process (this module run as a script),
so that a segfault is a test failure, not the end of pytest.
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import traceback
import warnings
import zipfile
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from triton_rerank.app.synthetic import clustered_vectors
from triton_rerank.database.graph_file import (
    MEMBERS,
    SCALARS,
    STRINGS,
    ArrayParts,
    content_checksum,
    read_graph_file,
    write_graph_file,
)
from triton_rerank.database.inductive import InductiveGraph
from triton_rerank.integrations.faiss import RerankedIndex

PARAMS = {"k1": 12, "k2": 4, "iterations": 2, "lamb": 0.3}
# 100 queries: their searches read nearly every row of the graph, so that a bad entry
# anywhere in a fuzzed file is read
N_DB, DIM, N_QUERY, TOP = 400, 16, 100, 10


def make_data(seed: int = 3):
    """``(queries [20, 16], database [400, 16])`` unit rows, the same in every process."""
    x, _ = clustered_vectors(N_QUERY + N_DB, DIM, 12, spread=1.0, seed=seed)
    return x[:N_QUERY], np.ascontiguousarray(x[N_QUERY:])


def flat_ip(x):
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def read_members(path) -> dict[str, np.ndarray]:
    """The members of a (pristine) graph file, as written."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def write_members(path, members, *, recompute_checksum: bool) -> None:
    """Write ``members`` as an uncompressed ``.npz``; with ``recompute_checksum`` the
    checksum is made to match the edited content (as a careful forger would)."""
    members = dict(members)
    if recompute_checksum and all(name in members for name in MEMBERS[:-1]):
        members["checksum"] = np.str_(content_checksum(members))
    with open(path, "wb") as f:
        np.savez(f, **members)


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def zip_bytes(entries) -> bytes:
    """An uncompressed zip of ``(name, bytes)`` entries (duplicates allowed)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name"
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for name, data in entries:
                archive.writestr(name, data)
    return buffer.getvalue()


def member_entries(members):
    return [(f"{name}.npy", npy_bytes(array)) for name, array in members.items()]


def member_data_end(raw: bytes, name: str) -> int:
    """Offset just past the bytes of member ``name`` in the archive ``raw``."""
    info = zipfile.ZipFile(io.BytesIO(raw)).getinfo(f"{name}.npy")
    name_length, extra_length = np.frombuffer(
        raw[info.header_offset + 26 : info.header_offset + 30], "<u2"
    )
    return info.header_offset + 30 + int(name_length) + int(extra_length) + info.file_size


class Saved(SimpleNamespace):
    """The saved graph and what goes with it (shown by name only in failure reports)."""

    def __repr__(self):
        return f"Saved({self.path})"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A graph built and saved by ``RerankedIndex``, with the search results it gives."""
    xq, xb = make_data()
    index = flat_ip(xb)
    built = RerankedIndex(index, mode="inductive", **PARAMS)
    path = tmp_path_factory.mktemp("graph") / "graph.npz"
    built.save_graph(path)
    distances, labels = built.search(xq, TOP)
    return Saved(
        path=path,
        index=index,
        xq=xq,
        xb=xb,
        raw=path.read_bytes(),
        members=read_members(path),
        distances=distances,
        labels=labels,
    )


def load_into_index(index, path):
    RerankedIndex(index, mode="inductive", **PARAMS).load_graph(path)


# -- valid files load -------------------------------------------------------------------


@pytest.mark.parametrize(
    "k1,k2,iterations,row_budget",
    [
        (12, 4, 2, 128),
        (12, 1, 2, 128),
        (12, 4, 0, 128),
        (12, 4, 1, 128),
        (8, 3, 3, 5),
        (1, 1, 1, 1),
    ],
)
def test_every_kind_of_built_graph_loads_and_searches_the_same(
    tmp_path, saved, k1, k2, iterations, row_budget
):
    index = faiss.IndexIDMap(faiss.IndexFlatIP(DIM))
    index.add_with_ids(saved.xb, 1000 + 7 * np.arange(N_DB)[::-1])
    params = {"k1": k1, "k2": k2, "iterations": iterations, "lamb": 0.3}
    built = RerankedIndex(index, mode="inductive", **params)
    built.build_graph(row_budget=row_budget)
    built.save_graph(tmp_path / "graph.npz")
    loaded = RerankedIndex(index, mode="inductive", **params)
    loaded.load_graph(tmp_path / "graph.npz")
    for a, b in zip(built.search(saved.xq, TOP), loaded.search(saved.xq, TOP), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded._graph.fingerprint == built._graph.fingerprint
    assert os.listdir(tmp_path) == ["graph.npz"]  # no temporary file left behind


def test_graph_with_missing_neighbours_round_trips(tmp_path, saved):
    """Lists from a poor approximate search have -1 / -inf entries; they load too."""
    found = np.tile(np.arange(6, dtype=np.int64), (N_DB, 1))
    found[:, 4:] = -1
    graph = InductiveGraph.build(saved.xb, found, k2=3, iterations=2)
    assert (graph.knn_indices == -1).any()
    graph.save(tmp_path / "graph.npz")
    loaded = InductiveGraph.load(tmp_path / "graph.npz")
    assert loaded.fingerprint is None
    everything = np.tile(np.arange(N_DB), (N_QUERY, 1))
    for a, b in zip(
        graph.rerank(saved.xq, everything, TOP, 0.3),
        loaded.rerank(saved.xq, everything, TOP, 0.3),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_a_member_written_in_parts_makes_the_same_file(tmp_path, saved):
    """``ArrayParts`` members (how a shard streams its rows out) give the members and the
    checksum of the joined arrays; parts that do not add up leave no file behind."""
    members = read_members(saved.path)
    given = {name: members[name] for name in MEMBERS[1:-1]}
    cuts = [0, 7, 7, members["m_indices"].shape[0] // 3, members["m_indices"].shape[0]]

    def parts(name):
        array = members[name]
        return ArrayParts(array.dtype, array.shape[0], (array[a:b] for a, b in pairwise(cuts)))

    write_graph_file(
        tmp_path / "parts.npz",
        {**given, "m_indices": parts("m_indices"), "m_values": parts("m_values")},
    )
    written = read_graph_file(tmp_path / "parts.npz")
    for name in MEMBERS:
        np.testing.assert_array_equal(written[name], members[name], err_msg=name)
    short = ArrayParts(np.int32, members["m_indices"].shape[0] + 1, [members["m_indices"]])
    with pytest.raises(ValueError, match="parts hold"):
        write_graph_file(tmp_path / "short.npz", {**given, "m_indices": short})
    wrong = ArrayParts(np.int64, members["m_indices"].shape[0], [members["m_indices"]])
    with pytest.raises(ValueError, match="expected 1-D int64"):
        write_graph_file(tmp_path / "wrong.npz", {**given, "m_indices": wrong})
    assert sorted(os.listdir(tmp_path)) == ["parts.npz"]


def test_missing_file_is_file_not_found(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match="no graph file at"):
        load_into_index(saved.index, tmp_path / "missing.npz")


# -- damaged and edited files are refused ----------------------------------------------


def raw_case(case_id, problem, make):
    """A file made from the pristine file's bytes by ``make(raw)``."""
    return pytest.param("raw", make, problem, id=case_id)


def edit_case(case_id, problem, edit, *, recompute_checksum=True):
    """The pristine members edited in place by ``edit(members)``, checksum recomputed
    unless said otherwise (so that the structural rule is what refuses the file)."""
    return pytest.param(
        "checksum" if recompute_checksum else "no-checksum", edit, problem, id=case_id
    )


def index_case(case_id, problem, make_index):
    """The pristine file loaded into another index, ``make_index(saved)``."""
    return pytest.param("index", make_index, problem, id=case_id)


def setting(name, value):
    def edit(m):
        m[name] = value

    return edit


def poke(name, where, value):
    def edit(m):
        m[name][where] = value

    return edit


def delete(name):
    def edit(m):
        del m[name]

    return edit


def swap(name, a, b):
    def edit(m):
        m[name][a], m[name][b] = m[name][b].copy(), m[name][a].copy()

    return edit


def drop_self_from_row_0(m):
    row = m["knn_indices"][0]
    row[row == 0] = [n for n in range(N_DB) if n not in row][0]


def gap_in_row_0(m):
    m["knn_indices"][0, 3] = -1
    m["knn_values"][0, 3] = -np.inf


def old_format(m):
    del m["fingerprint"], m["checksum"]
    m["format"] = np.int64(1)


def gap_between_rounds(m):
    assert m["m_indptr"][1, 1] > m["m_indptr"][1, 0]
    m["m_indptr"][1, 0] += 1


def unequal_halves(m):
    assert m["m_indptr"][0, N_DB + 1] > m["m_indptr"][0, N_DB]
    m["m_indptr"][0, N_DB] += 1


def reverse_rows_moved(m):
    indptr = m["rev_indptr"]
    row = int(np.flatnonzero(np.diff(indptr) > 0)[0])
    indptr[row + 1] -= 1  # still non-decreasing, from 0 to E: only the lengths differ


def forged_vectors_header(raw):
    members = read_members(io.BytesIO(raw))
    vectors = members.pop("vectors")
    forged = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        forged, {"descr": "<f4", "fortran_order": False, "shape": (40000, DIM)}
    )
    return zip_bytes(
        member_entries(members) + [("vectors.npy", forged.getvalue() + vectors.tobytes())]
    )


def flip_byte_in_vectors(raw):
    damaged = bytearray(raw)
    damaged[member_data_end(raw, "vectors") - 10] ^= 0x40
    return bytes(damaged)


def compressed(raw):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **read_members(io.BytesIO(raw)))
    return buffer.getvalue()


def duplicate_member(raw):
    members = read_members(io.BytesIO(raw))
    return zip_bytes(member_entries(members) + [("k1.npy", npy_bytes(members["k1"]))])


def member_is_not_npy(raw):
    members = read_members(io.BytesIO(raw))
    del members["k2"]
    return zip_bytes(member_entries(members) + [("k2.npy", b"garbage, not an .npy")])


def re_extracted_features(saved):
    """The same ids and size, vectors from a "new model"."""
    rng = np.random.default_rng(0)
    vectors = saved.xb + 0.05 * rng.standard_normal(saved.xb.shape).astype(np.float32)
    faiss.normalize_L2(vectors)
    return flat_ip(vectors)


NNZ_NOTE = "nnz = len(m_indices)"
NOT_UNIT = "a row norm; the vectors must be unit rows"

CASES = [
    # the archive
    raw_case("empty-file", "truncated or not an .npz archive", lambda raw: b""),
    raw_case("truncated-10", "truncated or not an .npz archive", lambda raw: raw[:10]),
    raw_case(
        "truncated-half", "truncated or not an .npz archive", lambda raw: raw[: len(raw) // 2]
    ),
    raw_case(
        "truncated-in-directory",
        "truncated or not an .npz archive",
        lambda raw: raw[: len(raw) - 300],
    ),
    raw_case("truncated-last-byte", "truncated or not an .npz archive", lambda raw: raw[:-1]),
    raw_case("text", "truncated or not an .npz archive", lambda raw: b"not a graph"),
    raw_case(
        "random-bytes",
        "truncated or not an .npz archive",
        lambda raw: np.random.default_rng(1).bytes(5000),
    ),
    raw_case(
        "random-bytes-after-zip-magic",
        "truncated or not an .npz archive",
        lambda raw: b"PK\x03\x04" + np.random.default_rng(2).bytes(5000),
    ),
    raw_case(
        "npy-file",
        "it is a single .npy array, not an .npz archive",
        lambda raw: npy_bytes(np.arange(10)),
    ),
    raw_case(
        "flipped-byte-in-vectors", "member 'vectors' is damaged (Bad CRC-32", flip_byte_in_vectors
    ),
    raw_case(
        "forged-header",
        "member 'vectors' is truncated or its header is damaged",
        forged_vectors_header,
    ),
    raw_case("compressed", "member 'format' is compressed", compressed),
    raw_case("duplicate-member", "member 'k1.npy' appears more than once", duplicate_member),
    raw_case("member-not-npy", "member 'k2' is damaged", member_is_not_npy),
    # members and format
    edit_case(
        "missing-format",
        "not a triton-rerank graph file or is damaged: missing member 'format'",
        delete("format"),
        recompute_checksum=False,
    ),
    edit_case(
        "missing-m_values",
        "missing member 'm_values'",
        delete("m_values"),
        recompute_checksum=False,
    ),
    edit_case(
        "missing-checksum",
        "missing member 'checksum'",
        delete("checksum"),
        recompute_checksum=False,
    ),
    edit_case("extra-member", "unexpected member 'junk'", setting("junk", np.zeros(3))),
    edit_case(
        "old-format",
        "has graph format 1; this version reads format 2: rebuild the graph",
        old_format,
    ),
    edit_case("format-3", "has graph format 3", setting("format", np.int64(3))),
    edit_case(
        "format-float",
        "member 'format' must be an integer scalar",
        setting("format", np.float64(2)),
    ),
    # checksum and fingerprint
    edit_case(
        "edited-without-checksum",
        "its checksum does not match its content: the file was damaged or edited",
        poke("m_values", 0, 0.5),
        recompute_checksum=False,
    ),
    edit_case(
        "checksum-not-hex",
        "member 'checksum' must be 64 hex digits",
        setting("checksum", np.str_("z" * 64)),
        recompute_checksum=False,
    ),
    edit_case(
        "checksum-not-str",
        "member 'checksum' must be a str scalar",
        setting("checksum", np.int64(5)),
        recompute_checksum=False,
    ),
    edit_case(
        "fingerprint-not-hex",
        "member 'fingerprint' must be 64 hex digits",
        setting("fingerprint", np.str_("abc")),
    ),
    edit_case(
        "no-fingerprint",
        "records no fingerprint of the database",
        setting("fingerprint", np.str_("")),
    ),
    index_case(
        "another-database-same-size-and-ids",
        "was built for another database: the index holds as many vectors under the same ids",
        re_extracted_features,
    ),
    index_case(
        "wrong-dimension",
        "its vectors have dimension 16, the index's 8",
        lambda saved: flat_ip(np.ascontiguousarray(saved.xb[:, :8])),
    ),
    index_case(
        "fewer-vectors",
        "was built for another database (400 vectors",
        lambda saved: flat_ip(saved.xb[:300]),
    ),
    edit_case("other-ids", "was built for another database (400 vectors", poke("ids", 3, 10**6)),
    # scalars
    edit_case("k1-zero", "member 'k1' is 0, below its minimum 1", setting("k1", np.int64(0))),
    edit_case("k1-negative", "member 'k1' is -3, below its minimum 1", setting("k1", np.int64(-3))),
    edit_case(
        "k1-not-the-list-width",
        "member 'knn_values' must have dtype float32 and shape (g, k1) = (400, 13)",
        setting("k1", np.int64(13)),
    ),
    edit_case(
        "k1-float", "member 'k1' must have dtype int64 and shape ()", setting("k1", np.float64(12))
    ),
    edit_case(
        "k1-array", "member 'k1' must have dtype int64 and shape ()", setting("k1", np.array([12]))
    ),
    edit_case("k1-uint64", "member 'k1' must have dtype int64", setting("k1", np.uint64(12))),
    edit_case("k2-zero", "member 'k2' is 0, below its minimum 1", setting("k2", np.int64(0))),
    edit_case("k2-above-k1", "member 'k2' is 13, above k1 = 12", setting("k2", np.int64(13))),
    edit_case(
        "k2-one-with-rounds",
        "member 'm_indptr' must have dtype int64 and shape (R, 2g + 1) = (0, 801)",
        setting("k2", np.int64(1)),
    ),
    edit_case(
        "iterations-negative",
        "member 'iterations' is -1, below its minimum 0",
        setting("iterations", np.int64(-1)),
    ),
    edit_case(
        "iterations-edited",
        "member 'm_indptr' must have dtype int64 and shape (R, 2g + 1) = (3, 801)",
        setting("iterations", np.int64(3)),
    ),
    edit_case(
        "iterations-huge",
        "shape (R, 2g + 1) = (4611686018427387904, 801)",
        setting("iterations", np.int64(2**62)),
    ),
    edit_case(
        "row-budget-zero",
        "member 'row_budget' is 0, below its minimum 1",
        setting("row_budget", np.int64(0)),
    ),
    edit_case(
        "row-budget-negative",
        "member 'row_budget' is -5, below its minimum 1",
        setting("row_budget", np.int64(-5)),
    ),
    # the database rows
    edit_case(
        "vectors-float64",
        "member 'vectors' must have dtype float32",
        lambda m: m.update(vectors=m["vectors"].astype(np.float64)),
    ),
    edit_case(
        "vectors-1d",
        "member 'vectors' must be a float32 array of shape (g, d) with g >= 1",
        lambda m: m.update(vectors=m["vectors"].ravel()),
    ),
    edit_case(
        "vectors-empty",
        "with g >= 1 and d >= 1, got float32 array of shape (0, 16)",
        lambda m: m.update(vectors=m["vectors"][:0]),
    ),
    edit_case(
        "vectors-nan",
        "member 'vectors' holds NaN or infinite values",
        poke("vectors", (7, 2), np.nan),
    ),
    edit_case(
        "vectors-inf",
        "member 'vectors' holds NaN or infinite values",
        poke("vectors", (7, 2), np.inf),
    ),
    edit_case("vectors-not-unit", NOT_UNIT, lambda m: m["vectors"].__imul__(2)),
    edit_case(
        "vectors-wrong-dimension",
        NOT_UNIT,
        lambda m: m.update(vectors=np.ascontiguousarray(m["vectors"][:, :8])),
    ),
    edit_case(
        "ids-short",
        "member 'ids' must have dtype int64 and shape (g,) = (400,)",
        lambda m: m.update(ids=m["ids"][:-1]),
    ),
    edit_case(
        "ids-int32",
        "member 'ids' must have dtype int64",
        lambda m: m.update(ids=m["ids"].astype(np.int32)),
    ),
    edit_case(
        "caller-position-repeated",
        "'caller_position' must be a permutation",
        lambda m: poke("caller_position", 0, m["caller_position"][1])(m),
    ),
    edit_case(
        "caller-position-out-of-range",
        "member 'caller_position' holds 400: positions must lie in [0, 400)",
        poke("caller_position", 5, N_DB),
    ),
    edit_case(
        "caller-position-negative",
        "member 'caller_position' holds -1",
        poke("caller_position", 5, -1),
    ),
    edit_case(
        "caller-position-big-endian",
        "member 'caller_position' must have dtype int64",
        lambda m: m.update(caller_position=m["caller_position"].astype(">i8")),
    ),
    # the kNN lists
    edit_case(
        "knn-index-out-of-range",
        "member 'knn_indices' holds 400: positions must lie in [0, 400), or be -1 for none",
        poke("knn_indices", (5, 3), N_DB),
    ),
    edit_case(
        "knn-index-huge",
        "member 'knn_indices' holds 4611686018427387904",
        poke("knn_indices", (5, 3), 2**62),
    ),
    edit_case(
        "knn-index-negative", "member 'knn_indices' holds -2", poke("knn_indices", (5, 3), -2)
    ),
    edit_case(
        "knn-list-without-self", "has a row that does not list its own node", drop_self_from_row_0
    ),
    edit_case("knn-gap", "has a missing entry (-1) before a valid one", gap_in_row_0),
    edit_case(
        "knn-value-inf-for-valid-entry",
        "must be -inf exactly where 'knn_indices' is -1",
        poke("knn_values", (0, 2), -np.inf),
    ),
    edit_case(
        "knn-value-nan",
        "member 'knn_values' holds NaN or infinite values",
        poke("knn_values", (0, 2), np.nan),
    ),
    edit_case(
        "knn-value-above-one", "member 'knn_values' holds 1.5", poke("knn_values", (0, 2), 1.5)
    ),
    edit_case(
        "knn-values-unsorted",
        "must be non-increasing along each row",
        swap("knn_values", (0, 1), (0, 5)),
    ),
    edit_case(
        "knn-indices-wrong-shape",
        "member 'knn_indices' must have dtype int64 and shape (g, k1) = (400, 12)",
        lambda m: m.update(knn_indices=m["knn_indices"][:, :11]),
    ),
    # the propagated rounds
    edit_case(
        "m-indptr-decreasing", "member 'm_indptr' decreases", swap("m_indptr", (0, 5), (0, 6))
    ),
    edit_case(
        "m-indptr-past-the-end",
        f"member 'm_indptr' must run from 0 to {NNZ_NOTE}",
        lambda m: m["m_indptr"][-1].__setitem__(-1, m["m_indptr"][-1, -1] + 1),
    ),
    edit_case("m-indptr-not-from-zero", "runs from 1 to", poke("m_indptr", (0, 0), 1)),
    edit_case("m-indptr-negative", "runs from -5 to", poke("m_indptr", (0, 0), -5)),
    edit_case(
        "m-indptr-gap-between-rounds",
        "a round that does not start where the previous one ends",
        gap_between_rounds,
    ),
    edit_case(
        "m-indptr-unequal-halves", "A_r and A_r.T halves hold different numbers", unequal_halves
    ),
    edit_case(
        "m-indptr-int32",
        "member 'm_indptr' must have dtype int64",
        lambda m: m.update(m_indptr=m["m_indptr"].astype(np.int32)),
    ),
    edit_case(
        "m-index-out-of-range",
        "member 'm_indices' holds 400: node positions must lie in [0, 400)",
        poke("m_indices", 17, N_DB),
    ),
    edit_case("m-index-negative", "member 'm_indices' holds -1", poke("m_indices", 17, -1)),
    edit_case(
        "m-indices-int64",
        "member 'm_indices' must have dtype int32",
        lambda m: m.update(m_indices=m["m_indices"].astype(np.int64)),
    ),
    edit_case(
        "m-value-nan",
        "member 'm_values' holds NaN or infinite values",
        poke("m_values", 17, np.nan),
    ),
    edit_case(
        "m-value-negative",
        "member 'm_values' holds -0.5: entries of normalised rows",
        poke("m_values", 17, -0.5),
    ),
    edit_case("m-value-above-one", "member 'm_values' holds 2.0", poke("m_values", 17, 2.0)),
    edit_case(
        "m-values-short",
        "member 'm_values' must have dtype float32 and shape (nnz,)",
        lambda m: m.update(m_values=m["m_values"][:-1]),
    ),
    edit_case(
        "inv-norm-nan",
        "member 'inv_norm' holds NaN or infinite values",
        poke("inv_norm", (1, 4), np.nan),
    ),
    edit_case(
        "inv-norm-zero",
        "member 'inv_norm' holds 0.0: inverse norms lie in (0, ",
        poke("inv_norm", (1, 4), 0.0),
    ),
    edit_case("inv-norm-huge", "member 'inv_norm' holds 1e+20", poke("inv_norm", (1, 4), 1e20)),
    edit_case(
        "inv-norm-one-round",
        "member 'inv_norm' must have dtype float32 and shape (R, g) = (2, 400)",
        lambda m: m.update(inv_norm=m["inv_norm"][:1]),
    ),
    # the reverse lists
    edit_case("rev-indptr-decreasing", "member 'rev_indptr' decreases", swap("rev_indptr", 5, 6)),
    edit_case(
        "rev-indptr-past-the-end",
        "member 'rev_indptr' must run from 0 to E = len(rev_rows)",
        lambda m: m["rev_indptr"].__setitem__(-1, 10**9),
    ),
    edit_case(
        "rev-indptr-rows-moved", "'rev_indptr' does not match the top-k2 lists", reverse_rows_moved
    ),
    edit_case("rev-row-out-of-range", "member 'rev_rows' holds 400", poke("rev_rows", 9, N_DB)),
    edit_case("rev-row-negative", "member 'rev_rows' holds -7", poke("rev_rows", 9, -7)),
    edit_case(
        "rev-weight-nan", "member 'rev_w' holds NaN or infinite values", poke("rev_w", 9, np.nan)
    ),
    edit_case("rev-weight-negative", "member 'rev_w' holds -0.25", poke("rev_w", 9, -0.25)),
    edit_case(
        "rev-rows-short",
        "member 'rev_w' must have dtype float32 and shape (E,)",
        lambda m: m.update(rev_rows=m["rev_rows"][:-1]),
    ),
]


@pytest.mark.parametrize("kind,make,problem", CASES)
def test_damaged_or_edited_file_is_refused(tmp_path, saved, kind, make, problem):
    path = tmp_path / "graph.npz"
    index = saved.index
    if kind == "raw":
        path.write_bytes(make(saved.raw))
    elif kind == "index":
        path = saved.path
        index = make(saved)
    else:
        members = {name: array.copy() for name, array in saved.members.items()}
        make(members)
        write_members(path, members, recompute_checksum=kind == "checksum")
    with pytest.raises(ValueError, match=re.escape(str(path)) + " .*" + re.escape(problem)):
        load_into_index(index, path)


def test_structural_rules_do_not_rely_on_the_checksum(tmp_path, saved):
    """The checksum is checked last: an unsafe file with its checksum recomputed is refused
    by the rule it breaks, and its content is what the checksum covers."""
    members = {name: array.copy() for name, array in saved.members.items()}
    members["m_indices"][3] = N_DB
    write_members(tmp_path / "graph.npz", members, recompute_checksum=True)
    assert str(read_members(tmp_path / "graph.npz")["checksum"]) == content_checksum(members)
    with pytest.raises(ValueError, match="member 'm_indices' holds 400"):
        InductiveGraph.load(tmp_path / "graph.npz")


# -- fuzzing: no file crashes the process ---------------------------------------------

WORKER_FLAG = "--graph-file-worker"
RESULT_PREFIX = "GRAPH-FILE-RESULT "
WORKER_TIMEOUT_S = 300  # the first file may compile the search kernel


def well_formed(distances, labels, ids) -> bool:
    """Search results of the right shape: known ids, padding (-1 / -inf) last, finite
    descending scores, no id twice in a row."""
    found = labels >= 0
    return bool(
        labels.shape == distances.shape == (N_QUERY, TOP)
        and np.isin(labels[found], ids).all()
        and (np.diff(found.astype(int), axis=1) <= 0).all()
        and np.isfinite(distances[found]).all()
        and np.isneginf(distances[~found]).all()
        and (np.diff(np.where(found, distances, -np.inf), axis=1) <= 0).all()
        and all(len(set(row[row >= 0])) == int((row >= 0).sum()) for row in labels)
    )


def worker_main(expected_path: str) -> None:
    """The worker: for each graph file path on stdin, load it into the test's index and
    search; one result line per file on the original stdout (everything else that writes
    to stdout is sent to stderr)."""
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    xq, xb = make_data()
    index = flat_ip(xb)
    with np.load(expected_path) as expected:
        expected_distances, expected_labels = expected["distances"], expected["labels"]
    for line in sys.stdin:
        path = line.rstrip("\n")
        reranked = RerankedIndex(index, mode="inductive", **PARAMS)
        try:
            reranked.load_graph(path)
        except ValueError as error:
            result = {
                "outcome": "refused" if path in str(error) else "unnamed-error",
                "message": str(error),
            }
        except Exception:  # any other exception is a bug the test reports
            result = {"outcome": "load-error", "message": traceback.format_exc()}
        else:
            try:
                distances, labels = reranked.search(xq, TOP)
            except Exception:
                result = {"outcome": "search-error", "message": traceback.format_exc()}
            else:
                same = np.array_equal(distances, expected_distances) and np.array_equal(
                    labels, expected_labels
                )
                outcome = (
                    "same"
                    if same
                    else "different"
                    if well_formed(distances, labels, np.arange(N_DB))
                    else "malformed"
                )
                result = {"outcome": outcome, "message": ""}
        results.write(RESULT_PREFIX + json.dumps(result) + "\n")
        results.flush()


class Worker:
    """A worker process (this module run as a script) that loads and searches graph
    files; restarted after it dies, so that a crash is reported for one file only."""

    def __init__(self, expected_path: Path, log_path: Path, env: dict[str, str]):
        self.command = [sys.executable, __file__, WORKER_FLAG, str(expected_path)]
        self.log_path = log_path
        self.env = env
        self.process = None

    def _start(self):
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=self.env,
            cwd=Path(__file__).resolve().parents[1],
            text=True,
        )

    def _died(self) -> dict:
        status = self.process.wait()
        self.process = None
        self.log.close()
        how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
        log = self.log_path.read_text(errors="replace")[-3000:]
        return {"outcome": "crash", "message": f"the worker process died ({how}):\n{log}"}

    def check(self, path: Path) -> dict:
        """Load and search ``path`` in the worker: ``{"outcome": ..., "message": ...}``."""
        if self.process is None:
            self._start()
        try:
            self.process.stdin.write(f"{path}\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            return self._died()
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        while True:
            ready, _, _ = select.select(
                [self.process.stdout], [], [], max(0.0, deadline - time.monotonic())
            )
            if not ready:
                self.process.kill()
                self._died()
                return {"outcome": "hang", "message": f"no answer in {WORKER_TIMEOUT_S} s"}
            line = self.process.stdout.readline()
            if not line:
                return self._died()
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX) :])

    def close(self):
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait(timeout=60)
            self.log.close()


@pytest.fixture(scope="module")
def workers(saved, tmp_path_factory, request):
    """``workers(boundscheck)``: a started-on-demand worker; with ``boundscheck`` its
    kernels run with numba's bounds checks (its own kernel cache, kept in pytest's cache
    directory), so that any read outside an array is an error, not a silent wrong read."""
    folder = tmp_path_factory.mktemp("fuzz")
    np.savez(folder / "expected.npz", distances=saved.distances, labels=saved.labels)
    started = {}

    def get(boundscheck: bool) -> Worker:
        if boundscheck not in started:
            env = dict(os.environ)
            if boundscheck:
                env["NUMBA_BOUNDSCHECK"] = "1"
                cache = getattr(request.config, "cache", None)  # (-p no:cacheprovider)
                kernels = (
                    cache.mkdir("numba-boundscheck")
                    if cache is not None
                    else folder / "numba-boundscheck"
                )
                env["NUMBA_CACHE_DIR"] = str(kernels)
            started[boundscheck] = Worker(
                folder / "expected.npz", folder / f"worker-{boundscheck}.log", env
            )
        return started[boundscheck]

    yield get
    for worker in started.values():
        worker.close()


INT_SPECIALS = [
    -(2**63),
    -(2**62),
    -(2**31) - 1,
    -(2**31),
    -7,
    -2,
    -1,
    0,
    1,
    2,
    3,
    11,
    12,
    13,
    N_DB - 1,
    N_DB,
    N_DB + 1,
    2 * N_DB,
    2 * N_DB + 1,
    2**31 - 1,
    2**31,
    2**62,
    2**63 - 1,
]
FLOAT_SPECIALS = [
    np.nan,
    np.inf,
    -np.inf,
    0.0,
    -0.0,
    1e-45,
    1e-30,
    0.25,
    0.5,
    1.0,
    1.0005,
    1.5,
    -0.5,
    -1.0,
    -1.5,
    1e12,
    1e13,
    1e30,
    3.4e38,
    -3.4e38,
]
DTYPES = [
    "bool",
    "int8",
    "uint8",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    ">i8",
    ">f4",
    "<U4",
    "V8",
]
ARRAYS = tuple(name for name in MEMBERS if name not in SCALARS + STRINGS)
INDEX_ARRAYS = ("caller_position", "knn_indices", "m_indptr", "m_indices", "rev_indptr", "rev_rows")


def special_values(dtype: np.dtype, rng, size: int) -> np.ndarray:
    """``size`` values of ``dtype`` drawn from the specials (ints wrap around)."""
    if dtype.kind in "iub":
        return np.array(rng.choice(INT_SPECIALS, size), dtype=np.int64).astype(dtype)
    if dtype.kind in "fc":
        with np.errstate(over="ignore", invalid="ignore"):  # 3.4e38 as float16: inf
            return np.array(rng.choice(FLOAT_SPECIALS, size)).astype(dtype)
    if dtype.kind == "U":
        return np.array(rng.choice(["", "ab", "0" * 64, "f00d"], size)).astype(dtype)
    return np.zeros(size, dtype=dtype)


def random_array(data, rng, like: np.ndarray) -> np.ndarray:
    """An array of random dtype and shape (often ``like``'s shape, or one off)."""
    dtype = np.dtype(data.draw(st.sampled_from(DTYPES), label="dtype"))
    shapes = [like.shape, (), (0,), (1,), (3,), (2, 2), like.shape[::-1], like.shape + (1,)]
    if like.ndim:
        shapes += [
            (like.shape[0] + 1,) + like.shape[1:],
            (max(0, like.shape[0] - 1),) + like.shape[1:],
        ]
    shape = data.draw(st.sampled_from(shapes), label="shape")
    size = int(np.prod(shape))
    if dtype.kind in "iuf" and data.draw(st.booleans(), label="random values"):
        values = rng.integers(-3 * N_DB, 3 * N_DB, size).astype(dtype)
    else:
        values = special_values(dtype, rng, size)
    return values.reshape(shape)


def mutate_members(data, members: dict[str, np.ndarray]) -> str:
    """Edit the members in place (one random edit); returns what was done."""
    kind = data.draw(
        st.sampled_from(
            ["poke"] * 5 + ["scalar", "replace", "delete", "extra", "shuffle", "swap", "string"]
        ),
        label="edit",
    )
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    # (some may be deleted); the arrays of positions and offsets, which the kernels index
    # with, are edited most often
    present = [name for name in INDEX_ARRAYS * 3 + ARRAYS if name in members]
    if kind == "poke":  # a few entries set to special (or off-by-one) values
        name = data.draw(st.sampled_from(present), label="member")
        flat = members[name].reshape(-1).copy()
        if flat.size == 0:
            return f"poke {name} (empty)"
        where = rng.integers(0, flat.size, data.draw(st.integers(1, 4), label="entries"))
        if data.draw(st.booleans(), label="off by one"):
            step = 1 if flat.dtype.kind in "iu" else np.float32(1e-3)
            flat[where] = flat[where] + step * rng.choice([-1, 1], where.size)
        else:
            flat[where] = special_values(flat.dtype, rng, where.size)
        members[name] = flat.reshape(members[name].shape)
        return f"poke {name}[{where.tolist()}] = {flat[where].tolist()}"
    if kind == "scalar":
        name = data.draw(st.sampled_from(SCALARS), label="member")
        value = data.draw(st.sampled_from(INT_SPECIALS), label="value")
        members[name] = np.int64(value)
        return f"{name} = {value}"
    if kind == "replace":
        name = data.draw(st.sampled_from(MEMBERS), label="member")
        members[name] = random_array(data, rng, members.get(name, np.zeros(3)))
        return f"replace {name} by {members[name].dtype} {members[name].shape}"
    if kind == "delete":
        name = data.draw(st.sampled_from(MEMBERS), label="member")
        members.pop(name, None)
        return f"delete {name}"
    if kind == "extra":
        name = data.draw(st.sampled_from(["junk", "k1.npy", "Format", "vectors2"]), label="name")
        members[name] = random_array(data, rng, np.zeros(3))
        return f"extra member {name}"
    if kind == "shuffle":  # the same values in another order
        name = data.draw(st.sampled_from(present), label="member")
        members[name] = rng.permutation(members[name].reshape(-1)).reshape(members[name].shape)
        return f"shuffle {name}"
    if kind == "swap":  # two members of the same dtype exchanged
        a, b = data.draw(
            st.sampled_from(
                [
                    ("ids", "caller_position"),
                    ("m_indptr", "m_indices"),
                    ("knn_values", "inv_norm"),
                    ("rev_indptr", "rev_rows"),
                    ("m_values", "rev_w"),
                    ("k1", "k2"),
                    ("iterations", "row_budget"),
                ]
            ),
            label="pair",
        )
        if a not in members or b not in members:
            return f"swap {a} and {b} (one is deleted)"
        members[a], members[b] = members[b], members[a]
        return f"swap {a} and {b}"
    name = data.draw(st.sampled_from(STRINGS), label="member")
    members[name] = np.str_(
        data.draw(st.sampled_from(["", "0" * 64, "g" * 64, "ab"]), label="value")
    )
    return f"{name} = {str(members[name])!r}"


def mutate_bytes(data, raw: bytes) -> tuple[bytes, str]:
    """Truncate, flip bytes of, or overwrite a stretch of the pristine file."""
    kind = data.draw(st.sampled_from(["truncate", "flip", "overwrite"]), label="damage")
    if kind == "truncate":
        end = data.draw(st.integers(0, len(raw) - 1), label="end")
        return raw[:end], f"truncate at {end}"
    damaged = bytearray(raw)
    if kind == "flip":
        # near the end (directory, headers, last members) half the time: a flip in the
        # data is caught by the zip CRC already
        near_end = data.draw(st.booleans(), label="near end")
        low = len(raw) - 3000 if near_end else 0
        places = data.draw(
            st.lists(st.integers(low, len(raw) - 1), min_size=1, max_size=6), label="bytes"
        )
        for place in places:
            damaged[place] ^= data.draw(st.integers(1, 255), label="xor")
        return bytes(damaged), f"flip bytes {places}"
    start = data.draw(st.integers(0, len(raw) - 1), label="start")
    junk = data.draw(st.binary(min_size=1, max_size=64), label="junk")
    damaged[start : start + len(junk)] = junk
    return bytes(damaged[: len(raw)]), f"overwrite {len(junk)} bytes at {start}"


def fuzz_one(data, saved, worker, path: Path) -> None:
    """Make one damaged or edited file and check the worker's verdict on it."""
    if data.draw(st.integers(0, 3), label="bytes or members") == 0:
        raw, what = mutate_bytes(data, saved.raw)
        path.write_bytes(raw)
        recompute = False
    else:
        members = {name: array.copy() for name, array in saved.members.items()}
        what = "; ".join(
            mutate_members(data, members)
            for _ in range(data.draw(st.sampled_from([1, 1, 1, 2, 3]), label="edits"))
        )
        recompute = data.draw(st.integers(0, 3), label="recompute checksum") > 0
        write_members(path, members, recompute_checksum=recompute)
    result = worker.check(path)
    event(f"{result['outcome']} (checksum recomputed: {recompute})")
    # a file that loads searches like the original, unless it was edited consistently
    # (checksum recomputed): then it must at least give well-formed results
    allowed = {"refused", "same"} | ({"different"} if recompute else set())
    assert result["outcome"] in allowed, (
        f"{what} (checksum recomputed: {recompute}): {result['outcome']}\n{result['message']}"
    )


FUZZ_SETTINGS = settings(
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=400,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Path:
    """Where the fuzz tests write their file (one file, rewritten for each example)."""
    return tmp_path_factory.mktemp("fuzzed") / "graph.npz"


@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzzed_graph_files_are_refused_or_searched_safely(data, saved, workers, fuzz_file):
    """Truncated, byte-flipped, overwritten and member-edited files (with and without a
    recomputed checksum) are refused with the file named, or searched as they should be;
    a segfault in the worker fails the test."""
    fuzz_one(data, saved, workers(False), fuzz_file)


@pytest.mark.slow
@settings(FUZZ_SETTINGS, max_examples=800)
@given(data=st.data())
def test_fuzzed_graph_files_never_read_outside_an_array(data, saved, workers, fuzz_file):
    """More fuzzed files of the same kinds, searched with numba's bounds checks on: a read
    outside an array (which without them may go unnoticed, or crash only sometimes) is an
    error the test reports. The first run compiles the kernels with the checks (some 20 s
    on two cores); pytest's cache keeps them."""
    fuzz_one(data, saved, workers(True), fuzz_file)


def test_the_worker_reports_a_crash(saved, workers):
    """The fuzz tests' safety net: a worker that dies on a file (here killed by SIGSEGV
    while it waits) is reported as a crash naming the signal, and the next file gets a
    fresh worker."""
    worker = workers(False)
    assert worker.check(saved.path)["outcome"] == "same"
    os.kill(worker.process.pid, signal.SIGSEGV)
    worker.process.wait(timeout=60)
    result = worker.check(saved.path)
    assert result["outcome"] == "crash" and "SIGSEGV" in result["message"]
    assert worker.check(saved.path)["outcome"] == "same"


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == WORKER_FLAG:
    worker_main(sys.argv[2])
