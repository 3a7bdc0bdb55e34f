"""Tests of the ``shear`` generator (CNN shear paper §3): geometry and rendering against GalSim,
analytic moments, label and noise statistics, magnitude-radius matching, seeding, bad configs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from lensml.config import ConfigError
from lensml.sims import shear_galaxies as sg
from lensml.sims.shear import (
    AUX_NAMES,
    ShearGenerator,
    draw_mag_radius,
    instrument,
    shear_config,
)
from lensml.sims.shear_presets import COSMOS_FILES, cosmos_data_dir

galsim = pytest.importorskip("galsim")

GEN = ShearGenerator()
F64 = torch.float64

try:
    COSMOS = cosmos_data_dir()
except ValueError:  # pragma: no cover - the shared data are part of the project
    COSMOS = None
needs_cosmos = pytest.mark.skipif(COSMOS is None, reason="COSMOS example data not found")


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _own(n: int = 1, clumps: int = 0, **kw) -> dict[str, torch.Tensor]:
    """Own-galaxy structure dict (defaults: pure round-ish exponential disk, no clumps)."""
    base = dict(bt=0.0, n_b=4.0, q_b=0.8, phi_b=0.3, r_b=0.05, q_d=0.6, phi_d=0.4, r_d=0.3,
                clump_frac=0.0, n_clumps=float(clumps))  # fmt: skip
    base.update(kw)
    p = {k: torch.full((n,), float(v), dtype=F64) for k, v in base.items()}
    for key in ("clump_x", "clump_y", "clump_sigma", "clump_weight"):
        p[key] = torch.zeros(n, clumps, dtype=F64)
    return p


def _render(p, g1, g2, dx=0.0, dy=0.0, flux=1.0, size=32, scale=0.065, fwhm=0.121, over=2):
    n = len(p["bt"])
    t = [torch.full((n,), float(v), dtype=F64) for v in (flux, g1, g2, dx, dy)]
    psf = sg.RenderPSF({"kind": "gaussian", "fwhm": fwhm}, 3, over)
    return sg.render_own_galaxies(p, *t, size, scale, psf, dtype=F64)[:, 0].numpy()


def _galsim_own(p, i, g1, g2, dx=0.0, dy=0.0, flux=1.0, size=32, scale=0.065, fwhm=0.121):
    """The same own galaxy built from GalSim profiles and sheared with ``.shear``."""
    bt, fc = float(p["bt"][i]), float(p["clump_frac"][i])
    comps = [
        galsim.Exponential(half_light_radius=float(p["r_d"][i]), flux=flux * (1 - bt) * (1 - fc))
        .shear(q=float(p["q_d"][i]), beta=float(p["phi_d"][i]) * galsim.radians)
    ]  # fmt: skip
    if bt > 0:
        comps.append(
            galsim.Sersic(float(p["n_b"][i]), half_light_radius=float(p["r_b"][i]), flux=flux * bt)
            .shear(q=float(p["q_b"][i]), beta=float(p["phi_b"][i]) * galsim.radians)
        )  # fmt: skip
    for c in range(p["clump_x"].shape[1]):
        w = float(p["clump_weight"][i, c]) * flux * (1 - bt) * fc
        if w > 0:
            comps.append(
                galsim.Gaussian(sigma=float(p["clump_sigma"][i, c]), flux=w).shift(
                    float(p["clump_x"][i, c]), float(p["clump_y"][i, c])
                )
            )
    gal = galsim.Sum(comps).shear(g1=g1, g2=g2).shift(dx, dy)
    img = galsim.Convolve(gal, galsim.Gaussian(fwhm=fwhm)).drawImage(
        nx=size, ny=size, scale=scale, method="auto"
    )
    return img.array.astype(np.float64)


def _hsm_shape(image: np.ndarray) -> tuple[float, float, float]:
    res = galsim.hsm.FindAdaptiveMom(galsim.Image(np.ascontiguousarray(image), scale=0.065))
    return res.observed_shape.g1, res.observed_shape.g2, res.moments_sigma


# --------------------------------------------------------------------------- geometry


def test_shear_matrix_and_ellipse_algebra():
    g1, g2 = torch.tensor([0.15, -0.3, 0.0]), torch.tensor([-0.1, 0.2, 0.5])
    a, ainv = sg.shear_matrix(g1, g2), sg.inverse_shear_matrix(g1, g2)
    torch.testing.assert_close(a @ ainv, torch.eye(2, dtype=F64).expand(3, 2, 2))
    torch.testing.assert_close(torch.linalg.det(a), torch.ones(3, dtype=F64))
    # GalSim's own matrix
    for i in range(3):
        ref = galsim.Shear(g1=float(g1[i]), g2=float(g2[i])).getMatrix()
        np.testing.assert_allclose(a[i].numpy(), ref, atol=1e-12)
    # a round profile sheared by g has axis ratio (1 - |g|) / (1 + |g|) at angle arg(g) / 2
    r, q, phi = sg.shear_ellipse(0.5, 1.0, 0.0, g1, g2)
    gm = torch.sqrt(g1**2 + g2**2).to(F64)
    torch.testing.assert_close(q, (1 - gm) / (1 + gm))
    torch.testing.assert_close(r * q.sqrt(), torch.full((3,), 0.5, dtype=F64))
    expect = 0.5 * torch.atan2(g2.to(F64), g1.to(F64))
    torch.testing.assert_close(
        torch.remainder(phi - expect + 1, math.pi) - 1, torch.zeros(3, dtype=F64)
    )
    with pytest.raises(ValueError, match="g"):
        sg.shear_matrix(0.8, 0.7)


def test_shear_ellipse_matches_galsim_composition():
    """Shearing an elliptical profile: the resulting ellipse equals GalSim's (via moments)."""
    for q0, beta, g1, g2 in [
        (0.5, 0.3, 0.15, -0.1),
        (0.8, -1.2, -0.2, 0.18),
        (0.3, 2.0, 0.05, 0.0),
    ]:
        _, q, phi = sg.shear_ellipse(0.4 / math.sqrt(q0), q0, beta, g1, g2)
        prof = galsim.Gaussian(sigma=0.2).shear(q=q0, beta=beta * galsim.radians)
        prof = prof.shear(g1=g1, g2=g2)
        img = prof.drawImage(nx=96, ny=96, scale=0.02, method="no_pixel")
        s = galsim.hsm.FindAdaptiveMom(img).observed_shape  # adaptive = exact for a Gaussian
        e = galsim.Shear(q=float(q[0]), beta=float(phi[0]) * galsim.radians)
        assert abs(s.g1 - e.g1) < 2e-4 and abs(s.g2 - e.g2) < 2e-4


