"""Losses of the training engine (:func:`lensml.train.module.compute_loss`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lensml.train.config import LossConfig
from lensml.train.module import compute_loss


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn((6, 4), generator=g, dtype=torch.float64)
    mu = target + 0.01 * torch.randn((6, 4), generator=g, dtype=torch.float64)
    mu[0, 0] += 0.5  # one residual beyond δ
    logvar = 0.3 * torch.randn((6, 4), generator=g, dtype=torch.float64)
    return target, mu, logvar


def test_huber_nll_value_is_huber_over_delta_plus_nll():
    target, mu, logvar = _data()
    delta = 0.001
    pred = torch.cat([mu, logvar], dim=1)
    got = compute_loss(pred, target, "huber_nll", delta)
    a = (mu - target).float()
    huber = torch.where(a.abs() <= delta, 0.5 * a**2, delta * (a.abs() - 0.5 * delta)).mean()
    nll = (0.5 * (logvar + (target - mu) ** 2 * torch.exp(-logvar))).float().mean()
    assert float(got) == pytest.approx(float(huber / delta + nll), rel=1e-5)


def test_huber_nll_means_get_only_the_huber_gradient():
    target, mu, logvar = _data(1)
    delta = 0.001
    mu.requires_grad_(True)
    logvar.requires_grad_(True)
    compute_loss(torch.cat([mu, logvar], dim=1), target, "huber_nll", delta).backward()
    mu_ref = mu.detach().float().clone().requires_grad_(True)
    (F.huber_loss(mu_ref, target.float(), delta=delta) / delta).backward()
    torch.testing.assert_close(mu.grad.float(), mu_ref.grad)  # the NLL does not move the means
    lv_ref = logvar.detach().float().clone().requires_grad_(True)
    r2 = (target - mu.detach()).float() ** 2
    (0.5 * (lv_ref + r2 * torch.exp(-lv_ref))).mean().backward()
    torch.testing.assert_close(logvar.grad.float(), lv_ref.grad)
    # at the optimum σ² equals the squared residual: d/ds [s + r² e^{-s}] = 0 at s = ln r²
    s = torch.log(r2)
    grad = 0.5 * (1 - r2 * torch.exp(-s))
    assert float(grad.abs().max()) < 1e-6


def test_existing_losses_unchanged_and_shapes_checked():
    target, mu, logvar = _data(2)
    t, m = target.float(), mu.float()
    assert float(compute_loss(mu, target, "mse")) == pytest.approx(float(F.mse_loss(m, t)))
    assert float(compute_loss(mu, target, "huber", 0.1)) == pytest.approx(
        float(F.huber_loss(m, t, delta=0.1))
    )
    lv = logvar.float().clamp(-20, 20)
    ref = 0.5 * (lv + (t - m) ** 2 * torch.exp(-lv))
    got = compute_loss(torch.cat([mu, logvar], 1), target, "gaussian_nll")
    assert float(got) == pytest.approx(float(ref.mean()), rel=1e-6)
    with pytest.raises(ValueError, match=r"huber_nll.*means and log-variances"):
        compute_loss(mu, target, "huber_nll")
    assert LossConfig(name="HUBER_NLL", delta=0.001).name == "huber_nll"


def test_l1_value_and_it_fits_the_median_where_mse_fits_the_mean():
    """L1 is the mean absolute residual; minimising it over a constant gives the sample median
    of a skewed (log-normal) sample, MSE its mean: the reason ``l1`` makes a median-unbiased
    estimator."""
    target, mu, _ = _data(3)
    assert float(compute_loss(mu, target, "l1")) == pytest.approx(
        float(F.l1_loss(mu.float(), target.float()))
    )
    g = torch.Generator().manual_seed(4)
    y = torch.exp(0.6 * torch.randn((2001, 1), generator=g))  # mean 1.197, median ~1
    fitted = {}
    for name in ("l1", "mse"):
        c = torch.zeros(1, 1, requires_grad=True)
        opt = torch.optim.Adam([c], lr=0.02)
        for step in range(1500):
            for group in opt.param_groups:
                group["lr"] = 0.02 * (1 - step / 1500) + 1e-4
            opt.zero_grad()
            compute_loss(c.expand_as(y), y, name).backward()
            opt.step()
        fitted[name] = float(c.detach())
    assert fitted["l1"] == pytest.approx(float(y.median()), abs=5e-3)
    assert fitted["mse"] == pytest.approx(float(y.mean()), abs=5e-3)
    assert fitted["mse"] - fitted["l1"] > 0.1  # far apart for this skewed sample
    assert LossConfig(name="L1").name == "l1"
