"""Tests of the ``lens-fit`` baseline (batched SIE + shear + Sérsic lens fit).

Systems are rendered with :mod:`lensml.physics` (the fused SIE + shear + Sérsic renderer and
``render_lensed`` for the lens light) at the fit's supersampling, with known parameters; noise
is Gaussian with a known σ drawn from a seeded ``torch.Generator``. Images are 40 × 40 at
0.06″ (2.4″ field) to keep the suite fast.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from lensml.baselines.lens_fit import (
    INIT_LABELS,
    LensFit,
    _amplitudes,
    _Bounds,
    moment_estimates,
    render_source,
)
from lensml.physics.fused import render_sie_shear_sersic
from lensml.physics.grids import PixelGrid
from lensml.physics.light import sersic
from lensml.physics.psf import gaussian_psf
from lensml.physics.raytrace import render_lensed
from lensml.registry import BASELINES

F64 = torch.float64
PS = 0.06
SIZE = 40
K = 2


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _truth(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=g, dtype=F64)

    t = {
        "theta_e": u(0.6, 0.8),
        "q": u(0.6, 0.85),
        "phi": u(-1.4, 1.4),
        "x0": u(-0.03, 0.03),
        "y0": u(-0.03, 0.03),
        "gamma": u(0.03, 0.08),
        "gamma_phi": u(-1.4, 1.4),
        "src_amp": u(5.0, 10.0),
        "src_r": u(0.1, 0.2),
        "src_n": u(0.8, 2.0),
        "src_q": u(0.5, 0.9),
        "src_phi": u(-1.4, 1.4),
        "src_x": u(-0.1, 0.1),
        "src_y": u(-0.1, 0.1),
        "light_amp": u(2.0, 4.0),
        "light_r": u(0.3, 0.5),
        "light_n": u(3.0, 4.5),
    }
    return t


def _render(t: dict, light: bool, psf: torch.Tensor) -> torch.Tensor:
    grid = PixelGrid.square(SIZE, PS)
    lens = {k: t[k] for k in ("theta_e", "q", "phi", "x0", "y0")}
    shear = {
        "gamma1": t["gamma"] * torch.cos(2 * t["gamma_phi"]),
        "gamma2": t["gamma"] * torch.sin(2 * t["gamma_phi"]),
    }
    src = {
        "amp": t["src_amp"],
        "r_eff": t["src_r"],
        "n": t["src_n"],
        "q": t["src_q"],
        "phi": t["src_phi"],
        "x0": t["src_x"],
        "y0": t["src_y"],
    }
    image = render_sie_shear_sersic(grid, lens, shear, src, K, psf, compile=False, dtype=F64)
    if light:
        ll = {
            "amp": t["light_amp"],
            "r_eff": t["light_r"],
            "n": t["light_n"],
            "q": t["q"],
            "phi": t["phi"],
            "x0": t["x0"],
            "y0": t["y0"],
        }
        sb = functools.partial(sersic.surface_brightness, **ll)
        image = image + render_lensed(grid, None, sb, K, psf, dtype=F64)
    return image


def _psf() -> torch.Tensor:
    return gaussian_psf(0.12, 9, PS, dtype=F64)


def _init_table(t: dict, perturb: bool) -> torch.Tensor:
    cols = [t[k] for k in ("theta_e", "q", "phi", "x0", "y0", "gamma", "gamma_phi")]
    table = torch.stack(cols, -1).clone()
    if perturb:  # θ_E +8%, q +0.08, φ +0.15 rad, centre +0.03″, γ −0.02, γ_φ −0.2 rad
        table += torch.tensor([0.0, 0.08, 0.15, 0.03, -0.03, -0.02, -0.2], dtype=F64)
        table[:, 0] *= 1.08
    return table


def _angle_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a − b| modulo π (position angles)."""
    d = torch.remainder(a - b + math.pi / 2, math.pi) - math.pi / 2
    return d.abs()


def _fast(**kw) -> LensFit:
    base = {"pixel_scale": PS, "supersample": K, "adam_steps": 60, "lm_max_iter": 25}
    base.update(kw)
    return LensFit(**base)