def _hlr_reference(bt: float, rb: float, nb: float, rd: float) -> float:
    """Independent half-light radius: scipy's exact b_n and incomplete gamma, brentq."""
    from scipy.optimize import brentq
    from scipy.special import gammainc, gammaincinv

    bb, b1 = gammaincinv(2 * nb, 0.5), gammaincinv(2.0, 0.5)

    def f(r):
        return (
            bt * gammainc(2 * nb, bb * (r / rb) ** (1 / nb))
            + (1 - bt) * gammainc(2.0, b1 * r / rd)
            - 0.5
        )

    return brentq(f, 1e-6, 100.0, xtol=1e-12)


def test_bulge_disk_hlr():
    one = torch.ones(1, dtype=F64)
    # pure components return their own half-light radius
    torch.testing.assert_close(
        sg.bulge_disk_hlr(one, 0.3 * one, 2.5 * one, one), 0.3 * one, rtol=1e-5, atol=0
    )
    torch.testing.assert_close(sg.bulge_disk_hlr(0 * one, one, 4 * one, 0.7 * one), 0.7 * one,
                               rtol=2e-4, atol=0)  # fmt: skip
    # composite: an independent solution with scipy's exact b_n and incomplete gamma
    for bt, rb, nb, rd in [(0.3, 0.1, 4.0, 0.5), (0.7, 0.3, 2.0, 0.6), (0.05, 0.02, 1.5, 0.2)]:
        got = float(sg.bulge_disk_hlr(*(torch.tensor([v], dtype=F64) for v in (bt, rb, nb, rd))))
        assert abs(got / _hlr_reference(bt, rb, nb, rd) - 1) < 1e-4


# --------------------------------------------------------------------------- rendering vs GalSim


