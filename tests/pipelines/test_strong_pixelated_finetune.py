"""EWC fine-tuning of the pixelated RIM (Adam et al. §2.5, App. A, Table 3): Fisher diagonal
against a manual per-sample computation, the prior's effect, early stopping, no side effects on
the trained network, reproducibility, bad input. Tiny untrained networks (32², T = 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lensml.nets.rim_pixelated
import lensml.nets.vae  # noqa: F401  (register the presets)
from lensml.physics.pixelated_lensing import gaussian_psf_kernels
from lensml.pipelines.strong_pixelated_finetune import (
    FineTuneConfig,
    draw_fisher_samples,
    ewc_penalty,
    finetune,
    finetune_many,
    fisher_diagonal,
    fisher_from_samples,
)
from lensml.pipelines.strong_pixelated_metrics import reduced_chi2
from lensml.train import build_network

N = 32
SIGMA = 0.05
RIM_CFG = {"n_image": N, "filters": [4, 8], "convs_per_level": 1, "steps": 2}
VAE_CFG = {"size": N, "levels": 2, "conv_per_level": 1, "latent_dim": 4, "filters": 4}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def nets():
    rim = build_network("rim-pixelated", RIM_CFG, seed=0)
    sv = build_network("vae-source", VAE_CFG, seed=1)
    kv = build_network("vae-kappa", VAE_CFG, seed=2)
    return rim, sv, kv


@pytest.fixture(scope="module")
def task(nets):
    """One observation simulated from VAE draws, with a Gaussian PSF."""
    rim, sv, kv = nets
    g = torch.Generator().manual_seed(3)
    z = torch.zeros(1, 4)
    s = sv.sample_near(z, 1.0, 1, g)
    k = kv.sample_near(z, 1.0, 1, g)
    psf = gaussian_psf_kernels(torch.tensor([0.25]), rim.lens.pixel_scale)
    y = rim.lens.simulate(s, k, psf, SIGMA, g)
    return y, psf, s, k


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_delta(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_fisher_is_mean_squared_per_sample_gradient(nets, task):
    _, sv, kv = nets
    rim64 = build_network("rim-pixelated", RIM_CFG, seed=0).double()
    y, psf, _, _ = task
    with torch.no_grad():
        base = rim64(y.double(), SIGMA, psf.double())
    cfg = FineTuneConfig(n_samples=2, fisher_batch_size=1)
    fisher = fisher_diagonal(
        rim64, sv, kv, base["source"], base["kappa"], psf, SIGMA, cfg,
        torch.Generator().manual_seed(7),
    )  # fmt: skip
    names = [n for n, p in rim64.named_parameters() if p.requires_grad]
    assert list(fisher) == names
    for n, p in rim64.named_parameters():
        assert fisher[n].shape == p.shape
        assert torch.isfinite(fisher[n]).all() and (fisher[n] >= 0).all()
    assert sum(float(f.sum()) for f in fisher.values()) > 0

    # manual: same draws, then backward() per sample on −L + (1/T) Σ_t log p / ν
    srcs, kaps, ys = draw_fisher_samples(
        rim64, sv, kv, base["source"], base["kappa"], psf, SIGMA, cfg,
        torch.Generator().manual_seed(7),
    )  # fmt: skip
    assert srcs.shape == kaps.shape == ys.shape == (2, 1, N, N)
    noise = (ys - rim64.lens.forward(srcs, kaps, psf.double())) / SIGMA
    assert abs(float(noise.std()) - 1) < 0.05 and abs(float(noise.mean())) < 0.05
    for l2 in (0.0, 0.3):
        manual = {n: torch.zeros_like(p) for n, p in rim64.named_parameters()}
        for i in range(2):
            rim64.zero_grad(set_to_none=True)
            s_t, xi_t = rim64.unroll(ys[i : i + 1], SIGMA, psf.double())
            loss = rim64.per_example_loss(s_t, xi_t, srcs[i : i + 1], kaps[i : i + 1])
            ll = sum(
                rim64.lens.log_likelihood(ys[i : i + 1], a, 10**b, SIGMA, psf.double())
                for a, b in zip(s_t, xi_t, strict=True)
            ) / (len(s_t) * N * N)
            obj = (ll - loss).sum() - 0.5 * l2 * sum(p.square().sum() for p in rim64.parameters())
            obj.backward()
            for n, p in rim64.named_parameters():
                manual[n] += p.grad.square() / 2
        rim64.zero_grad(set_to_none=True)
        got = fisher_from_samples(rim64, srcs, kaps, ys, SIGMA, psf, l2=l2)
        if l2 == 0.0:
            for n in names:
                torch.testing.assert_close(fisher[n], got[n], rtol=1e-12, atol=0)
        for n in names:
            torch.testing.assert_close(got[n], manual[n], rtol=1e-9, atol=1e-300)


def test_strong_prior_keeps_weights_while_no_prior_fits_the_data(nets, task):
    rim, sv, kv = nets
    y, psf, _, _ = task
    phi_star = _state(rim)
    lr, steps = 1e-3, 20
    common = {"learning_rate": lr, "max_steps": steps, "n_samples": 2, "keep": "last"}
    free = finetune(rim, y, SIGMA, psf, sv, kv, FineTuneConfig(ewc_lambda=0.0, **common),
                    torch.Generator().manual_seed(1))  # fmt: skip
    tied = finetune(rim, y, SIGMA, psf, sv, kv, FineTuneConfig(ewc_lambda=1e12, **common),
                    torch.Generator().manual_seed(1))  # fmt: skip
    # λ = 0: the objective is the likelihood alone and χ²_ν falls substantially
    h = free.chi2_history
    assert free.steps == steps and len(h) == steps + 1
    assert h[-1] < 0.5 * h[0] and min(h) < 0.3 * h[0]
    assert free.chi2_baseline == pytest.approx(h[0])
    assert free.penalty_history == [0.0] * (steps + 1)
    d_free = _max_delta(_state(free.model), phi_star)
    # λ huge: RMSProp's first step (|Δφ| ≤ lr/√(1−ρ) ≈ 3.16 lr, the prior's gradient is 0 at
    # φ*) is pulled straight back; the weights never leave that neighbourhood
    d_tied = _max_delta(_state(tied.model), phi_star)
    assert d_tied <= lr / math.sqrt(1 - 0.9) * 1.001
    assert d_free > 5 * d_tied
    assert tied.chi2_finetuned == pytest.approx(tied.chi2_history[-1])
    # the penalty recorded is the EWC term of the current state
    assert tied.penalty_history[0] == 0.0 and max(tied.penalty_history) > 0
    # the original network is untouched and has no gradients attached
    assert _max_delta(_state(rim), phi_star) == 0.0
    assert all(p.grad is None for p in rim.parameters())


def test_early_stopping_and_kept_state(nets, task):
    rim, sv, kv = nets
    y, psf, _, _ = task
    # target above the baseline χ²_ν: nothing to do (no Fisher, 0 steps)
    res = finetune(rim, y, SIGMA, psf, sv, kv, FineTuneConfig(target_chi2=1e9), None)
    assert res.steps == 0 and res.reached_target and res.fisher_seconds == 0.0
    assert res.chi2_finetuned == res.chi2_baseline
    assert torch.equal(res.source_finetuned, res.source_baseline)
    # the baseline χ²_ν is the metric module's reduced χ² of F(x̂_T)
    model = rim.lens.forward(res.source_baseline, res.kappa_baseline, psf)
    assert res.chi2_baseline == pytest.approx(float(reduced_chi2(y, model, SIGMA)), rel=1e-5)
    # a target reached mid-run stops there
    target = 0.5 * res.chi2_baseline
    cfg = FineTuneConfig(learning_rate=1e-3, max_steps=50, ewc_lambda=0.0, target_chi2=target,
                         n_samples=1)  # fmt: skip
    res = finetune(rim, y, SIGMA, psf, sv, kv, cfg, torch.Generator().manual_seed(0))
    h = res.chi2_history
    assert res.reached_target and 0 < res.steps < 50 and len(h) == res.steps + 1
    assert h[-1] <= target and all(c > target for c in h[:-1])
    assert res.kept_step == res.steps and res.chi2_finetuned == h[-1]
    # keep="best" returns the lowest χ²_ν state, and its maps reproduce that χ²_ν
    cfg = FineTuneConfig(learning_rate=1e-2, max_steps=8, ewc_lambda=0.0, n_samples=1)
    res = finetune(rim, y, SIGMA, psf, sv, kv, cfg, torch.Generator().manual_seed(0))
    assert res.chi2_finetuned == min(res.chi2_history) <= res.chi2_baseline
    assert res.chi2_history[res.kept_step] == res.chi2_finetuned
    with torch.no_grad():
        out = res.model(y, SIGMA, psf)
    torch.testing.assert_close(out["source"], res.source_finetuned)
    chi = float(rim.lens.reduced_chi2(y, res.source_finetuned, res.kappa_finetuned, SIGMA, psf))
    assert chi == pytest.approx(res.chi2_finetuned, rel=1e-5)
    # the T steps feed the eq.-7 loss for Table 4
    s_true, k_true = task[2], task[3]
    loss = rim.per_example_loss(*res.finetuned_steps, s_true, k_true)
    assert loss.shape == (1,) and torch.isfinite(loss).all()


def test_reproducible_with_seed(nets, task):
    rim, sv, kv = nets
    y, psf, _, _ = task
    cfg = FineTuneConfig(learning_rate=1e-4, max_steps=3, n_samples=3, fisher_batch_size=2)
    a = finetune(rim, y, SIGMA, psf, sv, kv, cfg, torch.Generator().manual_seed(5))
    b = finetune(rim, y, SIGMA, psf, sv, kv, cfg, torch.Generator().manual_seed(5))
    c = finetune(rim, y, SIGMA, psf, sv, kv, cfg, torch.Generator().manual_seed(6))
    assert a.chi2_history == b.chi2_history and a.penalty_history == b.penalty_history
    assert torch.equal(a.source_finetuned, b.source_finetuned)
    assert torch.equal(a.kappa_finetuned, b.kappa_finetuned)
    assert a.penalty_history != c.penalty_history  # another Fisher sample
    # a given Fisher replaces the sampling and reproduces the run
    base = finetune(rim, y, SIGMA, psf, sv, kv, FineTuneConfig(target_chi2=1e9))
    f = fisher_diagonal(rim, sv, kv, base.source_baseline, base.kappa_baseline, psf, SIGMA, cfg,
                        torch.Generator().manual_seed(5))  # fmt: skip
    d = finetune(rim, y, SIGMA, psf, sv, kv, cfg, None, fisher=f)
    assert d.chi2_history == a.chi2_history
    summary = a.summary()
    assert summary["steps"] == 3 and len(summary["chi2_history"]) == 4


def test_finetune_many_and_ewc_penalty(nets, task):
    rim, sv, kv = nets
    y, psf, _, _ = task
    ys = torch.cat([y, y.flip(-1)])
    cfg = FineTuneConfig(learning_rate=1e-4, max_steps=2, n_samples=1)
    seen = []
    sigmas = torch.tensor([SIGMA, 2 * SIGMA])
    g = torch.Generator().manual_seed(0)
    out = finetune_many(rim, ys, sigmas, psf, sv, kv, cfg, g, progress=lambda i, r: seen.append(i))
    assert len(out) == 2 and seen == [0, 1] and all(r.model is None for r in out)
    for i, r in enumerate(out):
        chi = rim.lens.reduced_chi2(ys[i : i + 1], r.source_baseline, r.kappa_baseline,
                                    SIGMA * (1 + i), psf)  # fmt: skip
        assert r.chi2_baseline == pytest.approx(float(chi), rel=1e-5)
    # (λ/2) Σ F (φ − φ*)² by hand
    anchor = {n: p.detach().clone() for n, p in rim.named_parameters()}
    fisher = {n: torch.full_like(p, 2.0) for n, p in rim.named_parameters()}
    shifted = {n: a + 0.1 for n, a in anchor.items()}
    n_par = sum(p.numel() for p in rim.parameters())
    assert float(ewc_penalty(rim, shifted, fisher, 3.0).detach()) == pytest.approx(
        0.5 * 3.0 * 2.0 * 0.01 * n_par, rel=1e-4
    )


def test_bad_input(nets, task):
    rim, sv, kv = nets
    y, psf, _, _ = task
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="one observation"):
        finetune(rim, torch.cat([y, y]), SIGMA, psf, sv, kv, FineTuneConfig(), g)
    with pytest.raises(ValueError, match="sigma"):
        finetune(rim, y, -1.0, psf, sv, kv, FineTuneConfig(), g)
    for field, value in (("learning_rate", 0.0), ("max_steps", -1), ("ewc_lambda", -1.0),
                         ("n_samples", 0), ("keep", "first"), ("target_chi2", 0.0),
                         ("rmsprop_alpha", 1.0), ("loglike_per_pixel", 1)):  # fmt: skip
        with pytest.raises(ValueError, match=field):
            FineTuneConfig(**{field: value})
    small = build_network("vae-source", {**VAE_CFG, "size": 16}, seed=0)
    base = torch.rand(1, 1, N, N, generator=g)
    with pytest.raises(ValueError, match=r"source_vae\.size"):
        fisher_diagonal(rim, small, kv, base, base + 0.1, psf, SIGMA, FineTuneConfig(), g)
    with pytest.raises(ValueError, match="generator"):
        finetune(rim, y, SIGMA, psf, sv, kv, FineTuneConfig(max_steps=1), None)
    with pytest.raises(ValueError, match="fisher lacks"):
        finetune(rim, y, SIGMA, psf, sv, kv, FineTuneConfig(max_steps=1), None, fisher={})
    with pytest.raises(ValueError, match="config"):
        finetune(rim, y, SIGMA, psf, sv, kv, {"max_steps": 1}, g)
    assert np.isfinite(FineTuneConfig().as_dict()["ewc_lambda"])
