"""Mass profiles against lenstronomy's LensModel (float64, sweeps of the parameters).

Tolerance: rtol 1e-4 per pixel with atol = 1e-8 · max|ref| (for values crossing zero);
only a pixel sitting exactly on a profile centre is excluded. Convergence and shear are
compared with lenstronomy's Hessian where it is analytic (SIS, NFW, SHEAR) or a central
difference (HERNQUIST); for SIE/NIE and NFW_ELLIPSE_POTENTIAL, whose lenstronomy Hessian
is a one-sided 1e-10 difference (~1e-6 absolute error), with a central difference
(h = 1e-6) of lenstronomy's analytic deflection instead.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lensml.physics import mass

pytestmark = pytest.mark.peer

lenstronomy_lens_model = pytest.importorskip("lenstronomy.LensModel.lens_model")
LensModel = lenstronomy_lens_model.LensModel

N, SCALE = 25, 0.25  # odd grid: contains (0, 0) exactly
_AX = (np.arange(N) - (N - 1) / 2) * SCALE
X, Y = np.meshgrid(_AX, _AX)
XT, YT = torch.tensor(X), torch.tensor(Y)
CENTRES = [(0.0, 0.0), (0.3, -0.45)]


def close(ours: torch.Tensor, ref: np.ndarray, mask: np.ndarray, atol_rel: float = 1e-8) -> None:
    got = ours.detach().numpy().reshape(ref.shape)
    np.testing.assert_allclose(
        got[mask], ref[mask], rtol=1e-4, atol=atol_rel * np.abs(ref[mask]).max()
    )


def off_centre(x0: float, y0: float) -> np.ndarray:
    return np.hypot(X - x0, Y - y0) > 1e-9


def fd_hessian_of(lm, kwargs: list, h: float = 1e-6):
    """Central difference of lenstronomy's deflection: (ψ_xx, ψ_xy, ψ_yy)."""
    axp, ayp = lm.alpha(X + h, Y, kwargs)
    axm, aym = lm.alpha(X - h, Y, kwargs)
    bxp, byp = lm.alpha(X, Y + h, kwargs)
    bxm, bym = lm.alpha(X, Y - h, kwargs)
    fxy = 0.5 * ((bxp - bxm) + (ayp - aym)) / (2 * h)
    return (axp - axm) / (2 * h), fxy, (byp - bym) / (2 * h)


def compare(lens: str, kw_ref: dict, profile: str, kw: dict, centre, fd_hessian=False) -> None:
    lm = LensModel([lens])
    mask = off_centre(*centre)
    ax, ay = lm.alpha(X, Y, [kw_ref])
    cls = mass.MASS_PROFILES.get(profile)
    oax, oay = cls.deflection(XT, YT, **kw)
    close(oax, ax, mask)
    close(oay, ay, mask)
    if fd_hessian:
        fxx, fxy, fyy = fd_hessian_of(lm, [kw_ref])
    else:
        fxx, fxy, _, fyy = lm.hessian(X, Y, [kw_ref])
    # a central-difference reference carries ~1e-9 absolute error of its own
    atol_rel = 1e-6 if fd_hessian else 1e-8
    close(cls.convergence(XT, YT, **kw), 0.5 * (fxx + fyy), mask, atol_rel)
    g1, g2 = cls.shear(XT, YT, **kw)
    close(g1, 0.5 * (fxx - fyy), mask, atol_rel)
    close(g2, fxy, mask, atol_rel)


@pytest.mark.parametrize("q", [0.3, 0.55, 0.8, 1.0])
@pytest.mark.parametrize("core", [0.0, 0.2])
def test_sie_matches_lenstronomy(q, core):
    for phi, theta_e, (x0, y0) in itertools.product([0.0, 0.7, -1.2], [0.6, 1.7], CENTRES):
        _, e1, e2 = mass.sie_to_lenstronomy(theta_e, q, phi)
        ref = {"theta_E": theta_e, "e1": e1, "e2": e2, "center_x": x0, "center_y": y0}
        kw = {"theta_e": theta_e, "q": q, "phi": phi, "x0": x0, "y0": y0, "core": core}
        if core:
            compare("NIE", {**ref, "s_scale": core}, "sie", kw, (x0, y0), fd_hessian=True)
        else:
            compare("SIE", ref, "sie", kw, (x0, y0), fd_hessian=True)


def test_sis_matches_lenstronomy():
    for theta_e, (x0, y0) in itertools.product([0.3, 1.0, 2.5], CENTRES):
        ref = {"theta_E": theta_e, "center_x": x0, "center_y": y0}
        compare("SIS", ref, "sis", {"theta_e": theta_e, "x0": x0, "y0": y0}, (x0, y0))