@pytest.mark.peer
def test_own_disk_shear_matches_galsim_pixels():
    """Sheared exponential disks: lensml's inverse-shear rendering equals GalSim's .shear()."""
    p = _own(1, r_d=0.3, q_d=0.6, phi_d=0.4)
    for g1, g2, dx, dy in [
        (0.15, -0.1, 0.02, -0.01),
        (-0.2, 0.18, 0.0, 0.03),
        (0.0, 0.19, -0.03, 0.0),
    ]:
        ours = _render(p, g1, g2, dx, dy)[0]
        ref = _galsim_own(p, 0, g1, g2, dx, dy)
        assert np.abs(ours - ref).max() < 5e-3 * ref.max()  # measured <= 4.3e-3
        wrong = _galsim_own(p, 0, g1, -g2, dx, dy)  # a sign error would be caught
        assert np.abs(ours - wrong).max() > 3e-2 * ref.max()


@pytest.mark.peer
def test_own_galaxy_with_bulge_and_clumps_matches_galsim():
    cfg = shear_config(cosmos_fraction=0.0, clump_mean=3.0, clump_flux_max=0.5)
    hlr = torch.tensor([0.3, 0.15, 0.45], dtype=F64)
    p = sg.draw_own_galaxies(3, _rng(3), cfg, hlr)
    assert bool((p["n_clumps"] > 0).any()) and bool((p["bt"] > 0).all())
    shears = [(0.15, -0.1), (-0.2, 0.05), (0.1, 0.19)]
    for i, (g1, g2) in enumerate(shears):
        pi = {k: v[i : i + 1] for k, v in p.items()}
        ours = _render(pi, g1, g2, 0.01, -0.02)[0]
        ref = _galsim_own(p, i, g1, g2, 0.01, -0.02)
        # measured: pixels <= 2.6e-3 of the peak, HSM shapes <= 5e-4, sizes <= 2.8e-3, flux
        # -0.05 to -0.2 % (the accuracy of render_sersic_stamps for a 1.9-pixel PSF)
        assert np.abs(ours - ref).max() < 4e-3 * ref.max()
        e_ours, e_ref = _hsm_shape(ours), _hsm_shape(ref)
        assert abs(e_ours[0] - e_ref[0]) < 1e-3 and abs(e_ours[1] - e_ref[1]) < 1e-3
        assert abs(e_ours[2] / e_ref[2] - 1) < 4e-3
        assert abs(ours.sum() / ref.sum() - 1) < 3e-3


@needs_cosmos
@pytest.mark.peer
def test_own_galaxy_with_measured_acs_psf_matches_galsim():
    from lensml.sims.shear import _cosmos_psf_bank, _margin

    cfg = shear_config(psf="cosmos", cosmos_fraction=0.0)
    inst = instrument(cfg)
    bank = _cosmos_psf_bank(cfg, inst)
    assert len(bank) == 100
    p = _own(1, bt=0.4, n_b=3.5, r_b=0.08, q_b=0.8, phi_b=0.3, r_d=0.3, q_d=0.6, phi_d=0.4)
    gal = galsim.Exponential(half_light_radius=0.3, flux=0.6).shear(
        q=0.6, beta=0.4 * galsim.radians
    )
    gal = gal + galsim.Sersic(3.5, half_light_radius=0.08, flux=0.4).shear(
        q=0.8, beta=0.3 * galsim.radians
    )
    gal = gal.shear(g1=0.12, g2=-0.08).shift(0.01, 0.0)
    for j in (0, 50):
        psf = sg.RenderPSF(bank.kernels[[j]], _margin(cfg, inst), inst.oversample)
        t = [torch.full((1,), v, dtype=F64) for v in (1.0, 0.12, -0.08, 0.01, 0.0)]
        ours = sg.render_own_galaxies(p, *t, 32, 0.065, psf, dtype=F64)[0, 0].numpy()
        ref = galsim.Convolve(gal, bank.objects[j]).drawImage(
            nx=32, ny=32, scale=0.065, method="auto"
        )
        assert np.abs(ours - ref.array).max() < 4e-3 * ref.array.max()  # measured 2.5e-3
        # the output PSF image is GalSim's pixel-integrated PSF
        pim = bank.objects[j].drawImage(nx=32, ny=32, scale=0.065, method="auto").array
        np.testing.assert_allclose(bank.images[j, 0].numpy(), pim / pim.sum(), atol=1e-7)


