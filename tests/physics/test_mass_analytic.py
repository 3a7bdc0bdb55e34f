"""Mass profiles against closed-form results and high-precision (mpmath) references."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import integrate

from lensml.physics import mass
from lensml.physics.mass import hernquist, nfw, shear, sie, sis

F64 = torch.float64


def grid(n: int = 21, scale: float = 0.3, offset: float = 0.013) -> tuple[torch.Tensor, ...]:
    ax = (torch.arange(n, dtype=F64) - (n - 1) / 2) * scale + offset
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    return x, y


def test_sis_convergence_is_theta_over_2r():
    x, y = grid()
    r = torch.hypot(x - 0.2, y + 0.1)
    kappa = sis.convergence(x, y, theta_e=1.3, x0=0.2, y0=-0.1)[0]
    torch.testing.assert_close(kappa, 1.3 / (2 * r), rtol=1e-13, atol=0)
    ax, ay = sis.deflection(x, y, 1.3, 0.2, -0.1)
    torch.testing.assert_close(torch.hypot(ax, ay)[0], torch.full_like(r, 1.3), rtol=1e-13, atol=0)


@pytest.mark.parametrize("core", [0.0, 0.3])
def test_sie_at_q_one_is_the_isothermal_sphere(core):
    x, y = grid()
    kw = {"theta_e": 1.1, "x0": 0.1, "y0": -0.2}
    dx, dy = x - 0.1, y + 0.2
    r = torch.hypot(dx, dy)
    root = torch.sqrt(r * r + core * core)
    # cored isothermal sphere: α(R) = θ_E (√(R² + s²) − s) / R, κ = θ_E / (2√(R² + s²))
    alpha = 1.1 * (root - core) / r
    for phi in (0.0, 1.0):
        ax, ay = sie.deflection(x, y, q=1.0, phi=phi, core=core, **kw)
        torch.testing.assert_close(ax[0], alpha * dx / r, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ay[0], alpha * dy / r, rtol=1e-12, atol=1e-14)
        kappa = sie.convergence(x, y, q=1.0, phi=phi, core=core, **kw)[0]
        torch.testing.assert_close(kappa, 0.55 / root, rtol=1e-13, atol=0)
    if core == 0.0:
        g_sie = sie.shear(x, y, q=1.0, phi=0.3, **kw)
        g_sis = sis.shear(x, y, **kw)
        for a, b in zip(g_sie, g_sis, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        dpsi = sie.potential(x, y, q=1.0, **kw) - sis.potential(x, y, **kw)
        assert float(dpsi.abs().max()) < 1e-13


def test_sie_near_q_one_is_continuous():
    # the series branch (e² < 1e-6) and the closed form agree across the switch
    x, y = grid()
    q = torch.tensor([1 - 4.9e-7, 1 - 5.1e-7], dtype=F64)  # e² just below / above 1e-6
    ax, ay = sie.deflection(x, y, theta_e=1.0, q=q, phi=0.4)
    torch.testing.assert_close(ax[0], ax[1], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ay[0], ay[1], rtol=1e-6, atol=1e-9)


def test_sie_convergence_form_and_conversions():
    x, y = grid()
    q, phi = 0.55, 0.8
    kappa = sie.convergence(x, y, theta_e=1.4, q=q, phi=phi, core=0.2)[0]
    xr = x * math.cos(phi) + y * math.sin(phi)
    yr = -x * math.sin(phi) + y * math.cos(phi)
    ref = 1.4 / (2 * torch.sqrt(q * xr**2 + yr**2 / q + 0.04))
    torch.testing.assert_close(kappa, ref, rtol=1e-13, atol=0)
    theta_e, e1, e2 = mass.sie_to_lenstronomy(1.4, q, phi)
    assert e1 == pytest.approx((1 - q) / (1 + q) * math.cos(2 * phi))
    back = mass.lenstronomy_to_sie(theta_e, e1, e2)
    assert back == pytest.approx((1.4, q, phi), abs=1e-14)
    qt, pt = mass.e1e2_to_q_phi(torch.tensor([e1]), torch.tensor([e2]))
    assert float(qt) == pytest.approx(q) and float(pt) == pytest.approx(phi)
    with pytest.raises(ValueError, match="e1"):
        mass.e1e2_to_q_phi(0.8, 0.7)


def test_shear_modulus_angle_round_trip():
    g1, g2 = shear.gamma_phi_to_gamma12(0.07, 0.6)
    assert shear.gamma12_to_gamma_phi(g1, g2) == pytest.approx((0.07, 0.6))
    t1, t2 = shear.gamma_phi_to_gamma12(torch.tensor([0.07]), torch.tensor([0.6]))
    assert float(t1) == pytest.approx(g1) and float(t2) == pytest.approx(g2)


def _nfw_mp(x: float) -> tuple[float, float, float]:
    """(F, g, h) of the NFW profile at 40 digits."""
    mpmath.mp.dps = 40
    x = mpmath.mpf(x)
    if x < 1:
        a = mpmath.acosh(1 / x) / mpmath.sqrt(1 - x * x)
    elif x > 1:
        a = mpmath.acos(1 / x) / mpmath.sqrt(x * x - 1)
    else:
        a = mpmath.mpf(1)
    f = (1 - a) / (x * x - 1) if x != 1 else mpmath.mpf(1) / 3
    g = mpmath.log(x / 2) + a
    h = mpmath.log(x / 2) ** 2 - (1 - x * x) * a * a
    return float(f), float(g), float(h)


XS = [
    1e-6,
    1e-3,
    0.2,
    0.683,
    0.9,
    0.949,
    0.951,
    0.999,
    1 - 1e-9,
    1.0,
    1 + 1e-9,
    1.001,
    1.048,
    1.1,
    3.0,
    250.0,
]


def test_nfw_special_functions_match_mpmath_around_x_equals_one():
    aux = mass.base.nfw_aux(torch.tensor(XS, dtype=F64))
    ref = np.array([_nfw_mp(v) for v in XS])
    np.testing.assert_allclose(aux["F"].numpy(), ref[:, 0], rtol=1e-12)
    np.testing.assert_allclose(aux["g"].numpy(), ref[:, 1], rtol=1e-12)
    np.testing.assert_allclose(aux["h"].numpy(), ref[:, 2], rtol=1e-11)


def test_nfw_mean_convergence_inside_rs_and_integral():
    r_s, alpha_rs = 1.7, 0.9
    kappa_s = nfw.alpha_rs_to_kappa_s(alpha_rs, r_s)
    assert nfw.kappa_s_to_alpha_rs(kappa_s, r_s) == pytest.approx(alpha_rs)
    rr = torch.tensor([r_s], dtype=F64)
    kbar = nfw.mean_convergence(rr, r_s, alpha_rs)
    assert float(kbar) == pytest.approx(4 * kappa_s * (1 + math.log(0.5)), rel=1e-13)
    assert float(kbar) == pytest.approx(alpha_rs / r_s, rel=1e-13)
    # κ at R = r_s is 2 κ_s / 3
    k1 = nfw.convergence(
        torch.tensor([[r_s]], dtype=F64), torch.zeros(1, 1, dtype=F64), r_s, alpha_rs
    )
    assert float(k1) == pytest.approx(2 * kappa_s / 3, rel=1e-13)

    # κ̄(<R) = (2/R²) ∫ κ(r) r dr, and γ_t = κ̄ − κ
    def kappa_at(r: float) -> float:
        return float(
            nfw.convergence(
                torch.tensor([[r]], dtype=F64), torch.zeros(1, 1, dtype=F64), r_s, alpha_rs
            )
        )

    for big_r in (0.3, 1.7, 5.0):
        integral = integrate.quad(lambda r: kappa_at(r) * r, 0, big_r, points=[r_s], limit=200)[0]
        kb = float(nfw.mean_convergence(torch.tensor([big_r], dtype=F64), r_s, alpha_rs))
        assert kb == pytest.approx(2 * integral / big_r**2, rel=1e-8)
        gt = float(nfw.tangential_shear(torch.tensor([big_r], dtype=F64), r_s, alpha_rs))
        assert gt == pytest.approx(kb - kappa_at(big_r), rel=1e-12)


def test_nfw_radial_functions_batch_shape():
    r = torch.linspace(0.0, 5.0, 11, dtype=F64)
    out = nfw.mean_convergence(r, torch.tensor([1.0, 2.0], dtype=F64), 0.5)
    assert out.shape == (2, 11) and bool(torch.isfinite(out).all())
    assert float(out[0, 0]) > float(out[0, 1])  # diverges (logarithmically) towards R = 0
    with pytest.raises(ValueError, match="radius"):
        nfw.tangential_shear(torch.zeros(2, 3, 4), 1.0, 0.5)


def test_nfw_deflection_finite_at_centre():
    x = torch.zeros(1, 1, dtype=F64)
    ax, ay = nfw.deflection(x, x, 1.0, 1.0)
    assert float(ax) == 0.0 and float(ay) == 0.0
    small = torch.tensor([[1e-8]], dtype=F64)
    ax, _ = nfw.deflection(small, torch.zeros_like(small), 1.0, 1.0)
    assert 0 < float(ax) < 1e-6


def test_tsis_limits_and_enclosed_mass():
    r = torch.tensor([0.0, 1e-3, 1.0, 1e6], dtype=F64)
    m = sis.tsis_enclosed_mass(r, theta_e=1.2, r_t=3.0)[0]
    assert float(m[0]) == 0.0
    assert float(m[-1]) == pytest.approx(math.pi * 1.2 * 3.0, rel=1e-5)
    # small radii: the SIS mass π θ_E R
    assert float(m[1]) == pytest.approx(math.pi * 1.2 * 1e-3, rel=1e-3)
    # M(<R) = π R α(R)
    ax, _ = sis.tsis_deflection(r[2:3].reshape(1, 1), torch.zeros(1, 1, dtype=F64), 1.2, 3.0)
    assert float(m[2]) == pytest.approx(math.pi * float(ax), rel=1e-13)
    # r_t → ∞ recovers the SIS
    x, y = grid()
    k_t = sis.tsis_convergence(x, y, theta_e=1.2, r_t=1e8)
    torch.testing.assert_close(k_t, sis.convergence(x, y, theta_e=1.2), rtol=1e-7, atol=0)


def test_hernquist_limits():
    sigma0, r_s = 0.7, 1.3
    one = torch.tensor([[r_s]], dtype=F64)
    zero = torch.zeros(1, 1, dtype=F64)
    ax, _ = hernquist.deflection(one, zero, sigma0, r_s)
    assert float(ax) == pytest.approx(2 / 3 * sigma0 * r_s, rel=1e-13)
    assert float(hernquist.convergence(one, zero, sigma0, r_s)) == pytest.approx(
        4 / 15 * sigma0, rel=1e-12
    )
    # total mass: π R α(R) → 2π σ0 r_s² as R → ∞
    far = torch.tensor([[1e6 * r_s]], dtype=F64)
    ax, _ = hernquist.deflection(far, zero, sigma0, r_s)
    m_far = math.pi * 1e6 * r_s * float(ax)
    assert m_far == pytest.approx(hernquist.total_mass(sigma0, r_s), rel=1e-5)