def test_tsis_matches_sis_minus_cored_sphere():
    # κ_TSIS = κ_SIS(θ) − κ_NIS(θ, core r_t): lenstronomy SIS + NIE with negative θ_E
    for theta_e, r_t, (x0, y0) in itertools.product([0.5, 1.5], [0.4, 2.0, 8.0], CENTRES):
        lm = LensModel(["SIS", "NIE"])
        kw_ref = [
            {"theta_E": theta_e, "center_x": x0, "center_y": y0},
            {
                "theta_E": -theta_e,
                "e1": 0.0,
                "e2": 0.0,
                "s_scale": r_t,
                "center_x": x0,
                "center_y": y0,
            },
        ]
        mask = off_centre(x0, y0)
        kw = {"theta_e": theta_e, "r_t": r_t, "x0": x0, "y0": y0}
        ax, ay = lm.alpha(X, Y, kw_ref)
        oax, oay = mass.TruncatedSIS.deflection(XT, YT, **kw)
        close(oax, ax, mask)
        close(oay, ay, mask)
        fxx, fxy, fyy = fd_hessian_of(lm, kw_ref)
        close(mass.TruncatedSIS.convergence(XT, YT, **kw), 0.5 * (fxx + fyy), mask, 1e-6)
        g1, g2 = mass.TruncatedSIS.shear(XT, YT, **kw)
        close(g1, 0.5 * (fxx - fyy), mask, 1e-6)
        close(g2, fxy, mask, 1e-6)


def test_external_shear_matches_lenstronomy():
    for g1, g2, (x0, y0) in itertools.product([0.05, -0.12], [0.0, 0.08], CENTRES):
        ref = {"gamma1": g1, "gamma2": g2, "ra_0": x0, "dec_0": y0}
        kw = {"gamma1": g1, "gamma2": g2, "x0": x0, "y0": y0}
        lm = LensModel(["SHEAR"])
        mask = np.ones_like(X, dtype=bool)
        ax, ay = lm.alpha(X, Y, [ref])
        oax, oay = mass.ExternalShear.deflection(XT, YT, **kw)
        close(oax, ax, mask)
        close(oay, ay, mask)
        close(mass.ExternalShear.potential(XT, YT, **kw), lm.potential(X, Y, [ref]), mask)
        fxx, fxy, _, fyy = lm.hessian(X, Y, [ref])
        s1, s2 = mass.ExternalShear.shear(XT, YT, **kw)
        close(s1, 0.5 * (fxx - fyy), mask)
        close(s2, fxy, mask)
        assert float(mass.ExternalShear.convergence(XT, YT, **kw).abs().max()) == 0.0


@pytest.mark.parametrize("r_s", [0.25, 1.0, 4.0, 20.0])
def test_nfw_matches_lenstronomy(r_s):
    for alpha_rs, (x0, y0) in itertools.product([0.2, 1.5], CENTRES):
        ref = {"Rs": r_s, "alpha_Rs": alpha_rs, "center_x": x0, "center_y": y0}
        kw = {"r_s": r_s, "alpha_rs": alpha_rs, "x0": x0, "y0": y0}
        compare("NFW", ref, "nfw", kw, (x0, y0))


@pytest.mark.parametrize("q", [0.6, 0.8, 1.0])
def test_elliptical_nfw_matches_lenstronomy(q):
    # r_s avoids pixel radii: lenstronomy's closed forms lose digits within ~1e-13 of x = 1
    for phi, r_s, (x0, y0) in itertools.product([0.0, 0.9, -0.4], [0.55, 3.1], CENTRES):
        e1, e2 = mass.q_phi_to_e1e2(q, phi)
        ref = {"Rs": r_s, "alpha_Rs": 0.9, "e1": e1, "e2": e2, "center_x": x0, "center_y": y0}
        kw = {"r_s": r_s, "alpha_rs": 0.9, "q": q, "phi": phi, "x0": x0, "y0": y0}
        compare("NFW_ELLIPSE_POTENTIAL", ref, "enfw", kw, (x0, y0), fd_hessian=True)


@pytest.mark.parametrize("r_s", [0.3, 1.0, 5.0])
def test_hernquist_matches_lenstronomy(r_s):
    for sigma0, (x0, y0) in itertools.product([0.1, 2.0], CENTRES):
        ref = {"sigma0": sigma0, "Rs": r_s, "center_x": x0, "center_y": y0}
        kw = {"sigma0": sigma0, "r_s": r_s, "x0": x0, "y0": y0}
        compare("HERNQUIST", ref, "hernquist", kw, (x0, y0))


@pytest.mark.parametrize(
    ("lens", "kw_ref", "profile", "kw"),
    [
        ("SIE", {"theta_E": 1.1, "e1": 0.1, "e2": -0.2}, "sie", None),
        ("NFW", {"Rs": 1.3, "alpha_Rs": 0.7}, "nfw", {"r_s": 1.3, "alpha_rs": 0.7}),
        ("HERNQUIST", {"sigma0": 0.8, "Rs": 0.7}, "hernquist", {"sigma0": 0.8, "r_s": 0.7}),
        ("SIS", {"theta_E": 1.1}, "sis", {"theta_e": 1.1}),
    ],
)
def test_potential_matches_lenstronomy_up_to_a_constant(lens, kw_ref, profile, kw):
    if kw is None:
        theta_e, q, phi = mass.lenstronomy_to_sie(kw_ref["theta_E"], kw_ref["e1"], kw_ref["e2"])
        kw = {"theta_e": theta_e, "q": q, "phi": phi}
    ref = LensModel([lens]).potential(X, Y, [kw_ref])
    ours = mass.MASS_PROFILES.get(profile).potential(XT, YT, **kw)[0].numpy()
    mask = off_centre(0.0, 0.0)
    diff = (ours - ref)[mask]
    assert np.ptp(diff) < 1e-8 * np.ptp(ref[mask])
