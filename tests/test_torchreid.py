"""torchreid integration, against a real (tiny) torchreid setup: no mocks.

A custom image dataset of real images (sklearn digits, upscaled) is written to a
temporary folder and registered with torchreid; a small torchreid model with random
weights extracts features; torchreid's own ImageSoftmaxEngine evaluates.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from compare import assert_same_ranking, four_halves_vectors

pytest.importorskip(
    "torchreid", reason="torchreid is not installed (pip install 'triton-rerank[torchreid]')"
)

from triton_rerank import gnn_rerank
from triton_rerank.evaluation.metrics import evaluate as evaluate_scores
from triton_rerank.integrations.torchreid import (
    UnnormalisedFeaturesWarning,
    disable_gnn_reranking,
    enable_gnn_reranking,
    evaluate,
    re_ranking,
    torchreid_module,
    use_gnn_reranking,
)
from triton_rerank.rerank import gnn_rerank_similarities

DATASET = "triton_rerank_digits"
GNN = dict(k1=12, k2=4, lamb=0.3)


def write_digit_images(root):
    """Real 8x8 digits upscaled to 64x32 PNGs: pid = digit, 3 cameras (round robin).

    Returns (train, query, gallery) lists of (path, pid, camid) for torchreid.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    pixels, digits = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    train, query, gallery = [], [], []
    for digit in range(10):
        chosen = rng.choice(np.flatnonzero(digits == digit), 26, replace=False)
        for rank, index in enumerate(chosen):
            image = (pixels[index].reshape(8, 8) * 255 / 16).astype(np.uint8)
            image = np.kron(image, np.ones((8, 4), np.uint8))  # 64 x 32
            path = root / f"{digit}_{rank}.png"
            Image.fromarray(np.stack([image] * 3, axis=-1)).save(path)
            item = (str(path), digit, rank % 3)
            (train if rank < 2 else query if rank < 6 else gallery).append(item)
    return train, query, gallery


