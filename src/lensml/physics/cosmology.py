"""Cosmological distances and lensing scales (astropy; default Planck18).

Everything here runs once, outside the hot path, and returns Python floats (for scalar
inputs) or numpy arrays (inputs broadcast against each other); the results are passed to
the torch functions as numbers.

Units: distances in Mpc (physical, angular-diameter), masses in M_sun (no h), Σcrit in
M_sun / Mpc², angles in arcsec, velocity dispersions in km/s. Constants are astropy's
(CODATA 2018, IAU 2015).
"""

from __future__ import annotations

import math

import numpy as np
from astropy import constants as const
from astropy import cosmology as apc
from astropy import units as u

_NAMED = {"planck18": apc.Planck18, "planck15": apc.Planck15, "wmap9": apc.WMAP9}
MASS_DEFINITIONS = ("200c", "200m", "vir")

_ARCSEC = math.pi / 180.0 / 3600.0  # radians per arcsec
_C_KMS = const.c.to_value(u.km / u.s)
# c² / (4πG) in M_sun / Mpc
_C2_4PIG = (const.c**2 / (4 * math.pi * const.G)).to_value(u.M_sun / u.Mpc)


def get_cosmology(cosmo: str | apc.Cosmology | None = "Planck18") -> apc.Cosmology:
    """An astropy cosmology from a name (``"Planck18"``, ``"Planck15"``, ``"WMAP9"``,
    case-insensitive), an astropy ``Cosmology`` (returned as is), or None (Planck18)."""
    if cosmo is None:
        return apc.Planck18
    if isinstance(cosmo, apc.Cosmology):
        return cosmo
    if isinstance(cosmo, str) and cosmo.lower() in _NAMED:
        return _NAMED[cosmo.lower()]
    raise ValueError(
        f"get_cosmology: 'cosmo' must be one of 'Planck18', 'Planck15', 'WMAP9' or "
        f"an astropy Cosmology; got {cosmo!r}"
    )


def _out(value: np.ndarray) -> float | np.ndarray:
    value = np.asarray(value, dtype=float)
    return float(value) if value.ndim == 0 else value


def _positive(value, name: str, owner: str, unit: str) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{owner}: {name!r} must be finite and in (0, inf) {unit}; got {value!r}")
    return arr


def _redshifts(z_l, z_s, owner: str) -> tuple[np.ndarray, np.ndarray]:
    zl = np.asarray(z_l, dtype=float)
    zs = np.asarray(z_s, dtype=float)
    if not (np.all(np.isfinite(zl)) and np.all(np.isfinite(zs))):
        raise ValueError(f"{owner}: redshifts 'z_l' and 'z_s' must be finite; got {z_l!r}, {z_s!r}")
    if np.any(zl <= 0) or np.any(zs <= zl):
        raise ValueError(
            f"{owner}: redshifts must satisfy z_s > z_l > 0 ('z_l' lens, 'z_s' "
            f"source); got z_l={z_l!r}, z_s={z_s!r}"
        )
    return np.broadcast_arrays(zl, zs)


def _distance_z1z2(c: apc.Cosmology, z1: np.ndarray, z2: np.ndarray) -> np.ndarray:
    """D(z1, z2) in Mpc: ``angular_diameter_distance(z1, z2)`` on astropy >= 7.1 (where
    ``angular_diameter_distance_z1z2`` is deprecated), the ``_z1z2`` method before."""
    try:
        return c.angular_diameter_distance(z1, z2).to_value(u.Mpc)
    except TypeError:
        return c.angular_diameter_distance_z1z2(z1, z2).to_value(u.Mpc)


def lens_distances(z_l, z_s, cosmo=None) -> tuple[float | np.ndarray, ...]:
    """Angular-diameter distances (D_l, D_s, D_ls) in Mpc, for z_s > z_l > 0.

    D_ls is astropy's two-redshift distance (``angular_diameter_distance_z1z2``, correct also
    for curved cosmologies), not D_s − D_l.
    """
    zl, zs = _redshifts(z_l, z_s, "lens_distances")
    c = get_cosmology(cosmo)
    d_l = c.angular_diameter_distance(zl).to_value(u.Mpc)
    d_s = c.angular_diameter_distance(zs).to_value(u.Mpc)
    d_ls = _distance_z1z2(c, zl, zs)
    return _out(d_l), _out(d_s), _out(d_ls)


def sigma_crit(z_l, z_s, cosmo=None) -> float | np.ndarray:
    """Critical surface density Σcrit = c² D_s / (4πG D_l D_ls) in M_sun / Mpc²."""
    d_l, d_s, d_ls = lens_distances(z_l, z_s, cosmo)
    return _out(_C2_4PIG * np.asarray(d_s) / (np.asarray(d_l) * np.asarray(d_ls)))


def sigma_crit_arcsec(z_l, z_s, cosmo=None) -> float | np.ndarray:
    """Critical surface density in M_sun / arcsec² at the lens: Σcrit (D_l · 1″)²."""
    d_l = np.asarray(lens_distances(z_l, z_s, cosmo)[0])
    return _out(np.asarray(sigma_crit(z_l, z_s, cosmo)) * (d_l * _ARCSEC) ** 2)