def test_sheared_round_gaussian_has_analytic_moments():
    """A round Gaussian (Sérsic n = 1/2 bulge) of σ sheared by g, convolved with a Gaussian PSF
    and a pixel: unweighted second moments Q = σ² A Aᵀ + (σ_psf² + p²/12) I exactly, so
    the ellipticity (Q11 − Q22, 2 Q12) / (Q11 + Q22) follows; without PSF and pixel it is the
    distortion 2g / (1 + |g|²)."""
    from lensml.physics.light.sersic import b_n

    sigma, fwhm, scale, size = 0.25, 0.121, 0.065, 96
    # exp(-b (R/R_e)^2) with the renderer's b_{1/2} is exp(-R^2 / 2 sigma^2) for this R_e
    r_e = sigma * math.sqrt(2 * float(b_n(torch.tensor(0.5, dtype=F64))))
    p = _own(1, bt=1.0, n_b=0.5, q_b=1.0, r_b=r_e)
    s_psf2 = (fwhm / (2 * math.sqrt(2 * math.log(2)))) ** 2 + scale**2 / 12
    ax = (np.arange(size) - (size - 1) / 2) * scale
    xx, yy = np.meshgrid(ax, ax)
    for g1, g2 in [(0.2, 0.0), (-0.1, 0.15), (0.05, -0.19)]:
        img = _render(p, g1, g2, size=size, fwhm=fwhm)[0]
        f = img.sum()
        q11, q22 = (img * xx * xx).sum() / f, (img * yy * yy).sum() / f
        q12 = (img * xx * yy).sum() / f
        a = sg.shear_matrix(g1, g2)[0].numpy()
        qa = sigma**2 * a @ a.T + s_psf2 * np.eye(2)
        # sizes to the renderer's accuracy (measured 7e-4), ellipticity much better (1e-5)
        np.testing.assert_allclose([q11, q22, q12], [qa[0, 0], qa[1, 1], qa[0, 1]],
                                   rtol=1.5e-3, atol=1e-6)  # fmt: skip
        e_img = np.array([q11 - q22, 2 * q12]) / (q11 + q22)
        e_ana = np.array([qa[0, 0] - qa[1, 1], 2 * qa[0, 1]]) / np.trace(qa)
        np.testing.assert_allclose(e_img, e_ana, atol=1e-4)
        gm2 = g1 * g1 + g2 * g2
        chi = sigma**2 * a @ a.T  # distortion of the intrinsic-only moments
        np.testing.assert_allclose(
            [(chi[0, 0] - chi[1, 1]) / np.trace(chi), 2 * chi[0, 1] / np.trace(chi)],
            [2 * g1 / (1 + gm2), 2 * g2 / (1 + gm2)], atol=1e-12,
        )  # fmt: skip


# --------------------------------------------------------------------------- generator outputs


@needs_cosmos
def test_contract_shapes_and_psf():
    cfg = shear_config(cosmos_fraction=0.5, psf="cosmos")
    out = GEN.generate(6, _rng(1), cfg)
    for key in ("image", "clean", "psf"):
        assert out[key].shape == (6, 1, 32, 32) and out[key].dtype == torch.float32
    assert out["labels"].shape == (6, 2) and out["labels"].dtype == torch.float32
    assert out["aux"].shape == (6, len(AUX_NAMES)) == (6, len(GEN.aux_names(cfg)))
    assert GEN.label_names(cfg) == ["g1", "g2"]
    assert GEN.label_kinds(cfg) == {"g1": "spin2", "g2": "spin2"}
    assert GEN.pixel_scale(cfg) == pytest.approx(0.065)
    aux = dict(zip(AUX_NAMES, out["aux"].T, strict=True))
    assert set(aux["source"].tolist()) <= {0.0, 1.0} and bool((aux["psf_index"] >= 0).all())
    torch.testing.assert_close(out["psf"].sum(dim=(1, 2, 3)), torch.ones(6))
    # PSF centred at the stamp centre (15.5, 15.5) like the galaxies
    ax = torch.arange(32.0) - 15.5
    cx = (out["psf"][:, 0] * ax[None, None, :]).sum(dim=(1, 2))
    cy = (out["psf"][:, 0] * ax[None, :, None]).sum(dim=(1, 2))
    assert float(cx.abs().max()) < 0.3 and float(cy.abs().max()) < 0.3
    # COSMOS galaxies carry a catalogue row, own ones the clump count
    cos = aux["source"] == 1
    assert bool((aux["cosmos_index"][cos] >= 0).all() and (aux["cosmos_index"][~cos] == -1).all())
    assert bool(torch.isfinite(out["image"]).all())