@pytest.fixture(scope="module")
def engine_setup(tmp_path_factory):
    data_module = torchreid_module("data")
    root = tmp_path_factory.mktemp("digits_reid")
    splits = write_digit_images(root)
    image_dataset = data_module.ImageDataset

    class DigitsReid(image_dataset):
        def __init__(self, root="", **kwargs):
            super().__init__(*splits, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # re-registering in one session overwrites
        data_module.register_image_dataset(DATASET, DigitsReid)
    manager = data_module.ImageDataManager(
        root=str(root),
        sources=DATASET,
        height=64,
        width=32,
        transforms=None,
        batch_size_train=16,
        batch_size_test=64,
        workers=0,
        use_gpu=False,
    )
    torch.manual_seed(0)
    models = torchreid_module("models")
    model = models.build_model(
        "osnet_x0_25", num_classes=manager.num_train_pids, pretrained=False, use_gpu=False
    )
    optimizer = torchreid_module("optim").build_optimizer(model, optim="sgd", lr=0.01)
    engine = torchreid_module("engine").ImageSoftmaxEngine(manager, model, optimizer, use_gpu=False)
    engine.set_model_mode("eval")
    loaders = manager.test_loader[DATASET]

    def features(loader):
        parts, pids, cams = [], [], []
        with torch.no_grad():
            for batch in loader:
                images, batch_pids, batch_cams = engine.parse_data_for_eval(batch)
                parts.append(engine.extract_features(images))
                pids += batch_pids.tolist()
                cams += batch_cams.tolist()
        return torch.cat(parts), np.asarray(pids), np.asarray(cams)

    qf, q_pids, q_cams = features(loaders["query"])
    gf, g_pids, g_cams = features(loaders["gallery"])
    return engine, loaders, (qf, gf, q_pids, g_pids, q_cams, g_cams)


def engine_evaluate(engine, loaders, rerank):
    return engine._evaluate(
        dataset_name=DATASET,
        query_loader=loaders["query"],
        gallery_loader=loaders["gallery"],
        normalize_feature=True,
        rerank=rerank,
    )


def engine_distance_matrices(qf, gf):
    """The engine's ``distmat``, ``distmat_qq``, ``distmat_gg`` (``normalize_feature=True``,
    torchreid's default squared euclidean metric), as numpy arrays."""
    qn = torch.nn.functional.normalize(qf, dim=1)
    gn = torch.nn.functional.normalize(gf, dim=1)
    distance = torchreid_module("metrics").compute_distance_matrix
    return [distance(a, b).numpy() for a, b in ((qn, gn), (qn, qn), (gn, gn))]


def test_engine_uses_gnn_reranking_and_restores_the_original(engine_setup, capsys):
    engine, loaders, features = engine_setup
    engine_module = torchreid_module("engine.engine")
    original = engine_module.re_ranking
    plain_rank1, plain_map = engine_evaluate(engine, loaders, rerank=False)
    with use_gnn_reranking(**GNN):
        assert engine_module.re_ranking is not original
        rank1, mAP = engine_evaluate(engine, loaders, rerank=True)
        capsys.readouterr()
        reported_rank1 = engine.test(normalize_feature=True, rerank=True)
        printed = capsys.readouterr().out
    assert engine_module.re_ranking is original

    # GNN re-ranking of the very matrices the engine computes (from features, see
    # test_engine_equals_evaluate_on_features_whose_distances_are_exact: the fp32
    # distances of these random-weight features, cosines ~0.9995, reorder a few
    # neighbours)
    qf, gf, *labels = features
    expected = evaluate_scores(-re_ranking(*engine_distance_matrices(qf, gf), **GNN), *labels)
    expected_map = expected.mAP
    assert mAP == pytest.approx(expected_map, abs=1e-6)
    assert rank1 == pytest.approx(expected.cmc[0], abs=1e-6) and reported_rank1 == rank1
    assert f"mAP: {expected_map:.1%}" in printed
    assert abs(mAP - plain_map) > 1e-3, "re-ranking did not change the ranking"
    _, none_map = evaluate(*features, rerank="none")
    assert none_map == pytest.approx(plain_map, abs=1e-6)


def test_k_reciprocal_mode_matches_torchreids_own_rerank(engine_setup):
    engine, loaders, features = engine_setup
    _, engine_map = engine_evaluate(engine, loaders, rerank=True)  # torchreid's own
    _, ours = evaluate(*features, rerank="k-reciprocal")
    assert ours == pytest.approx(engine_map, abs=1e-6)


@pytest.mark.parametrize(
    "metric, to_distance", [("euclidean", lambda s: 2 - 2 * s), ("cosine", lambda s: 1 - s)]
)
def test_drop_in_equals_gnn_rerank_on_exact_features(metric, to_distance):
    # unit rows with entries 0 / +-0.5: distances are exact in fp32, so the kNN graph
    # built from distances is exactly the one built from features
    rng = np.random.default_rng(0)
    qf, gf = (
        torch.from_numpy(four_halves_vectors(rng, 15)),
        torch.from_numpy(four_halves_vectors(rng, 90)),
    )
    distance = torchreid_module("metrics").compute_distance_matrix
    # as the engine passes them: distmat as numpy, distmat_qq / distmat_gg as tensors
    dist = re_ranking(
        distance(qf, gf, metric).numpy(),
        distance(qf, qf, metric),
        distance(gf, gf, metric),
        metric=metric,
        **GNN,
    )
    assert isinstance(dist, np.ndarray) and dist.dtype == np.float32
    assert_same_ranking(-dist, -to_distance(gnn_rerank(qf, gf, **GNN).numpy()), atol=1e-5)


def test_drop_in_on_engine_features_is_the_similarity_pipeline(engine_setup):
    _, _, (qf, gf, *labels) = engine_setup
    matrices = engine_distance_matrices(qf, gf)
    dist = re_ranking(*matrices, **GNN)
    similarities = [1 - m / 2 for m in matrices]
    np.testing.assert_allclose(
        dist, 2 - 2 * gnn_rerank_similarities(*similarities, **GNN), atol=1e-5
    )


SIGN_DIMENSIONS = 64  # a power of 4: normalised sign rows hold +-1/8, exactly


def sign_features(features, center, projection):
    """``[n, 64]`` float32 rows of +-1: the signs of the centred features projected onto
    fixed directions. L2-normalised they hold +-1/8, so their dot products (multiples of
    1/64) and torchreid's squared distances are exact in fp32."""
    projected = (features - center) @ projection
    return torch.where(projected >= 0, 1.0, -1.0)


class SignFeatures(torch.nn.Module):
    """The engine's model with :func:`sign_features` on its output."""

    def __init__(self, model, center, projection):
        super().__init__()
        self.model, self.center, self.projection = model, center, projection

    def forward(self, images):
        return sign_features(self.model(images), self.center, self.projection)


def test_engine_equals_evaluate_on_features_whose_distances_are_exact(engine_setup):
    engine, loaders, (qf, gf, *labels) = engine_setup
    center = torch.cat([qf, gf]).mean(dim=0)
    generator = torch.Generator().manual_seed(0)
    projection = torch.randn(qf.shape[1], SIGN_DIMENSIONS, generator=generator)
    model = engine.model
    engine.model = SignFeatures(model, center, projection)
    try:
        with use_gnn_reranking(**GNN):
            rank1, mAP = engine_evaluate(engine, loaders, rerank=True)
        _, plain_map = engine_evaluate(engine, loaders, rerank=False)
    finally:
        engine.model = model
    signs = [torch.nn.functional.normalize(sign_features(f, center, projection)) for f in (qf, gf)]
    distances = 2 - 2 * gnn_rerank(*signs, **GNN).numpy()  # euclidean scale, as the engine's
    # coarse features tie many final distances, which torchreid's evaluate_rank orders by
    # its own (unstable) argsort: its metrics of the features' re-ranked distances
    cmc, features_map = torchreid_module("metrics").evaluate_rank(distances, *labels)
    assert mAP == pytest.approx(features_map, abs=1e-6)
    assert rank1 == pytest.approx(cmc[0], abs=1e-6)
    assert abs(mAP - plain_map) > 1e-3, "re-ranking did not change the ranking"


def test_unnormalised_features_warn_once(engine_setup):
    _, _, (qf, gf, *_) = engine_setup
    distance = torchreid_module("metrics").compute_distance_matrix
    qf, gf = 10 * qf, 10 * gf  # features far from unit norm
    raw = [distance(a, b).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf))]
    assert max(m.max() for m in raw) > 4
    import triton_rerank.integrations.torchreid as adapter

    adapter._warned_unnormalised = False
    with pytest.warns(UnnormalisedFeaturesWarning, match="not L2-normalised"):
        re_ranking(*raw, **GNN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        re_ranking(*raw, **GNN)  # second time: silent


def test_enable_disable_and_errors():
    engine_module = torchreid_module("engine.engine")
    original = engine_module.re_ranking
    enable_gnn_reranking(k1=10)
    try:
        with pytest.raises(RuntimeError, match="already enabled"):
            enable_gnn_reranking()
    finally:
        disable_gnn_reranking()
    assert engine_module.re_ranking is original
    disable_gnn_reranking()  # no-op
    with pytest.raises(ValueError, match=r"metric must be one of \('euclidean', 'cosine'\)"):
        re_ranking(np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((3, 3)), metric="l1")
    with pytest.raises(ValueError, match=r"g_g must have shape \[3, 3\] to match q_g \[2, 3\]"):
        re_ranking(np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"rerank must be one of"):
        evaluate(
            np.ones((2, 4)), np.ones((3, 4)), [0, 1], [0, 1, 1], [0, 0], [1, 1, 1], rerank="kr"
        )


def test_module_paths_resolve():
    assert re.match(r"torchreid(\.reid)?\.metrics$", torchreid_module("metrics").__name__)
    with pytest.raises(ImportError, match="no module 'not_a_module'"):
        torchreid_module("not_a_module")


def exact_split(n_query=15, n_gallery=90):
    """Exact unit features and labels: 6 identities, query cameras 0, gallery cameras 1."""
    rng = np.random.default_rng(3)
    qf = torch.from_numpy(four_halves_vectors(rng, n_query))
    gf = torch.from_numpy(four_halves_vectors(rng, n_gallery))
    labels = dict(
        q_pids=np.arange(n_query) % 6,
        g_pids=np.arange(n_gallery) % 6,
        q_camids=np.zeros(n_query, np.int64),
        g_camids=np.ones(n_gallery, np.int64),
    )
    return qf, gf, labels


BAD_EVALUATE_LABELS = [
    # (replaced labels, exception, message pattern)
    (
        dict(q_pids=np.zeros(14)),
        ValueError,
        r"q_pids must have shape \[15\] to match qf \[15, 16\], got \(14,\)",
    ),
    (
        dict(g_camids=np.ones(91)),
        ValueError,
        r"g_camids must have shape \[90\] to match gf \[90, 16\], got \(91,\)",
    ),
    (dict(g_pids=np.ones((2, 45))), ValueError, r"g_pids must have shape \[90\]"),
    (
        dict(q_camids=np.r_[np.nan, np.zeros(14)]),
        ValueError,
        r"q_camids contains nan at position 0",
    ),
    (
        dict(g_pids=np.r_[np.zeros(89), 2.5]),
        ValueError,
        r"g_pids must hold integer-valued labels, got 2.5 at position 89",
    ),
    (dict(q_pids=np.arange(15).astype(str)), TypeError, r"q_pids holds strings and g_pids numbers"),
]


@pytest.mark.parametrize(
    "changes, exception, pattern",
    BAD_EVALUATE_LABELS,
    ids=[
        "short-q_pids",
        "long-g_camids",
        "2-d-g_pids",
        "nan-q_camids",
        "non-integer-g_pids",
        "strings-with-numbers",
    ],
)
def test_evaluate_checks_every_label_before_re_ranking(changes, exception, pattern):
    qf, gf, labels = exact_split()
    qf[3, 0] = float("nan")  # the re-ranking would fail on this row: the labels fail first
    with pytest.raises(exception, match=pattern):
        evaluate(qf, gf, **{**labels, **changes}, rerank="gnn", **GNN)
    with pytest.raises(ValueError, match=r"query contains NaN"):  # with good labels
        evaluate(qf, gf, **labels, rerank="gnn", **GNN)


def test_evaluate_needs_2d_features():
    qf, gf, labels = exact_split()
    with pytest.raises(ValueError, match=r"qf must be 2-D \[n, d\], got shape \[16\]"):
        evaluate(qf[0], gf, **labels)


@pytest.mark.parametrize("rerank", ["gnn", "none"])
def test_evaluate_takes_bfloat16_features_and_tensors_that_require_grad(rerank):
    qf, gf, labels = exact_split()  # exact in bfloat16
    expected = evaluate(qf, gf, **labels, rerank=rerank, **GNN)
    cmc, mAP = evaluate(qf.bfloat16(), gf.bfloat16(), **labels, rerank=rerank, **GNN)
    np.testing.assert_array_equal(cmc, expected[0])
    assert mAP == expected[1]
    linear = torch.nn.Linear(16, 16)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(16))
        linear.bias.zero_()
    model_qf, model_gf = linear(qf), linear(gf)  # model outputs without torch.no_grad()
    assert model_qf.requires_grad
    for features in ((model_qf, model_gf), (torch.nn.Parameter(qf), gf)):
        cmc, mAP = evaluate(*features, **labels, rerank=rerank, **GNN)
        np.testing.assert_array_equal(cmc, expected[0])
        assert mAP == expected[1]


@pytest.mark.slow
def test_files_that_use_torchreid_skip_without_it(tmp_path):
    """The torchreid tests skip, and the rest of test_metrics.py runs, where ``import
    torchreid`` fails as it does when torchreid is not installed (a ``torchreid`` module
    first on PYTHONPATH raising ModuleNotFoundError: subprocesses see it too)."""
    (tmp_path / "torchreid.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torchreid'\", name='torchreid')\n"
    )
    tests = Path(__file__).resolve().parent
    python_path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            str(tests / "test_torchreid.py"),
            str(tests / "test_metrics.py"),
            "-k",
            "not pku and not files_that_use_torchreid",
        ],
        cwd=tests.parent,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": python_path},
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:]
    assert "torchreid is not installed" in out  # test_torchreid.py, skipped as a module
    assert "the comparison needs the torchreid extra" in out  # test_metrics.py's comparisons
    assert re.search(r"\d+ passed", out) and " failed" not in out and " error" not in out