def theta_e_from_sigma_v(sigma_v, z_l, z_s, cosmo=None) -> float | np.ndarray:
    """SIS Einstein radius θ_E = 4π (σ_v / c)² D_ls / D_s in arcsec (AstroRIM eq. 36).

    ``sigma_v``: velocity dispersion in km/s, > 0.
    """
    sv = _positive(sigma_v, "sigma_v", "theta_e_from_sigma_v", "km/s")
    _, d_s, d_ls = lens_distances(z_l, z_s, cosmo)
    return _out(4 * math.pi * (sv / _C_KMS) ** 2 * np.asarray(d_ls) / np.asarray(d_s) / _ARCSEC)


def sigma_v_from_theta_e(theta_e, z_l, z_s, cosmo=None) -> float | np.ndarray:
    """Inverse of :func:`theta_e_from_sigma_v`: σ_v in km/s from θ_E in arcsec (> 0)."""
    te = _positive(theta_e, "theta_e", "sigma_v_from_theta_e", "arcsec")
    _, d_s, d_ls = lens_distances(z_l, z_s, cosmo)
    return _out(_C_KMS * np.sqrt(te * _ARCSEC * np.asarray(d_s) / (4 * math.pi * np.asarray(d_ls))))


def mass_in_theta_e(theta_e, z_l, z_s, cosmo=None) -> float | np.ndarray:
    """Projected mass inside the Einstein radius, M = π Σcrit (D_l θ_E)², in M_sun.

    ``theta_e`` in arcsec (> 0).
    """
    te = _positive(theta_e, "theta_e", "mass_in_theta_e", "arcsec")
    d_l = np.asarray(lens_distances(z_l, z_s, cosmo)[0])
    return _out(math.pi * np.asarray(sigma_crit(z_l, z_s, cosmo)) * (d_l * te * _ARCSEC) ** 2)


def overdensity_density(z, mass_def: str = "200c", cosmo=None) -> float | np.ndarray:
    """Mean density Δ ρ_ref(z) inside the halo radius, in M_sun / Mpc³ (physical).

    ``"200c"``: 200 ρ_crit(z); ``"200m"``: 200 ρ_m(z) = 200 Ω_m(z) ρ_crit(z); ``"vir"``:
    Δ_c ρ_crit(z) with Δ_c = 18π² + 82x − 39x², x = Ω_m(z) − 1 (Bryan & Norman 1998; flat).
    """
    if mass_def not in MASS_DEFINITIONS:
        raise ValueError(
            f"overdensity_density: 'mass_def' must be one of {MASS_DEFINITIONS}; got {mass_def!r}"
        )
    c = get_cosmology(cosmo)
    zz = np.asarray(z, dtype=float)
    rho_c = c.critical_density(zz).to_value(u.M_sun / u.Mpc**3)
    if mass_def == "200c":
        delta = 200.0
    elif mass_def == "200m":
        delta = 200.0 * c.Om(zz)
    else:
        x = c.Om(zz) - 1.0
        delta = 18 * math.pi**2 + 82 * x - 39 * x**2
    return _out(delta * rho_c)


def nfw_lensing_params(
    mass, concentration, z_l, z_s, mass_def: str = "200c", cosmo=None
) -> tuple[float | np.ndarray, float | np.ndarray, float | np.ndarray]:
    """NFW lensing parameters from a halo mass and concentration.

    Parameters
    ----------
    mass : float or array
        Halo mass M_Δ in M_sun (physical, no h), > 0.
    concentration : float or array
        c = r_Δ / r_s, > 0.
    z_l, z_s : float or array
        Lens and source redshifts, z_s > z_l > 0.
    mass_def : {"200c", "200m", "vir"}
        Overdensity definition (see :func:`overdensity_density`).
    cosmo : str or astropy Cosmology, optional
        Default Planck18.

    Returns
    -------
    tuple
        ``(rs_arcsec, alpha_rs_arcsec, kappa_s)``: the scale radius r_s / D_l in arcsec, the
        deflection at r_s, α(r_s) = 4 κ_s θ_s (1 + ln ½) in arcsec (lenstronomy's
        ``alpha_Rs``), and κ_s = ρ_s r_s / Σcrit, with ρ_s = M / (4π r_s³ m(c)),
        m(c) = ln(1 + c) − c / (1 + c).
    """
    zl, _ = _redshifts(z_l, z_s, "nfw_lensing_params")
    r_s, rho_s = (
        np.asarray(v) for v in nfw_physical_params(mass, concentration, zl, mass_def, cosmo)
    )
    d_l = np.asarray(lens_distances(z_l, z_s, cosmo)[0])
    kappa_s = rho_s * r_s / np.asarray(sigma_crit(z_l, z_s, cosmo))
    rs_arcsec = r_s / d_l / _ARCSEC
    alpha_rs = 4 * kappa_s * rs_arcsec * (1 + math.log(0.5))
    return _out(rs_arcsec), _out(alpha_rs), _out(kappa_s)


def nfw_physical_params(
    mass, concentration, z, mass_def: str = "200c", cosmo=None
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """NFW scale radius r_s in Mpc and characteristic density ρ_s in M_sun / Mpc³ (physical)."""
    owner = "nfw_physical_params"
    m = _positive(mass, "mass", owner, "M_sun")
    conc = _positive(concentration, "concentration", owner, "(dimensionless)")
    zz = _positive(z, "z", owner, "(redshift)")
    r_delta = (3 * m / (4 * math.pi * np.asarray(overdensity_density(zz, mass_def, cosmo)))) ** (
        1 / 3
    )
    r_s = r_delta / conc
    rho_s = m / (4 * math.pi * r_s**3 * (np.log1p(conc) - conc / (1 + conc)))
    return _out(r_s), _out(rho_s)