def test_labels_uniform_ks():
    cfg = shear_config("ground", size=16, cosmos_fraction=0.0, noise="white", clump_mean=0.0)
    g = GEN.generate(300, _rng(2), cfg)["labels"].numpy()
    for j in range(2):
        assert stats.kstest(g[:, j], "uniform", args=(-0.2, 0.4)).pvalue > 0.01
    assert np.abs(g).max() <= 0.2 and (np.hypot(g[:, 0], g[:, 1]) < 1).all()


@needs_cosmos
@pytest.mark.parametrize("noise", ["white", "cosmos"])
def test_noise_level_matches_requested_snr(noise):
    cfg = shear_config(cosmos_fraction=0.0, noise=noise, snr_min=10, snr_max=100)
    out = GEN.generate(48, _rng(3), cfg)
    aux = dict(zip(AUX_NAMES, out["aux"].double().T, strict=True))
    noise_img = (out["image"] - out["clean"]).double()
    sigma_meas = noise_img.std(dim=(1, 2, 3))
    snr_meas = out["clean"].double().pow(2).sum(dim=(1, 2, 3)).sqrt() / sigma_meas
    assert abs(float((snr_meas / aux["snr"]).mean()) - 1) < 0.1
    assert abs(float((sigma_meas / aux["noise_sigma"]).mean()) - 1) < 0.1
    assert float(aux["snr"].min()) >= 10 - 1e-3 and float(aux["snr"].max()) <= 100 + 1e-3


@needs_cosmos
def test_correlated_noise_lag1_matches_cosmos_cf():
    from astropy.io import fits

    cf = fits.getdata(COSMOS / COSMOS_FILES["noise_cf"]).astype(np.float64)
    c = cf.shape[0] // 2
    cfg = shear_config(cosmos_fraction=0.0)  # clash preset: COSMOS-correlated noise
    out = GEN.generate(48, _rng(4), cfg)
    z = (out["image"] - out["clean"])[:, 0].double() / out["aux"][:, 5].double()[:, None, None]
    lag_x = float((z[:, :, 1:] * z[:, :, :-1]).mean())
    lag_y = float((z[:, 1:, :] * z[:, :-1, :]).mean())
    assert abs(lag_x - cf[c, c + 1] / cf[c, c]) < 0.03
    assert abs(lag_y - cf[c + 1, c] / cf[c, c]) < 0.03
    assert abs(float(z.pow(2).mean()) - 1) < 0.05
    white = GEN.generate(16, _rng(4), shear_config(cosmos_fraction=0.0, noise="white"))
    zw = (white["image"] - white["clean"])[:, 0].double()
    assert abs(float((zw[:, :, 1:] * zw[:, :, :-1]).mean() / zw.pow(2).mean())) < 0.05


def test_fixed_noise_mode_depth():
    cfg = shear_config("euclid-vis", cosmos_fraction=0.0, snr_mode="fixed_noise", depth_mag=25.0,
                       hlr_scatter=0.0, clump_mean=0.0)  # fmt: skip
    out = GEN.generate(40, _rng(5), cfg)
    aux = dict(zip(AUX_NAMES, out["aux"].double().T, strict=True))
    assert float(aux["noise_sigma"].std()) < 1e-6 * float(aux["noise_sigma"].mean())
    # fainter galaxies have lower S/N; roughly S/N 10 near the depth for ~0.2'' galaxies
    assert stats.spearmanr(aux["mag"], aux["snr"]).statistic < -0.8


def test_same_seed_same_arrays():
    cfg = shear_config("ground", cosmos_fraction=0.0, size=16)
    a, b = GEN.generate(5, _rng(7), cfg), GEN.generate(5, _rng(7), cfg)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    c = GEN.generate(5, _rng(8), cfg)
    assert not torch.equal(a["image"], c["image"])


@needs_cosmos
def test_same_seed_same_arrays_cosmos_paths():
    cfg = shear_config(cosmos_fraction=0.6, psf="cosmos")
    a, b = GEN.generate(4, _rng(9), cfg), GEN.generate(4, _rng(9), cfg)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@needs_cosmos
