"""Einstein-radius conversions of AstroRIM's Table 1: θ_E → σ_SIS and M(<θ_E).

Walsh et al. ("AstroRIM", §4.1, Table 1) compare lens models through three numbers per lens,
all derived from the Einstein radius θ_E (arcsec) and the redshifts (z_l, z_s) in a flat ΛCDM
cosmology with H0 = 70 km/s/Mpc and Ω_m = 0.3:

* the Einstein mass, the projected mass inside θ_E,
  ``M(<θ_E) = π Σcrit (D_l θ_E)²``, in M_sun;
* the SIS-equivalent velocity dispersion, eq. 4 / eq. 36 inverted,
  ``σ_SIS = c √(θ_E D_s / (4π D_ls))``, in km/s.

This module only fixes the paper's cosmology and bundles the calls; the formulas live in
:mod:`lensml.physics.cosmology` (:func:`~lensml.physics.cosmology.mass_in_theta_e`,
:func:`~lensml.physics.cosmology.sigma_v_from_theta_e`,
:func:`~lensml.physics.cosmology.theta_e_from_sigma_v`). Σcrit = c² D_s / (4πG D_l D_ls)
uses astropy's constants (CODATA 2018 G, IAU 2015 M_sun). For an SIE in lensml's (and
lenstronomy's) θ_E convention the mass inside the critical isodensity ellipse is also
π Σcrit (D_l θ_E)², so the same conversion applies to the fitted SIE θ_E.

Inputs are numbers, array-likes or (CPU or GPU) tensors, broadcast against each other; the
results are Python floats for scalar inputs and numpy float64 arrays otherwise.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = [
    "TABLE1_H0",
    "TABLE1_OM0",
    "einstein_mass",
    "einstein_quantities",
    "paper_cosmology",
    "sigma_sis",
    "theta_e_from_sigma_sis",
]

#: Hubble constant of AstroRIM's Table 1 conversions, km/s/Mpc.
TABLE1_H0 = 70.0
#: Matter density of AstroRIM's Table 1 conversions (flat: Ω_Λ = 1 − Ω_m).
TABLE1_OM0 = 0.3


@functools.lru_cache(maxsize=1)
def paper_cosmology() -> Any:
    """AstroRIM's flat ΛCDM (H0 = 70 km/s/Mpc, Ω_m = 0.3, no radiation): an astropy
    ``FlatLambdaCDM`` (created once)."""
    from astropy.cosmology import FlatLambdaCDM

    return FlatLambdaCDM(H0=TABLE1_H0, Om0=TABLE1_OM0, name="AstroRIM flat LCDM")


def _cosmo(cosmo: Any) -> Any:
    return paper_cosmology() if cosmo is None else cosmo


def _array(value: Any) -> Any:
    """Tensors → numpy (detached, CPU); everything else unchanged."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    return value


def einstein_mass(theta_e: Any, z_l: Any, z_s: Any, cosmo: Any = None) -> float | np.ndarray:
    """Projected mass inside the Einstein radius, M(<θ_E) = π Σcrit (D_l θ_E)², in M_sun.

    Parameters
    ----------
    theta_e : float, array-like or Tensor
        Einstein radius in arcsec, > 0.
    z_l, z_s : float, array-like or Tensor
        Lens and source redshifts, z_s > z_l > 0.
    cosmo : str or astropy Cosmology, optional
        Default: :func:`paper_cosmology` (flat ΛCDM, H0 = 70, Ω_m = 0.3); a name is resolved by
        :func:`lensml.physics.cosmology.get_cosmology`.

    Raises
    ------
    ValueError
        For θ_E <= 0 or non-finite, or redshifts outside z_s > z_l > 0 (messages of
        :mod:`lensml.physics.cosmology`).
    """
    from lensml.physics import cosmology

    args = (_array(theta_e), _array(z_l), _array(z_s))
    return cosmology.mass_in_theta_e(*args, _cosmo(cosmo))


def sigma_sis(theta_e: Any, z_l: Any, z_s: Any, cosmo: Any = None) -> float | np.ndarray:
    """SIS-equivalent velocity dispersion σ = c √(θ_E D_s / (4π D_ls)) in km/s.

    Parameters as in :func:`einstein_mass` (θ_E in arcsec).
    """
    from lensml.physics import cosmology

    args = (_array(theta_e), _array(z_l), _array(z_s))
    return cosmology.sigma_v_from_theta_e(*args, _cosmo(cosmo))


def theta_e_from_sigma_sis(
    sigma_v: Any, z_l: Any, z_s: Any, cosmo: Any = None
) -> float | np.ndarray:
    """Inverse of :func:`sigma_sis`: θ_E = 4π (σ/c)² D_ls / D_s in arcsec (σ in km/s, > 0)."""
    from lensml.physics import cosmology

    args = (_array(sigma_v), _array(z_l), _array(z_s))
    return cosmology.theta_e_from_sigma_v(*args, _cosmo(cosmo))


def einstein_quantities(
    theta_e: Any, z_l: Any, z_s: Any, cosmo: Any = None
) -> dict[str, float | np.ndarray]:
    """Table 1's derived columns of one or many lenses.

    Parameters
    ----------
    theta_e : float, array-like or Tensor
        Einstein radius in arcsec, > 0.
    z_l, z_s : float, array-like or Tensor
        Lens and source redshifts, z_s > z_l > 0.
    cosmo : str or astropy Cosmology, optional
        Default: the paper's flat ΛCDM (:func:`paper_cosmology`).

    Returns
    -------
    dict
        ``theta_e`` (arcsec), ``sigma_sis`` (km/s), ``mass`` (M(<θ_E), M_sun) and
        ``sigma_crit_arcsec`` (Σcrit in M_sun / arcsec² at the lens), broadcast against each
        other.
    """
    from lensml.physics import cosmology

    c = _cosmo(cosmo)
    te, zl, zs = (_array(v) for v in (theta_e, z_l, z_s))
    mass = cosmology.mass_in_theta_e(te, zl, zs, c)
    shape = np.shape(mass)

    def full(value: Any) -> float | np.ndarray:
        arr = np.broadcast_to(np.asarray(value, dtype=float), shape)
        return float(arr) if arr.ndim == 0 else np.array(arr)

    return {
        "theta_e": full(te),
        "sigma_sis": full(cosmology.sigma_v_from_theta_e(te, zl, zs, c)),
        "mass": full(mass),
        "sigma_crit_arcsec": full(cosmology.sigma_crit_arcsec(zl, zs, c)),
    }