def test_registered():
    assert BASELINES.get("lens-fit") is LensFit
    assert INIT_LABELS == ("b", "q", "phi", "x0", "y0", "gamma", "gamma_phi")


def test_noiseless_recovery_from_perturbed_start_float64():
    t = _truth(2, seed=3)
    psf = _psf()
    image = _render(t, light=False, psf=psf)
    sigma = torch.full_like(image, 0.01 * float(image.max()))
    fit = _fast(lens_light=False, dtype="float64", moment_starts=False)
    res = fit(image, sigma, psf, init=_init_table(t, perturb=True))
    p = res.params
    # measured: θ_E to ~1e-6, q, φ, γ to ~1e-5 (the χ² minimum is the truth)
    assert torch.all((p["theta_e"] / t["theta_e"] - 1).abs() < 1e-3)
    assert torch.all((p["q"] - t["q"]).abs() < 2e-3)
    assert torch.all(_angle_diff(p["phi"], t["phi"]) < 5e-3)
    assert torch.all((p["gamma"] - t["gamma"]).abs() < 1e-3)
    assert torch.all(_angle_diff(p["gamma_phi"], t["gamma_phi"]) < 0.02)
    assert torch.all((p["source_r_eff"] / t["src_r"] - 1).abs() < 1e-2)
    assert torch.all((p["source_n"] - t["src_n"]).abs() < 2e-2)
    assert torch.all((p["source_amp"] / t["src_amp"] - 1).abs() < 2e-2)
    assert torch.all(res.reduced_chi2 < 1e-4)
    assert bool(res.converged.all())
    assert torch.allclose(res.model.to(F64), image, atol=1e-3 * float(image.max()))
    assert torch.all(torch.isnan(p["light_amp"]))
    assert res.labels.shape == (2, 7)
    assert res.time_per_system > 0


def test_noiseless_with_lens_light_from_moments_only():
    t = _truth(2, seed=5)
    psf = _psf()
    image = _render(t, light=True, psf=psf)
    sigma = torch.full_like(image, 0.01 * float(image.max()))
    res = _fast(adam_steps=120)(image, sigma, psf)
    p = res.params
    # from the moment starts alone (float32 model); measured θ_E error ~1e-6
    assert torch.all((p["theta_e"] / t["theta_e"] - 1).abs() < 1e-3)
    assert torch.all((p["q"] - t["q"]).abs() < 5e-3)
    assert torch.all((p["light_n"] - t["light_n"]).abs() < 0.05)
    assert torch.all((p["light_r_eff"] / t["light_r"] - 1).abs() < 1e-2)
    assert torch.all(res.reduced_chi2 < 1e-3)
    assert res.lens_light_model.shape == image.shape


def test_noisy_images_theta_e_and_reduced_chi2():
    t = _truth(3, seed=11)
    psf = _psf()
    clean = _render(t, light=True, psf=psf)
    sigma = torch.full_like(clean, 0.02 * float(clean.max()))
    g = torch.Generator().manual_seed(12)
    image = clean + sigma * torch.randn(clean.shape, generator=g, dtype=F64)
    mask = torch.zeros_like(image, dtype=torch.bool)
    mask[0, 0, :2, :3] = True  # masked pixels may hold NaN
    image[0, 0, 0, 0] = math.nan
    res = _fast(adam_steps=100)(image.float(), sigma.float(), psf.float(), mask=mask)
    te_err = (res.params["theta_e"] / t["theta_e"] - 1).abs()
    # measured: |Δθ_E|/θ_E <= 2e-3, reduced χ² 0.95–1.02 (dof ~ 1580, σ_χ²red 0.036)
    assert torch.all(te_err < 0.01), te_err
    assert torch.all((res.reduced_chi2 - 1).abs() < 0.1), res.reduced_chi2
    assert torch.all((res.params["gamma"] - t["gamma"]).abs() < 0.02)


def test_constant_background_is_fitted():
    t = _truth(1, seed=8)
    psf = _psf()
    image = _render(t, light=False, psf=psf) + 0.05
    sigma = torch.full_like(image, 0.01 * float(image.max()))
    fit = _fast(lens_light=False, dtype="float64", moment_starts=False, fit_background=True)
    res = fit(image, sigma, psf, init=_init_table(t, perturb=True))
    assert float(res.params["background"][0]) == pytest.approx(0.05, rel=1e-3)
    assert float(res.params["theta_e"][0]) == pytest.approx(float(t["theta_e"][0]), rel=1e-3)
    assert float(res.reduced_chi2[0]) < 1e-4


