"""Tests of lensml.physics.cosmology against astropy identities, lenstronomy and colossus."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy import units as u
from astropy.cosmology import FlatLambdaCDM, Planck15, Planck18

from lensml.physics import cosmology as cosmo

ZL, ZS = 0.5, 2.0
ARCSEC = math.pi / 180 / 3600
# A cosmology without radiation, so that colossus (relspecies=False) is the same model.
TEST_COSMO = FlatLambdaCDM(H0=70.0, Om0=0.3, Ob0=0.05, Tcmb0=0.0)
COLOSSUS_PARAMS = {
    "flat": True,
    "H0": 70.0,
    "Om0": 0.3,
    "Ob0": 0.05,
    "sigma8": 0.8,
    "ns": 0.96,
    "relspecies": False,
    "interpolation": False,
}


@pytest.fixture
def lenstronomy_astropy_constants(monkeypatch):
    """lenstronomy uses its own G (6.67384e-11) and M_sun (1.9891e30), 2.8e-4 away from
    astropy's CODATA 2018 / IAU 2015 values; patch them so only the formulas are compared."""
    const = pytest.importorskip("lenstronomy.Util.constants")
    from astropy import constants as ac

    monkeypatch.setattr(const, "G", ac.G.value)
    monkeypatch.setattr(const, "M_sun", ac.M_sun.value)
    monkeypatch.setattr(const, "Mpc", u.Mpc.to(u.m))
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo

    return LensCosmo(ZL, ZS, cosmo=Planck18)


def test_get_cosmology():
    assert cosmo.get_cosmology("Planck18") is Planck18
    assert cosmo.get_cosmology("planck15") is Planck15
    assert cosmo.get_cosmology(None) is Planck18
    assert cosmo.get_cosmology(TEST_COSMO) is TEST_COSMO
    assert cosmo.get_cosmology("WMAP9").name == "WMAP9"
    with pytest.raises(ValueError, match="cosmo"):
        cosmo.get_cosmology("Planck99")


def test_distances_astropy_and_flat_identity():
    d_l, d_s, d_ls = cosmo.lens_distances(ZL, ZS)
    assert isinstance(d_l, float)
    assert d_l == pytest.approx(Planck18.angular_diameter_distance(ZL).to_value(u.Mpc), rel=1e-12)
    assert d_s == pytest.approx(Planck18.angular_diameter_distance(ZS).to_value(u.Mpc), rel=1e-12)
    # flat universe: D_ls = (χ_s − χ_l) / (1 + z_s)
    chi = Planck18.comoving_distance([ZL, ZS]).to_value(u.Mpc)
    assert d_ls == pytest.approx((chi[1] - chi[0]) / (1 + ZS), rel=1e-9)


@pytest.mark.peer
def test_distances_vs_colossus():
    cc = pytest.importorskip("colossus.cosmology.cosmology")
    col = cc.setCosmology("lensml_test", params=COLOSSUS_PARAMS)
    zs = np.array([0.2, 0.5, 1.0, 3.0])
    d = cosmo.lens_distances(0.1, zs, TEST_COSMO)[1]
    np.testing.assert_allclose(d, col.angularDiameterDistance(zs) / col.h, rtol=1e-9)
    # Planck18: colossus treats neutrinos differently; measured 4e-5 up to z = 2
    p18 = cc.setCosmology("planck18")
    d = cosmo.lens_distances(0.1, zs[:3])[1]
    np.testing.assert_allclose(d, p18.angularDiameterDistance(zs[:3]) / p18.h, rtol=1e-4)


@pytest.mark.peer
def test_sigma_crit_vs_lenstronomy(lenstronomy_astropy_constants):
    lc = lenstronomy_astropy_constants
    assert cosmo.sigma_crit(ZL, ZS) == pytest.approx(lc.sigma_crit, rel=1e-6)
    assert cosmo.sigma_crit_arcsec(ZL, ZS) == pytest.approx(lc.sigma_crit_angle, rel=1e-6)
    assert cosmo.mass_in_theta_e(1.3, ZL, ZS) == pytest.approx(lc.mass_in_theta_E(1.3), rel=1e-6)


def test_sigma_crit_value_and_identities():
    d_l, d_s, d_ls = cosmo.lens_distances(ZL, ZS)
    # c²/(4πG) in M_sun / Mpc from CODATA 2018 G, IAU 2015 M_sun and the IAU parsec
    c2_4pig = 299792458.0**2 / (4 * math.pi * 6.67430e-11) * 3.0856775814913673e22 / 1.98840987e30
    expected = c2_4pig * d_s / (d_l * d_ls)
    assert cosmo.sigma_crit(ZL, ZS) == pytest.approx(expected, rel=1e-5)
    # M(<θ_E) = π Σcrit,arcsec θ_E²
    assert cosmo.mass_in_theta_e(0.8, ZL, ZS) == pytest.approx(
        math.pi * cosmo.sigma_crit_arcsec(ZL, ZS) * 0.8**2, rel=1e-12
    )


@pytest.mark.peer
def test_theta_e_sigma_v_vs_lenstronomy(lenstronomy_astropy_constants):
    lc = lenstronomy_astropy_constants
    assert cosmo.theta_e_from_sigma_v(250.0, ZL, ZS) == pytest.approx(
        lc.sis_sigma_v2theta_E(250.0), rel=1e-10
    )
    assert cosmo.sigma_v_from_theta_e(1.1, ZL, ZS) == pytest.approx(
        lc.sis_theta_E2sigma_v(1.1), rel=1e-10
    )


