"""Regression metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from lensml.metrics import bias, evaluate_columns, nmad, outlier_fraction, r2, rmse


def test_metric_values():
    t = np.array([0.0, 1.0, 2.0, 3.0])
    p = t + np.array([0.1, -0.1, 0.1, -0.1])
    assert bias(p, t) == pytest.approx(0.0, abs=1e-15)
    assert rmse(p, t) == pytest.approx(0.1)
    assert nmad(p, t) == pytest.approx(1.4826 * 0.1)
    assert r2(p, t) == pytest.approx(1 - 0.04 / 5.0)
    assert r2(t, t) == 1.0


def test_nmad_of_gaussian_is_sigma_and_outliers():
    rng = np.random.default_rng(1)
    t = np.zeros(200_000)
    p = rng.normal(0.0, 0.5, t.size)
    assert nmad(p, t) == pytest.approx(0.5, rel=0.01)
    # |Δ| > 3σ for a Gaussian: 0.27 %
    assert outlier_fraction(p, t) == pytest.approx(0.0027, abs=0.0005)


def test_evaluate_columns_and_bad_input():
    t = np.stack([np.arange(5.0), 2 * np.arange(5.0)], axis=1)
    out = evaluate_columns(t + 1.0, t, ["a", "b"], metrics=("bias", "rmse"))
    assert out == {"a": {"bias": 1.0, "rmse": 1.0}, "b": {"bias": 1.0, "rmse": 1.0}}
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        evaluate_columns(t, t, ["a", "b", "c"])
    with pytest.raises(ValueError, match="NaN or inf"):
        rmse(np.array([np.nan]), np.array([0.0]))
    with pytest.raises(ValueError, match="differ in length"):
        bias(np.zeros(2), np.zeros(3))
    with pytest.raises(KeyError, match="unknown metric 'nope'"):
        evaluate_columns(t, t, ["a", "b"], metrics=("nope",))
