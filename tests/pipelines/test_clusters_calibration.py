"""Median calibration of cluster CNN outputs (lensml.pipelines.clusters_calibration)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from lensml.data.runner import run_simulate
from lensml.pipelines.clusters import evaluate_clusters, predict_clusters, train_clusters
from lensml.pipelines.clusters_calibration import (
    CALIBRATION_FILE,
    MedianCalibration,
    _pav,
    calibrate_clusters,
    fit_median_map,
    load_median_calibration,
)


def _shrunk(seed: int, n: int):
    """Log-normal c and a mean-like estimate shrunk toward the prior, with noise: the estimate
    has a median bias (like an MSE network's) but carries information."""
    rng = np.random.default_rng(seed)
    c = np.exp(rng.normal(np.log(4.6), 0.25, n))
    pred = 4.9 + 0.4 * (c - 4.6) + rng.normal(0, 0.25, n)
    return pred, c


def test_pav_is_monotone_and_keeps_the_weighted_mean():
    y = np.array([1.0, 3.0, 2.0, 2.0, 5.0, 4.0])
    w = np.array([1.0, 1.0, 2.0, 1.0, 1.0, 3.0])
    out = _pav(y, w)
    assert np.all(np.diff(out) >= 0)
    assert np.sum(out * w) == pytest.approx(np.sum(y * w))
    np.testing.assert_allclose(out[1:4], [2.25, 2.25, 2.25])  # (3 + 4 + 2) / 4
    np.testing.assert_allclose(_pav(np.arange(5.0), np.ones(5)), np.arange(5.0))


def test_median_map_removes_the_median_bias_on_independent_data_and_keeps_the_ranking():
    pred, c = _shrunk(0, 6000)
    x, y = fit_median_map(pred, c, 20)
    assert np.all(np.diff(x) > 0) and np.all(np.diff(y) >= 0)
    cal = MedianCalibration(knots={"c_vir": (x, y)})
    test_pred, test_c = _shrunk(1, 20000)
    before = np.median(test_pred - test_c)
    after = cal.map_label("c_vir", test_pred)
    assert abs(before) > 0.2
    assert abs(np.median(after - test_c)) < 0.03
    # also in bins of the output: the map is the conditional median, not a global shift
    order = np.argsort(test_pred)
    for chunk in np.array_split(order, 5):
        assert abs(np.median(after[chunk] - test_c[chunk])) < 0.06
    assert spearmanr(after, test_c).statistic == pytest.approx(
        spearmanr(test_pred, test_c).statistic, abs=1e-3
    )


def test_map_extrapolates_with_slope_one_and_leaves_other_labels():
    cal = MedianCalibration(knots={"c_vir": ([1.0, 2.0], [1.5, 3.5])})
    np.testing.assert_allclose(cal.map_label("c_vir", np.array([0.0, 1.5, 3.0])), [0.5, 2.5, 4.5])
    pred = np.array([[14.2, 1.5, 2.0], [14.5, 3.0, 7.0]])
    out = cal.apply(pred, ["log10_mvir", "c_vir", "c_smooth"])
    np.testing.assert_allclose(out[:, 0], pred[:, 0])
    np.testing.assert_allclose(out[:, 2], pred[:, 2])
    np.testing.assert_allclose(out[:, 1], [2.5, 4.5])
    assert pred[0, 1] == 1.5  # the input is not modified


def test_bad_input():
    pred, c = _shrunk(2, 100)
    with pytest.raises(ValueError, match=r">= 20 clusters per bin: 100 finite pairs"):
        fit_median_map(pred, c, 20)
    with pytest.raises(ValueError, match="same length"):
        fit_median_map(pred, c[:50], 2)
    with pytest.raises(ValueError, match="n_bins must be an integer >= 2"):
        fit_median_map(pred, c, 1)
    with pytest.raises(ValueError, match="increasing in x"):
        MedianCalibration.from_json(
            {"kind": "median_calibration", "knots": {"c_vir": {"x": [2, 1], "y": [1, 2]}}}
        )
    with pytest.raises(ValueError, match="not a cluster median calibration"):
        MedianCalibration.from_json({"kind": "affine"})


@pytest.fixture(scope="module")
def model_and_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("clcal")
    cfg = {"size": 64, "pixel_scale": 16.0}
    run_simulate("clusters", 24, root / "train", 3, config=cfg, shard_size=24, progress=False)
    run_simulate("clusters", 60, root / "cal", 4, config=cfg, shard_size=30, progress=False)
    res = train_clusters(root / "train", "vgg-small", root / "run", epochs=1, batch_size=12,
                         device="cpu", progress=False)  # fmt: skip
    return root, res["model_dir"]


def test_calibrate_saves_and_evaluate_and_predict_apply_it(model_and_stores, tmp_path):
    root, model = model_and_stores
    out = calibrate_clusters(model, root / "cal", noise="euclid", seed=5, n_bins=3)
    assert out["path"].endswith(CALIBRATION_FILE)
    cal = load_median_calibration(model)
    assert set(cal.knots) == {"c_vir", "c_smooth"} and cal.source["n"] == 60
    assert abs(out["median_bias_after"]["c_vir"]) <= abs(out["median_bias_before"]["c_vir"])
    kw = {"noise": "euclid", "seed": 6, "include_fit": False, "plots": False,
          "print_table": False}  # fmt: skip
    raw = evaluate_clusters(root / "cal", [model], tmp_path / "raw", apply_calibration=False, **kw)
    done = evaluate_clusters(root / "cal", [model], tmp_path / "cal", **kw)
    assert raw["median_calibration"] == {"cnn:vgg-small": None}
    assert done["median_calibration"]["cnn:vgg-small"]["labels"] == ["c_vir", "c_smooth"]
    a = np.load(tmp_path / "raw" / "predictions_euclid.npz")
    b = np.load(tmp_path / "cal" / "predictions_euclid.npz")
    np.testing.assert_array_equal(a["cnn:vgg-small/log10_mvir"], b["cnn:vgg-small/log10_mvir"])
    np.testing.assert_allclose(
        b["cnn:vgg-small/c_vir"], cal.map_label("c_vir", a["cnn:vgg-small/c_vir"]), rtol=1e-12
    )
    pred = predict_clusters([root / "cal"], model, tmp_path / "cat.fits")
    assert pred["median_calibrated"] == ["c_vir", "c_smooth"]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / CALIBRATION_FILE).write_text(json.dumps({"kind": "median_calibration"}))
    with pytest.raises(ValueError, match=r"m/median_calibration.json: not a cluster median"):
        load_median_calibration(tmp_path / "m")