def test_theta_e_sigma_v_round_trip_and_vectorised():
    sv = np.array([150.0, 250.0, 320.0])
    zs = np.array([1.0, 2.0, 3.0])
    te = cosmo.theta_e_from_sigma_v(sv, 0.4, zs)
    assert te.shape == (3,)
    np.testing.assert_allclose(cosmo.sigma_v_from_theta_e(te, 0.4, zs), sv, rtol=1e-12)
    # a 250 km/s SIS at z = 0.5 lensing z = 2 has θ_E ≈ 1.2″ (order-of-magnitude sanity)
    assert 1.0 < cosmo.theta_e_from_sigma_v(250.0, ZL, ZS) < 1.4
    # θ_E ∝ σ²
    np.testing.assert_allclose(te[1] / cosmo.theta_e_from_sigma_v(125.0, 0.4, 2.0), 4.0)


@pytest.mark.peer
@pytest.mark.parametrize(("mass", "conc"), [(1e12, 8.0), (1e14, 5.0), (2e15, 3.5)])
def test_nfw_vs_lenstronomy(lenstronomy_astropy_constants, mass, conc):
    lc = lenstronomy_astropy_constants
    rs, alpha_rs, kappa_s = cosmo.nfw_lensing_params(mass, conc, ZL, ZS, mass_def="200c")
    rs_ref, alpha_ref = lc.nfw_physical2angle(mass, conc)
    assert rs == pytest.approx(rs_ref, rel=1e-4)
    assert alpha_rs == pytest.approx(alpha_ref, rel=1e-4)
    assert alpha_rs == pytest.approx(4 * kappa_s * rs * (1 + math.log(0.5)), rel=1e-12)


@pytest.mark.peer
@pytest.mark.parametrize("mass_def", ["200c", "200m", "vir"])
def test_nfw_physical_vs_colossus(mass_def):
    """ρ_s and r_s vs colossus NFWProfile (M in M_sun/h, r in kpc/h) for each definition."""
    cc = pytest.importorskip("colossus.cosmology.cosmology")
    from colossus.halo.profile_nfw import NFWProfile

    col = cc.setCosmology("lensml_test", params=COLOSSUS_PARAMS)
    h, z, mass, conc = col.h, 0.3, 3e14, 4.5
    prof = NFWProfile(M=mass * h, c=conc, z=z, mdef=mass_def)
    r_s, rho_s = cosmo.nfw_physical_params(mass, conc, z, mass_def, TEST_COSMO)
    assert r_s == pytest.approx(prof.par["rs"] / h / 1e3, rel=1e-6)
    assert rho_s == pytest.approx(prof.par["rhos"] * h**2 * 1e9, rel=1e-6)


def test_overdensities():
    z = 0.0
    rho_c = TEST_COSMO.critical_density(z).to_value(u.M_sun / u.Mpc**3)
    assert cosmo.overdensity_density(z, "200c", TEST_COSMO) == pytest.approx(200 * rho_c)
    assert cosmo.overdensity_density(z, "200m", TEST_COSMO) == pytest.approx(60 * rho_c)
    x = 0.3 - 1
    bn = 18 * math.pi**2 + 82 * x - 39 * x**2  # ≈ 101.1 at Ω_m = 0.3
    assert cosmo.overdensity_density(z, "vir", TEST_COSMO) == pytest.approx(bn * rho_c)
    with pytest.raises(ValueError, match="mass_def"):
        cosmo.overdensity_density(z, "500c")


def test_nfw_vectorised():
    rs, alpha, ks = cosmo.nfw_lensing_params(np.array([1e13, 1e14]), 5.0, 0.3, np.array([1.0, 2.0]))
    assert rs.shape == alpha.shape == ks.shape == (2,)
    one = cosmo.nfw_lensing_params(1e14, 5.0, 0.3, 2.0)
    assert (rs[1], alpha[1], ks[1]) == pytest.approx(one, rel=1e-12)


@pytest.mark.parametrize(
    ("z_l", "z_s"),
    [
        (0.5, 0.5),
        (1.0, 0.5),
        (0.0, 1.0),
        (-0.1, 1.0),
        (float("nan"), 1.0),
        (0.5, np.array([1.0, 0.2])),
    ],
)
def test_bad_redshifts(z_l, z_s):
    for fn in (cosmo.lens_distances, cosmo.sigma_crit):
        with pytest.raises(ValueError, match="z_l"):
            fn(z_l, z_s)
    with pytest.raises(ValueError, match="z_s"):
        cosmo.nfw_lensing_params(1e14, 5.0, z_l, z_s)


def test_bad_values():
    with pytest.raises(ValueError, match="sigma_v"):
        cosmo.theta_e_from_sigma_v(-10.0, ZL, ZS)
    with pytest.raises(ValueError, match="theta_e"):
        cosmo.mass_in_theta_e(0.0, ZL, ZS)
    with pytest.raises(ValueError, match="mass"):
        cosmo.nfw_lensing_params(-1e14, 5.0, ZL, ZS)
    with pytest.raises(ValueError, match="concentration"):
        cosmo.nfw_lensing_params(1e14, float("nan"), ZL, ZS)