def test_batched_equals_looped():
    t = _truth(2, seed=7)
    psf = _psf()
    image = _render(t, light=False, psf=psf)
    sigma = torch.full_like(image, 0.01 * float(image.max()))
    init = _init_table(t, perturb=True)
    fit = _fast(lens_light=False, dtype="float64", moment_starts=False, adam_steps=30)
    both = fit(image, sigma, psf, init=init)
    for i in range(2):
        one = fit(image[i : i + 1], sigma[i : i + 1], psf, init=init[i : i + 1])
        for name in ("theta_e", "q", "phi", "gamma", "source_r_eff", "source_amp"):
            a, b = both.params[name][i], one.params[name][0]
            assert a == pytest.approx(float(b), rel=1e-6, abs=1e-9), name
        # χ² ~ 2e-6 (noiseless): equal to 1e-8 in units of σ²
        assert both.chi2[i] == pytest.approx(float(one.chi2[0]), rel=1e-6, abs=1e-8)


def test_source_rendering_units_and_grid():
    t = _truth(1, seed=2)
    params = {
        "source_amp": t["src_amp"],
        "source_r_eff": t["src_r"],
        "source_n": t["src_n"],
        "source_q": t["src_q"],
        "source_phi": t["src_phi"],
        "source_x": t["src_x"],
        "source_y": t["src_y"],
    }
    img = render_source(params, 64, 3.2, supersample=4, dtype=F64)
    assert img.shape == (1, 1, 64, 64)
    total = sersic.total_flux(t["src_amp"], t["src_r"], t["src_n"], t["src_q"])
    # flux per pixel sums to the analytic total (the grid covers > 10 R_eff)
    assert float(img.sum()) == pytest.approx(float(total), rel=2e-2)
    # centroid at the source centre (pixel (i, j) at (x_j, y_i), y up)
    grid = PixelGrid.square(64, 3.2 / 64)
    x, y = grid.coordinates(dtype=F64)
    assert float((img[0, 0] * x).sum() / img.sum()) == pytest.approx(float(t["src_x"]), abs=2e-3)
    assert float((img[0, 0] * y).sum() / img.sum()) == pytest.approx(float(t["src_y"]), abs=2e-3)
    with pytest.raises(ValueError, match="size"):
        render_source(params, 1, 3.2)
    with pytest.raises(ValueError, match="extent"):
        render_source(params, 8, -1.0)


def test_result_source_grid_default_is_image_field():
    t = _truth(1, seed=4)
    psf = _psf()
    image = _render(t, light=False, psf=psf)
    sigma = torch.full_like(image, 0.01 * float(image.max()))
    fit = _fast(lens_light=False, moment_starts=False, adam_steps=0, lm_max_iter=2)
    res = fit(image, sigma, psf, init=_init_table(t, perturb=False))
    assert res.source.shape == (1, 1, SIZE, SIZE)
    assert res.source_grid.pixel_scale == pytest.approx(PS)
    other = res.render_source(24, 1.2)
    assert other.shape == (1, 1, 24, 24)
    res2 = fit(
        image, sigma, psf, init=_init_table(t, perturb=False), source_size=16, source_extent=2.0
    )
    assert res2.source.shape == (1, 1, 16, 16)
    assert res2.source_grid.fov == pytest.approx((2.0, 2.0))


def test_bounded_map_round_trip():
    b = LensFit(pixel_scale=PS)._bounds(PixelGrid.square(SIZE, PS))
    assert isinstance(b, _Bounds) and b.n_params == 17
    g = torch.Generator().manual_seed(0)
    u = torch.randn(64, 17, generator=g, dtype=F64)
    u[:, 3:5] *= 0.05  # lens centre within ±0.3″ (tanh saturates beyond ~3 bounds)
    p = b.physical(u)
    assert torch.all((p["q"] > 0) & (p["q"] <= 1))
    assert torch.all(p["gamma1"] ** 2 + p["gamma2"] ** 2 < 0.3**2)
    assert torch.all((p["phi"] > -math.pi / 2) & (p["phi"] <= math.pi / 2))
    assert torch.allclose(b.unbounded(p), u, atol=1e-8)
    # gradients are finite at a round lens, zero shear and zero source ellipticity
    u0 = torch.zeros(1, 17, dtype=F64, requires_grad=True)
    total = sum(v.sum() for v in b.physical(u0).values())
    (grad,) = torch.autograd.grad(total, u0)
    assert torch.isfinite(grad).all()