def test_cosmos_galaxies_have_requested_flux_and_size():
    cfg = shear_config(cosmos_fraction=1.0, hlr_max=0.3, shear_max=0.05, offset_range=0.0)
    out = GEN.generate(6, _rng(10), cfg)
    aux = dict(zip(AUX_NAMES, out["aux"].double().T, strict=True))
    flux = 10 ** (-0.4 * (aux["mag"] - cfg.zeropoint))
    ratio = out["clean"].double().sum(dim=(1, 2, 3)) / flux  # light beyond the stamp is lost
    assert bool((ratio < 1.001).all() and (ratio > 0.8).all())
    cat = sg.load_cosmos_catalog(str(COSMOS), cfg.cosmos_exclusion)
    big = sg.render_cosmos_stamp(cat.prototypes[0], 0.3, 0.5, 7.0, 0.1, -0.1, 0.0, 0.0,
                                 galsim.Gaussian(fwhm=0.121), 512, 0.065)  # fmt: skip
    assert abs(big.sum() / 7.0 - 1) < 2e-3
    assert len(cat) == 96  # GalSim's 'marginal' cut keeps 96 of the 100 example galaxies
    # the native half-light radius (circularised components) equals GalSim's for round copies
    gcat = galsim.COSMOSCatalog(file_name=COSMOS_FILES["catalog"], dir=str(COSMOS),
                                use_real=False, exclusion_level="marginal")  # fmt: skip
    checked = {0: 0, 1: 0}
    for j in range(len(cat)):
        rec = gcat.getParametricRecord(j)
        kind = int(rec["use_bulgefit"])
        if checked[kind] >= 2:
            continue
        if kind:
            fb, fd = rec["flux"][1], rec["flux"][2]
            ref = _hlr_reference(fb / (fb + fd), rec["hlr"][1], 4.0, rec["hlr"][2])
        else:
            ref = rec["hlr"][0]
        assert abs(cat.hlr[j] / ref - 1) < 1e-4
        checked[kind] += 1
    assert checked == {0: 2, 1: 2}


# --------------------------------------------------------------------------- matching


def test_histogram_ratio_weights_reproduce_target():
    rng = np.random.default_rng(0)
    src_m, src_r = rng.uniform(20, 26, 40000), rng.uniform(-1.5, 0.0, 40000)
    tgt_m = np.clip(rng.normal(24, 0.6, 5000), 20.1, 25.9)  # inside the drawn population
    tgt_r = np.clip(rng.normal(-0.8, 0.15, 5000), -1.4, -0.1)
    w = sg.histogram_ratio_weights(src_m, src_r, tgt_m, tgt_r, bins=(12, 12))
    assert w.coverage == pytest.approx(1.0)
    idx = sg.resample_indices(w.weights, 20000, _rng(0)).numpy()
    h_res, _, _ = np.histogram2d(src_m[idx], src_r[idx], bins=[w.mag_edges, w.logr_edges])
    h_tgt, _, _ = np.histogram2d(tgt_m, tgt_r, bins=[w.mag_edges, w.logr_edges])
    assert np.abs(h_res / h_res.sum() - h_tgt / h_tgt.sum()).max() < 0.01
    assert abs(src_m[idx].mean() - 24) < 0.05 and abs(src_r[idx].std() - 0.15) < 0.02
    # a target partly outside the drawn population: coverage < 1, no weight outside
    w2 = sg.histogram_ratio_weights(src_m, src_r, tgt_m, tgt_r + 1.0, bins=(12, 12))
    assert 0 < w2.coverage < 1
    assert (w2.weights[src_r < w2.logr_edges[0]] == 0).all()
    with pytest.raises(ValueError, match="overlap"):
        sg.resample_indices(np.zeros(5), 3, _rng(0))
    with pytest.raises(ValueError, match="finite"):
        sg.histogram_ratio_weights([np.nan], [0.0], [1.0], [1.0])


def _write_target(path, n=2000, seed=0, mag="MAG_AUTO", rad="FLUX_RADIUS"):
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    m = rng.normal(24.5, 0.5, n)
    r = 10 ** rng.normal(-0.9, 0.1, n)
    Table({mag: m, rad: r}).write(path, format="fits", overwrite=True)
    return m, r


