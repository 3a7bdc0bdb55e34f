"""Tests of the MOKA-like halo ingredients (lensml.sims.halos)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lensml.sims import halos


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.peer
def test_duffy08_matches_colossus():
    from colossus.cosmology import cosmology
    from colossus.halo import concentration

    cosmology.setCosmology("planck18")
    m = np.logspace(13, 15, 9)
    for z in (0.1, 0.5, 1.0):
        ref = concentration.concentration(m, "vir", z, model="duffy08")
        ours = halos.concentration_duffy08(torch.tensor(m, dtype=torch.float64), z).numpy()
        np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_concentration_scatter_is_lognormal():
    m = torch.full((20000,), 1e14, dtype=torch.float64)
    c = halos.draw_concentration(m, 0.2, 0.25, _gen(1))
    ln = torch.log(c / halos.concentration_duffy08(m, 0.2))
    assert abs(float(ln.mean())) < 0.01
    assert abs(float(ln.std()) - 0.25) < 0.01


def test_subhalo_counts_follow_mass_function_mean():
    """Sample mean of N_sub over many hosts equals ∫ dN/dlnm within Poisson error."""
    host = torch.tensor([1e13] * 3000 + [3e14] * 300, dtype=torch.float64)
    m_min, z = 1e10, 0.3
    masses, owner = halos.draw_subhalo_masses(host, m_min, z, _gen(2))
    counts = torch.bincount(owner, minlength=len(host)).double()
    expected = halos.subhalo_mean_number(host, m_min, z)
    # analytic integral cross-check for the first host (numpy, fine grid)
    x = np.logspace(-3, 0, 200001)
    a, al, be = halos.GIOCOLI10
    ref = a * math.sqrt(1 + z) * np.trapezoid(x**al * np.exp(-be * x**3), np.log(x))
    assert float(expected[0]) == pytest.approx(ref, rel=1e-4)
    for sel in (slice(0, 3000), slice(3000, 3300)):
        mu = float(expected[sel][0])
        n = counts[sel].numel()
        err = math.sqrt(mu / n)  # Poisson standard error of the mean
        assert abs(float(counts[sel].mean()) - mu) < 4 * err, (float(counts[sel].mean()), mu)
    # the masses follow the shape: fraction above 10 m_min for the 1e13 hosts
    xs = masses[owner < 3000] / 1e13
    lo, hi = np.log(1e-3), np.log(1e-2)
    grid = np.linspace(lo, 0, 20001)
    f = np.exp(grid) ** al * np.exp(-be * np.exp(grid) ** 3)
    frac = np.trapezoid(f[grid >= hi], grid[grid >= hi]) / np.trapezoid(f, grid)
    got = float((xs >= 1e-2).double().mean())
    assert abs(got - frac) < 4 * math.sqrt(frac * (1 - frac) / len(xs))
    assert bool((masses >= m_min).all()) and bool((masses <= host[owner]).all())


def test_radial_distribution_matches_eq5():
    conc = torch.full((8000,), 5.0, dtype=torch.float64)
    r = halos.draw_subhalo_radii(conc, _gen(3))
    assert float(r.min()) >= 0 and float(r.max()) <= 1
    for xq in (0.2, 0.5, 0.8):
        cdf = float(halos.subhalo_radial_cdf(torch.tensor(xq, dtype=torch.float64), conc[:1]))
        assert abs(float((r < xq).double().mean()) - cdf) < 0.022  # 4 sigma
    assert float(halos.subhalo_radial_cdf(torch.tensor(1.0), torch.tensor(4.0))) == 1.0


def test_axis_ratios_and_projection():
    m = torch.full((5000,), 1e14, dtype=torch.float64)
    a_c, b_c = halos.draw_axis_ratios(m, 0.35, 1.5e12, _gen(4))
    assert bool((a_c <= b_c).all()) and bool((b_c <= 1).all()) and bool((a_c > 0).all())
    # JS02: mean of s̃ = 0.54 -> mean a/c ≈ 0.54 / (M/M*)^(0.07 Ω^0.7)
    scale = (1e14 / 1.5e12) ** (0.07 * 0.35**0.7)
    assert float(a_c.mean()) == pytest.approx(0.54 / scale, abs=0.01)
    # seen down the major (c) axis, the projected ratio is a/b with the major axis along y
    eye = torch.eye(3, dtype=torch.float64).expand(3, 3, 3)
    q, phi = halos.project_ellipsoid(
        torch.tensor([0.4, 0.5, 1.0], dtype=torch.float64),
        torch.tensor([0.8, 0.5, 1.0], dtype=torch.float64),
        eye,
    )
    np.testing.assert_allclose(q.numpy(), [0.5, 1.0, 1.0], atol=1e-12)
    assert float(phi[0]) == pytest.approx(math.pi / 2, abs=1e-9)
    # seen down the minor (a) axis: ratio b/c with the major axis along the rotated c
    rot = torch.tensor([[[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]], dtype=torch.float64)  # a -> z
    rot = rot.transpose(1, 2)
    q1, _ = halos.project_ellipsoid(
        torch.tensor([0.4], dtype=torch.float64), torch.tensor([0.8], dtype=torch.float64), rot
    )
    assert float(q1[0]) == pytest.approx(0.8, abs=1e-9)
    rr = halos.random_rotations(100, _gen(5))
    np.testing.assert_allclose(torch.linalg.det(rr).numpy(), 1.0, atol=1e-12)
    qr, pr = halos.project_ellipsoid(a_c[:100], b_c[:100], rr)
    assert bool((qr >= a_c[:100] - 1e-9).all()) and bool((qr <= 1).all())
    assert bool((pr >= 0).all()) and bool((pr < math.pi).all())


def test_bcg_relation_and_size():
    m = torch.tensor([10**11.6, 1e14, 1e15], dtype=torch.float64)
    ms = halos.bcg_stellar_mass(m, 0.0, 0.0, _gen(6))
    # Moster+13 at z = 0: m*/M = 2N/((M/M1)^-β + (M/M1)^γ), peak ≈ 0.035 at M1
    assert float(ms[0] / m[0]) == pytest.approx(0.0351, rel=0.01)
    assert 1e11 < float(ms[1]) < 1e12 and 3e11 < float(ms[2]) < 3e12
    a = halos.bcg_scale_radius_kpc(torch.tensor([1e11, 1e12], dtype=torch.float64))
    assert float(a[0]) == pytest.approx(2.88e-6 * 1e11**0.56 / 1.8153)


def test_truncation_radius_is_capped_and_tidal():
    sub = torch.tensor([1e11, 1e11], dtype=torch.float64)
    host = torch.tensor([1e15, 1e15], dtype=torch.float64)
    c = torch.tensor([5.0, 5.0], dtype=torch.float64)
    rt = halos.subhalo_truncation_radius(sub, torch.tensor([0.1, 1.0]), host, c)
    assert float(rt[0]) < float(rt[1]) <= (2 / math.pi) * (1e-4) ** (1 / 3) + 1e-15
    inner = 1e15 * float(
        halos.nfw_mass_fraction(torch.tensor(0.5)) / halos.nfw_mass_fraction(torch.tensor(5.0))
    )
    assert float(rt[0]) == pytest.approx(0.1 * (1e11 / (3 * inner)) ** (1 / 3))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="mass"):
        halos.concentration_duffy08(torch.tensor([-1.0]), 0.1)
    with pytest.raises(ValueError, match="sigma_lnc"):
        halos.draw_concentration(torch.tensor([1e14]), 0.1, -0.1, _gen())