def test_amplitudes_are_non_negative_least_squares():
    scipy_opt = pytest.importorskip("scipy.optimize")
    g = torch.Generator().manual_seed(1)
    t = torch.rand(5, 3, 50, generator=g, dtype=F64)
    truth = torch.tensor([[1.0, -0.5, 0.3]], dtype=F64)  # a negative lens light
    data = (truth.unsqueeze(-1) * t).sum(1) + 0.01 * torch.randn(5, 50, generator=g, dtype=F64)
    w = 1 + torch.rand(5, 50, generator=g, dtype=F64)
    a = _amplitudes(t, data, w, n_nonneg=2)
    assert torch.all(a[:, :2] >= 0)
    for i in range(5):
        # NNLS on the first two amplitudes with the third free: split it into ± parts
        sw = np.sqrt(w[i].numpy())
        mat = (t[i].numpy() * sw).T
        mat = np.concatenate([mat, -mat[:, 2:]], 1)
        ref, _ = scipy_opt.nnls(mat, data[i].numpy() * sw)
        np.testing.assert_allclose(a[i].numpy(), [ref[0], ref[1], ref[2] - ref[3]], atol=1e-8)


def test_moment_estimates_centre_and_theta_e():
    t = _truth(3, seed=9)
    psf = _psf()
    image = _render(t, light=True, psf=psf)
    sigma = torch.full_like(image, 0.01 * float(image.max()))
    m = moment_estimates(image, sigma, PS, lens_light=True)
    assert torch.all(torch.hypot(m["x0"] - t["x0"], m["y0"] - t["y0"]) < PS)
    # measured: within ~10% (arcs of an extended source straddle θ_E)
    assert torch.all((m["theta_e"] / t["theta_e"] - 1).abs() < 0.25), m["theta_e"]
    assert torch.all(m["light_r"] > 0)
    assert m["arc_weight"].shape == (3, SIZE, SIZE)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("sigma_shape", "'sigma' must have the image's shape"),
        ("nan", "'image' has NaN"),
        ("sigma_zero", "'sigma' must be finite and > 0"),
        ("psf_sum", "'psf' must be normalised"),
        ("psf_even", "'psf' must be"),
        ("image_rank", "'image' must be a floating"),
        ("init_shape", "'init' must be"),
        ("init_q", "'init' must be finite"),
        ("pixel_scale", "'pixel_scale'"),
        ("mask_all", "'mask' hides every pixel"),
    ],
)
def test_bad_inputs(change, match):
    image = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=F64)
    sigma = torch.ones_like(image)
    psf = gaussian_psf(0.12, 5, PS, dtype=F64)
    kw = {}
    if change == "sigma_shape":
        sigma = sigma[:, :, :15]
    elif change == "nan":
        image[1, 0, 3, 3] = math.nan
    elif change == "sigma_zero":
        sigma[0, 0, 2, 2] = 0.0
    elif change == "psf_sum":
        psf = psf * 1.1
    elif change == "psf_even":
        psf = torch.full((1, 1, 4, 4), 1 / 16, dtype=F64)
    elif change == "image_rank":
        image = image[:, 0]
    elif change == "init_shape":
        kw["init"] = torch.ones(2, 5, dtype=F64)
    elif change == "init_q":
        kw["init"] = torch.tensor([[1.0, 1.5, 0, 0, 0, 0, 0]] * 2, dtype=F64)
    elif change == "pixel_scale":
        kw["pixel_scale"] = -0.1
    elif change == "mask_all":
        kw["mask"] = torch.ones_like(image, dtype=torch.bool)
    with pytest.raises(ValueError, match=match):
        LensFit()(image, sigma, psf, **kw)