def test_target_catalog_matching_in_generator(tmp_path):
    path = tmp_path / "target.fits"
    m, r = _write_target(path)
    cfg = shear_config("ground", size=16, cosmos_fraction=0.0, clump_mean=0.0,
                       target_catalog=str(path), target_mag_column="MAG_AUTO",
                       target_radius_column="FLUX_RADIUS")  # fmt: skip
    aux = GEN.generate(300, _rng(11), cfg)["aux"].double().numpy()
    mag, logr = aux[:, 0], np.log10(aux[:, 1])
    assert abs(mag.mean() - m.mean()) < 0.1 and abs(mag.std() - m.std()) < 0.1
    assert abs(logr.mean() - np.log10(r).mean()) < 0.03
    assert stats.ks_2samp(mag, m).pvalue > 1e-3


def test_parametric_and_observed_radius_matching(tmp_path):
    cfg = shear_config("clash", cosmos_fraction=0.0, hlr_scatter=0.0, mag_slope=0.0)
    mag, hlr = draw_mag_radius(20000, _rng(0), cfg)
    assert abs(float(mag.mean()) - 23.0) < 0.05  # uniform on [20, 26] with slope 0
    expect = np.clip(0.30 * 10 ** (-0.118 * (mag.numpy() - 23)), cfg.hlr_min, cfg.hlr_max)
    np.testing.assert_allclose(hlr.numpy(), expect, rtol=1e-12)
    m = sg.draw_magnitudes(4000, _rng(5), 20.0, 26.0, 0.3).numpy()  # dN/dm ∝ 10^(0.3 m)
    lo, hi = 10 ** (0.3 * 20.0), 10 ** (0.3 * 26.0)
    assert stats.kstest(m, lambda x: (10 ** (0.3 * x) - lo) / (hi - lo)).pvalue > 0.01
    # a target of PSF-convolved radii (Gaussian PSF: r_obs² = r² + (FWHM / 2)² exactly)
    path = tmp_path / "obs.fits"
    from astropy.table import Table

    rng = np.random.default_rng(1)
    r_int = 10 ** rng.normal(-0.7, 0.12, 4000)
    m = rng.normal(24.0, 0.7, 4000)
    Table({"mag": m, "hlr": np.sqrt(r_int**2 + 0.0605**2)}).write(path, format="fits")
    cfg = shear_config("clash", cosmos_fraction=0.0, target_catalog=str(path),
                       target_radius_kind="observed")  # fmt: skip
    mag, hlr = draw_mag_radius(6000, _rng(2), cfg)
    assert abs(float(np.log10(hlr.numpy()).mean()) - np.log10(r_int).mean()) < 0.02
    assert abs(float(mag.mean()) - m.mean()) < 0.05


@needs_cosmos
def test_native_cosmos_scaling_and_hlr_offsets():
    cfg = shear_config(
        cosmos_fraction=1.0,
        cosmos_scaling="native",
        offset_unit="hlr",
        offset_range=0.5,
        cosmos_size_scale=0.542,
        cosmos_mag_shift=1.236,
    )
    out = GEN.generate(5, _rng(13), cfg)
    aux = dict(zip(AUX_NAMES, out["aux"].double().T, strict=True))
    cat = sg.load_cosmos_catalog(str(COSMOS), cfg.cosmos_exclusion)
    j = aux["cosmos_index"].long().numpy()
    np.testing.assert_allclose(aux["hlr_arcsec"], 0.542 * cat.hlr[j], rtol=1e-6)
    np.testing.assert_allclose(aux["mag"], cat.mag[j] - 5 * np.log10(0.542) + 1.236, rtol=1e-6)
    off = np.abs(np.stack([aux["dx_pix"], aux["dy_pix"]])) * 0.065 / aux["hlr_arcsec"].numpy()
    assert off.max() <= 0.25 + 1e-6


# --------------------------------------------------------------------------- FITS and bad input


def test_write_fits_roundtrip(tmp_path):
    from astropy.io import fits

    from lensml.data.fits_io import read_labels

    cfg = shear_config("ground", size=16, cosmos_fraction=0.0)
    out = GEN.generate(2, _rng(12), cfg)
    item = {k: v[0].numpy() for k, v in out.items()}
    GEN.write_fits(tmp_path / "s.fits", item, GEN.label_names(cfg), cfg)
    with fits.open(tmp_path / "s.fits") as hdul:
        names = [h.name for h in hdul]
        assert {"IMAGE", "PSF", "CLEAN"} <= set(names)
        np.testing.assert_array_equal(hdul["IMAGE"].data, item["image"][0])
        labels = read_labels(hdul[0].header)
        assert labels["g1"] == pytest.approx(float(item["labels"][0]))
        assert labels["snr"] == pytest.approx(float(item["aux"][2]), rel=1e-6)
        assert hdul["IMAGE"].header["PIXSCALE"] == pytest.approx(0.2)


