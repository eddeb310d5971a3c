"""torchreid integration, against a real (tiny) torchreid setup: no mocks.

A custom image dataset of real images (sklearn digits, upscaled) is written to a
temporary folder and registered with torchreid; a small torchreid model with random
weights extracts features; torchreid's own ImageSoftmaxEngine evaluates.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from compare import assert_same_ranking, four_halves_vectors
from triton_rerank.integrations.torchreid import (
    UnnormalisedFeaturesWarning,
    disable_gnn_reranking,
    enable_gnn_reranking,
    evaluate,
    re_ranking,
    torchreid_module,
    use_gnn_reranking,
)

from triton_rerank import gnn_rerank
from triton_rerank.metrics import evaluate as evaluate_scores
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
    pytest.importorskip("torchreid", reason="install the torchreid extra")
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
        root=str(root), sources=DATASET, height=64, width=32, transforms=None,
        batch_size_train=16, batch_size_test=64, workers=0, use_gpu=False)
    torch.manual_seed(0)
    models = torchreid_module("models")
    model = models.build_model("osnet_x0_25", num_classes=manager.num_train_pids,
                               pretrained=False, use_gpu=False)
    optimizer = torchreid_module("optim").build_optimizer(model, optim="sgd", lr=0.01)
    engine = torchreid_module("engine").ImageSoftmaxEngine(manager, model, optimizer,
                                                           use_gpu=False)
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
    return engine._evaluate(dataset_name=DATASET, query_loader=loaders["query"],
                            gallery_loader=loaders["gallery"], normalize_feature=True,
                            rerank=rerank)


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

    cmc, expected_map = evaluate(*features, rerank="gnn", **GNN)
    assert mAP == pytest.approx(expected_map, abs=1e-6)
    assert rank1 == pytest.approx(cmc[0], abs=1e-6) and reported_rank1 == rank1
    assert f"mAP: {expected_map:.1%}" in printed
    assert abs(mAP - plain_map) > 1e-3, "re-ranking did not change the ranking"
    _, none_map = evaluate(*features, rerank="none")
    assert none_map == pytest.approx(plain_map, abs=1e-6)


def test_k_reciprocal_mode_matches_torchreids_own_rerank(engine_setup):
    engine, loaders, features = engine_setup
    _, engine_map = engine_evaluate(engine, loaders, rerank=True)  # torchreid's own
    _, ours = evaluate(*features, rerank="k-reciprocal")
    assert ours == pytest.approx(engine_map, abs=1e-6)


@pytest.mark.parametrize("metric, to_distance", [("euclidean", lambda s: 2 - 2 * s),
                                                  ("cosine", lambda s: 1 - s)])
def test_drop_in_equals_gnn_rerank_on_exact_features(metric, to_distance):
    # unit rows with entries 0 / +-0.5: distances are exact in fp32, so the kNN graph
    # built from distances is exactly the one built from features
    rng = np.random.default_rng(0)
    qf, gf = torch.from_numpy(four_halves_vectors(rng, 15)), torch.from_numpy(
        four_halves_vectors(rng, 90))
    distance = torchreid_module("metrics").compute_distance_matrix
    # as the engine passes them: distmat as numpy, distmat_qq / distmat_gg as tensors
    dist = re_ranking(distance(qf, gf, metric).numpy(), distance(qf, qf, metric),
                      distance(gf, gf, metric), metric=metric, **GNN)
    assert isinstance(dist, np.ndarray) and dist.dtype == np.float32
    assert_same_ranking(-dist, -to_distance(gnn_rerank(qf, gf, **GNN).numpy()), atol=1e-5)


def test_drop_in_on_engine_features_is_the_similarity_pipeline(engine_setup):
    _, _, (qf, gf, *labels) = engine_setup
    qn = torch.nn.functional.normalize(qf, dim=1)
    gn = torch.nn.functional.normalize(gf, dim=1)
    distance = torchreid_module("metrics").compute_distance_matrix
    matrices = [distance(a, b).numpy() for a, b in ((qn, gn), (qn, qn), (gn, gn))]
    dist = re_ranking(*matrices, **GNN)
    similarities = [1 - m / 2 for m in matrices]
    np.testing.assert_allclose(dist, 2 - 2 * gnn_rerank_similarities(*similarities, **GNN),
                               atol=1e-5)
    # from features instead of rounded distances: the same accuracy
    _, features_map = evaluate(qf, gf, *labels, rerank="gnn", **GNN)
    assert evaluate_scores(-dist, *labels).mAP == pytest.approx(features_map, abs=1e-6)


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
        evaluate(np.ones((2, 4)), np.ones((3, 4)), [0, 1], [0, 1, 1], [0, 0], [1, 1, 1],
                 rerank="kr")


def test_module_paths_resolve():
    assert re.match(r"torchreid(\.reid)?\.metrics$", torchreid_module("metrics").__name__)
    with pytest.raises(ImportError, match="no module 'not_a_module'"):
        torchreid_module("not_a_module")
