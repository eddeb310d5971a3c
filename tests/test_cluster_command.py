"""``triton-rerank cluster``: pseudo-labels by every method, scored against the labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from compare import clustered
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from tests.test_cli import run_main
from triton_rerank.app.synthetic import clustered_vectors
from triton_rerank.clustering import pseudo_labels


@pytest.fixture
def feature_file(tmp_path):
    """A labelled feature file of 300 clustered features (query and gallery)."""
    x, ids = clustered_vectors(300, 32, 20, spread=0.7, seed=3)
    path = tmp_path / "features.npz"
    np.savez(
        path,
        query_f=x[:50],
        gallery_f=x[50:],
        query_label=ids[:50],
        gallery_label=ids[50:],
        query_cam=np.zeros(50, np.int64),
        gallery_cam=np.ones(250, np.int64),
    )
    return path, x, ids


def test_json_report_matches_pseudo_labels(feature_file, capsys):
    path, x, ids = feature_file
    status, out, _ = run_main(
        ["cluster", str(path), "--json", "--k1", "20", "--k2", "6", "--eps-gnn", "0.3"], capsys
    )
    assert status == 0
    report = json.loads(out)
    assert report["images"] == 300 and report["identities"] == 20
    rows = {r["method"]: r for r in report["results"]}
    assert list(rows) == ["jaccard", "gnn", "cosine"]
    expected = {
        "jaccard": pseudo_labels(x, eps=0.6, k1=30, k2=6),
        "gnn": pseudo_labels(x, method="gnn", eps=0.3, k1=20, k2=6),
        "cosine": pseudo_labels(x, method="cosine"),  # rho 1.6e-3
    }
    for method, labels in expected.items():
        row = rows[method]
        assert row["clusters"] == labels.max() + 1
        assert row["outliers"] == (labels == -1).sum()
        assert row["nmi"] == pytest.approx(normalized_mutual_info_score(ids, labels))
        assert row["ari"] == pytest.approx(adjusted_rand_score(ids, labels))
        assert row["seconds"] > 0 and row["stored_pairs"] >= 300
    assert rows["gnn"]["eps"] == 0.3 and rows["jaccard"]["eps"] == 0.6
    assert rows["jaccard"]["nmi"] > 0.9  # well-separated clusters are found


def test_table_on_a_built_in_dataset(capsys):
    status, out, _ = run_main(
        ["cluster", "--dataset", "digits", "--methods", "jaccard,cosine"], capsys
    )
    assert status == 0
    assert out.startswith("scikit-learn digits: 1,797 images, 10 identities")
    lines = out.splitlines()
    assert lines[1].split() == ["method", "eps", "clusters", "outliers", "NMI", "ARI", "time"]
    assert [line.split()[0] for line in lines[2:]] == ["jaccard", "cosine"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["cluster"], "needs a FILE or --dataset"),
        (["cluster", "f.npz", "--dataset", "digits"], "needs a FILE or --dataset"),
        (["cluster", "--dataset", "digits", "--methods", "jaccard,spectral"], "methods must be"),
        (["cluster", "--dataset", "digits", "--eps-jaccard", "1.5"], "eps must be in"),
        (["cluster", "--dataset", "digits", "--rho", "0"], "rho must be in"),
        (["cluster", "--dataset", "digits", "--jaccard-k1", "5000"], "k1=5000 is larger"),
        (["cluster", "missing.npz"], "no such feature file"),
    ],
)
def test_errors_are_one_line(argv, message, capsys):
    status, out, err = run_main(argv, capsys)
    assert status == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_file_without_labels(tmp_path, capsys):
    path = tmp_path / "nolabels.npz"
    x = clustered(n=40, dim=8)
    np.savez(path, query_f=x[:10], gallery_f=x[10:])
    status, _, err = run_main(["cluster", str(path)], capsys)
    assert status == 2 and "no labels" in err