def test_bad_configs_give_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="target_catalog"):
        shear_config(target_catalog=str(tmp_path / "missing.fits"))
    path = tmp_path / "t.fits"
    _write_target(path)
    with pytest.raises(ConfigError, match=r"MAG_AUTO.*FLUX_RADIUS|no column"):
        shear_config(target_catalog=str(path))  # default columns 'mag', 'hlr' absent
    with pytest.raises(ConfigError, match="shear_max"):
        shear_config(shear_max=0.8)
    with pytest.raises(ConfigError, match="mag_max"):
        shear_config(mag_min=25, mag_max=24)
    with pytest.raises(ConfigError, match="unknown config field"):
        shear_config(pixelscale=0.1)
    with pytest.raises(ConfigError, match="preset"):
        shear_config("hubble")
    with pytest.raises(ConfigError, match="cosmos_dir"):
        shear_config(cosmos_fraction=1.0, cosmos_dir=str(tmp_path))
    shear_config("ground", cosmos_fraction=0.0, cosmos_dir=str(tmp_path))  # data not needed
    with pytest.raises(ValueError, match="n must be"):
        GEN.generate(0, _rng(0), shear_config())


def test_presets():
    for name, scale in [("clash", 0.065), ("euclid-vis", 0.1), ("ground", 0.2)]:
        cfg = shear_config(name)
        assert GEN.pixel_scale(cfg) == pytest.approx(scale)
    inst = instrument(shear_config("clash", psf_fwhm=0.2))
    assert inst.psf_fwhm == 0.2 and inst.pixel_scale == 0.065


@needs_cosmos
def test_ring_pairs_turn_the_galaxy_by_90_degrees():
    """ring_pairs: item 2k+1 is item 2k's galaxy turned by +90° (counter-clockwise)."""
    from lensml.data.augment import rot90

    cfg = shear_config(cosmos_fraction=0.5, shear_max=1e-9, offset_range=0.0, ring_pairs=True)
    out = GEN.generate(9, _rng(3), cfg)
    clean = out["clean"].double()
    aux = out["aux"]
    src = aux[:, AUX_NAMES.index("source")]
    assert set(src[0:8:2].tolist()) == {0.0, 1.0}  # both renderers are exercised
    for k in range(4):
        a, b = clean[2 * k], clean[2 * k + 1]
        peak = float(a.abs().max())
        turned = float((b - rot90(a, None, None, 1)[0]).abs().max()) / peak
        # GalSim (COSMOS) turns exactly; lensml's renderer to its pixel-grid accuracy (~7e-4)
        assert turned < (1e-6 if src[2 * k] == 1 else 2e-3), (k, turned)
        assert float((b - a).abs().max()) > 0.05 * peak, k  # the galaxy itself is not round
        if aux[2 * k, AUX_NAMES.index("n_clumps")] > 0:  # no 2-fold symmetry: +90°, not -90°
            other = float((b - rot90(a, None, None, -1)[0]).abs().max()) / peak
            assert other > 5 * turned, (k, other, turned)
    # shared draws: shear, magnitude, size, offsets, S/N draw; the noise is new
    cfg = shear_config(cosmos_fraction=0.5, ring_pairs=True)
    out = GEN.generate(8, _rng(4), cfg)
    assert torch.equal(out["labels"][0::2], out["labels"][1::2])
    for name in ("mag", "hlr_arcsec", "dx_pix", "dy_pix", "source", "cosmos_index"):
        col = out["aux"][:, AUX_NAMES.index(name)]
        assert torch.equal(col[0::2], col[1::2]), name
    noise = out["image"] - out["clean"]
    assert not torch.allclose(noise[0::2], noise[1::2])
    # off by default: consecutive items are independent
    plain = GEN.generate(8, _rng(4), shear_config(cosmos_fraction=0.5))
    assert not torch.equal(plain["labels"][0::2], plain["labels"][1::2])
