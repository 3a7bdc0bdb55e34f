"""Galaxy population of the ``shear`` generator: shear geometry, magnitude–radius draws and
matching, lensml's own bulge + disk + clump galaxies, and the COSMOS parametric galaxies.

Shear (GalSim convention)
-------------------------
An area-preserving reduced shear g = (g1, g2), |g| < 1, maps a source-frame position u to the
image position x = A u with

    A = [[1 + g1, g2], [g2, 1 − g1]] / √(1 − |g|²)
    A⁻¹ = [[1 − g1, −g2], [−g2, 1 + g1]] / √(1 − |g|²)

(det A = 1; A⁻¹ is the lens-equation Jacobian of the CNN shear paper's eq. 1 divided by
(1 − κ) √(1 − |g|²), an isotropic magnification that an area-preserving shear leaves out), so
the sheared image is I'(x) = I(A⁻¹ x): a round source becomes an ellipse stretched along x for
g1 > 0 and along the diagonal y = x for g2 > 0, exactly GalSim's ``.shear(g1=, g2=)``
(:func:`shear_matrix` equals ``galsim.Shear(g1, g2).getMatrix()``; the tests compare rendered
pixels and HSM moments with GalSim). An elliptical profile f((u ᵀ M u) / r²) becomes
f((x ᵀ A⁻¹ M A⁻¹ x) / r²), i.e. the quadratic form is transformed by the inverse shear matrix;
:func:`shear_ellipse` turns the new form back into (r_eff, q, φ) (r_eff √q, the circularised
radius, is unchanged because det A = 1).

Own galaxies (:func:`draw_own_galaxies`, :func:`render_own_galaxies`)
-------------------------------------------------------------------
A Sérsic bulge, an exponential disk and up to ``clump_max`` round Gaussian star-forming
clumps. Documented choices (defaults of the generator's Config): a fraction
``bulge_dominated_fraction`` has B/T ~ U(0.6, 1), the rest B/T ~ U(0, ``disk_bt_max``); bulge
n ~ U(``n_bulge_min``, ``n_bulge_max``), circularised r_b / r_d ~ U(0.15, 0.6), q_b ~ U(0.6, 1)
and φ_b = φ_d + N(0, 0.2 rad); disks are thin (intrinsic thickness ``disk_thickness``) and
randomly inclined, q_d = √((1 − q0²) cos² i + q0²) with cos i ~ U(0, 1), φ_d ~ U(0, π). The
number of clumps is Poisson(``clump_mean``) capped at ``clump_max``; they carry a fraction
~ U(0, ``clump_flux_max``) of the disk light (weights ~ U(0.2, 1)), sit in the disk plane at
radii drawn from the exponential disk's own light profile (Gamma(2) in units of the scale
length) and uniform azimuth, projected with the disk's inclination, with dispersions
σ_c = r_d × logU(0.05, 0.25) (floored at ``CLUMP_SIGMA_MIN`` = 0.005″, unresolved anyway).
The half-light radius is that of the circularised bulge + disk light (clumps counted as disk
light, since they follow it), solved by bisection with the regularised incomplete gamma
function.

Rendering (:func:`render_own_galaxies`): every component — disk, bulge, each clump (a round
Gaussian is a Sérsic of n = 1/2) — is an elliptical Sérsic before the shear and, because the
shear is linear, another elliptical Sérsic after it (:func:`component_rows`), so all of them
go through :func:`lensml.physics.stamps.render_sersic_stamps` (analytic cusp, PSF and pixel
integration) in large batches, on a grid ``oversample`` times finer than the pixels and
block-summed. The finer grid matters for HST-like PSFs of FWHM ≈ 2 pixels, where the stamp
renderer errs by ≈ 1 % of the peak at native resolution. Measured against GalSim (clash
preset, oversample 2, float64): sheared exponential disks to ≤ 4.3e-3 of the peak, full
bulge + disk + clump galaxies to ≤ 3.3e-3, HSM shapes to ≤ 5e-4, HSM sizes to ≤ 2.8e-3 and
fluxes −0.05 to −0.2 %; a measured ACS PSF (undersampled, FWHM ≈ 1.6 pixels) ≈ 5e-3.

COSMOS galaxies (:func:`load_cosmos_catalog`, :func:`render_cosmos_stamp`)
-------------------------------------------------------------------------
``galsim.COSMOSCatalog(use_real=False)`` on GalSim's COSMOS example data: each galaxy is its
measured single-Sérsic or bulge + disk fit (``makeGalaxy(gal_type="parametric")``), rotated by
a uniform angle, dilated and re-fluxed to the drawn (magnitude, half-light radius), sheared with
``.shear(g1=, g2=)``, shifted, convolved with the PSF and drawn with ``method="auto"``.
Its native half-light radius is computed like the own galaxies' (circularised components).

Magnitude–radius matching (§3.2 of the paper)
--------------------------------------------
:func:`histogram_ratio_weights` gives each drawn (magnitude, log10 radius) point the ratio of
the target's to the drawn population's normalised 2-d histogram in its bin; resampling the
drawn points with probabilities ∝ these weights (:func:`resample_indices`) reproduces the
target distribution at the bin resolution wherever the drawn population covers it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CLUMP_SIGMA_MIN",
    "CosmosCatalogData",
    "MatchWeights",
    "RenderPSF",
    "bulge_disk_hlr",
    "component_rows",
    "draw_magnitudes",
    "draw_own_galaxies",
    "draw_radii",
    "histogram_ratio_weights",
    "inverse_shear_matrix",
    "load_cosmos_catalog",
    "read_target_catalog",
    "render_cosmos_stamp",
    "render_own_galaxies",
    "resample_indices",
    "shear_ellipse",
    "shear_matrix",
]


CLUMP_SIGMA_MIN = 0.005  # arcsec, smallest clump dispersion

# --------------------------------------------------------------------------- shear geometry


def _g(g1: Any, g2: Any, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    g1 = torch.as_tensor(g1, dtype=dtype).reshape(-1)
    g2 = torch.as_tensor(g2, dtype=dtype).reshape(-1)
    if bool(((g1 * g1 + g2 * g2) >= 1).any()) or not bool(torch.isfinite(g1 + g2).all()):
        raise ValueError("shear: need finite reduced shears with |g| < 1")
    return g1, g2


def shear_matrix(g1: Any, g2: Any) -> Tensor:
    """GalSim's area-preserving shear matrix A, ``(B, 2, 2)`` (x_image = A u_source)."""
    g1, g2 = _g(g1, g2)
    s = 1.0 / torch.sqrt(1.0 - g1 * g1 - g2 * g2)
    return (
        torch.stack([torch.stack([1 + g1, g2], -1), torch.stack([g2, 1 - g1], -1)], -2)
        * s[:, None, None]
    )


def inverse_shear_matrix(g1: Any, g2: Any) -> Tensor:
    """A⁻¹ = [[1 − g1, −g2], [−g2, 1 + g1]] / √(1 − |g|²), ``(B, 2, 2)``."""
    g1, g2 = _g(g1, g2)
    s = 1.0 / torch.sqrt(1.0 - g1 * g1 - g2 * g2)
    return (
        torch.stack([torch.stack([1 - g1, -g2], -1), torch.stack([-g2, 1 + g1], -1)], -2)
        * s[:, None, None]
    )


def _ellipse_form(r_eff: Tensor, q: Tensor, phi: Tensor) -> Tensor:
    """Quadratic form F with (R / r_eff)² = xᵀ F x for a semi-major r_eff, axis ratio q and
    major-axis angle phi (rad CCW from +x), ``(B, 2, 2)``."""
    c, s = torch.cos(phi), torch.sin(phi)
    a = (c * c + s * s / (q * q)) / r_eff**2
    d = (s * s + c * c / (q * q)) / r_eff**2
    b = c * s * (1.0 - 1.0 / (q * q)) / r_eff**2
    return torch.stack([torch.stack([a, b], -1), torch.stack([b, d], -1)], -2)


def _form_to_ellipse(form: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(r_eff semi-major, q, phi) of a positive-definite form from :func:`_ellipse_form`."""
    a, b, d = form[:, 0, 0], form[:, 0, 1], form[:, 1, 1]
    half_tr = 0.5 * (a + d)
    disc = torch.sqrt((0.5 * (a - d)) ** 2 + b * b)
    mu1, mu2 = half_tr - disc, half_tr + disc  # mu1: along the major axis
    phi = 0.5 * torch.atan2(-2.0 * b, d - a)
    return 1.0 / torch.sqrt(mu1), torch.sqrt(mu1 / mu2), phi


def shear_ellipse(r_eff: Any, q: Any, phi: Any, g1: Any, g2: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Semi-major radius, axis ratio and angle of an elliptical profile after the shear g.

    The form F' = A⁻¹ F A⁻¹ of the sheared profile I(A⁻¹ x) is diagonalised. Inputs are
    numbers or ``(B,)`` tensors (r_eff > 0 arcsec, q in (0, 1], phi rad); outputs ``(B,)``
    float64. The circularised radius r_eff √q is preserved.
    """
    g1, g2 = _g(g1, g2)
    r = torch.as_tensor(r_eff, dtype=torch.float64).reshape(-1)
    q = torch.as_tensor(q, dtype=torch.float64).reshape(-1)
    phi = torch.as_tensor(phi, dtype=torch.float64).reshape(-1)
    ainv = inverse_shear_matrix(g1, g2)
    return _form_to_ellipse(ainv @ _ellipse_form(r, q, phi) @ ainv)


def bulge_disk_hlr(
    bulge_fraction: Tensor, r_bulge: Tensor, n_bulge: Tensor, r_disk: Tensor, iterations: int = 60
) -> Tensor:
    """Half-light radius (arcsec) of a circularised Sérsic bulge + exponential disk.

    Solves ``bt P(2 n_b, b_nb (R/r_b)^{1/n_b}) + (1 − bt) P(2, b_1 R / r_d) = 1/2`` by bisection
    in log R (P the regularised lower incomplete gamma function, b_n as in
    :func:`lensml.physics.light.sersic.b_n`). Inputs ``(B,)`` float64, radii circularised.
    """
    from lensml.physics.light.sersic import b_n

    bt, rb, nb, rd = (torch.as_tensor(v, dtype=torch.float64) for v in (
        bulge_fraction, r_bulge, n_bulge, r_disk))  # fmt: skip
    bb, b1 = b_n(nb), b_n(torch.ones_like(nb))

    def enclosed(r: Tensor) -> Tensor:
        zb = bb * torch.pow(r / rb, 1.0 / nb)
        return bt * torch.special.gammainc(2.0 * nb, zb) + (1 - bt) * torch.special.gammainc(
            2.0 * torch.ones_like(nb), b1 * r / rd
        )

    top = torch.maximum(rb, rd)
    lo, hi = torch.log(top * 1e-4), torch.log(top * 1e2)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = enclosed(mid.exp()) < 0.5
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return torch.exp(0.5 * (lo + hi))


# --------------------------------------------------------------------------- magnitude–radius


def _uniform(n: int, rng: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=rng, dtype=torch.float64)


def draw_magnitudes(
    n: int, rng: torch.Generator, mag_min: float, mag_max: float, slope: float
) -> Tensor:
    """Magnitudes with dN/dm ∝ 10^(slope m) on [mag_min, mag_max] (inverse CDF), ``(n,)``."""
    u = _uniform(n, rng)
    if abs(slope) < 1e-12:
        return mag_min + (mag_max - mag_min) * u
    k = slope * math.log(10.0)
    a, b = math.exp(k * (mag_min - mag_max)), 1.0
    return mag_max + torch.log(a + u * (b - a)) / k


def draw_radii(
    mag: Tensor, rng: torch.Generator, hlr_at_23: float, slope: float, scatter: float,
    hlr_min: float, hlr_max: float,
) -> Tensor:  # fmt: skip
    """Half-light radii (arcsec): log10 r ~ N(log10 hlr_at_23 + slope (m − 23), scatter²)
    truncated to [hlr_min, hlr_max] (inverse CDF of the truncated normal), ``(n,)``."""
    mu = math.log10(hlr_at_23) + slope * (mag - 23.0)
    if scatter <= 0:
        return torch.clamp(10.0**mu, hlr_min, hlr_max)
    normal = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    a = normal.cdf((math.log10(hlr_min) - mu) / scatter)
    b = normal.cdf((math.log10(hlr_max) - mu) / scatter)
    u = a + (b - a) * _uniform(len(mu), rng)
    z = normal.icdf(u.clamp(1e-15, 1 - 1e-15))
    return torch.clamp(10.0 ** (mu + scatter * z), hlr_min, hlr_max)


@dataclass(frozen=True)
class MatchWeights:
    """Result of :func:`histogram_ratio_weights`.

    Attributes
    ----------
    weights : numpy.ndarray
        ``(m,)`` non-negative resampling weight of each drawn point (0 outside the target's
        bins or where the target has no object).
    coverage : float
        Fraction of the target population in bins that hold drawn points (the part that
        can be matched), in [0, 1].
    mag_edges, logr_edges : numpy.ndarray
        Bin edges used.
    """

    weights: np.ndarray
    coverage: float
    mag_edges: np.ndarray
    logr_edges: np.ndarray


def histogram_ratio_weights(
    mag: Any, log_r: Any, target_mag: Any, target_log_r: Any, bins: tuple[int, int] = (16, 16)
) -> MatchWeights:
    """Resampling weights that match drawn (mag, log10 r) points to a target distribution.

    Both populations are histogrammed on the same ``bins`` over the target's range; the weight
    of a drawn point is ``h_target(bin) / h_drawn(bin)`` with both histograms normalised to
    unit sum (the paper's §3.2 resampling weights, their Fig. 7 bottom right).

    Raises
    ------
    ValueError
        Empty or non-finite inputs, or fewer than 1 bin per axis.
    """
    src = [np.asarray(v, dtype=np.float64).reshape(-1) for v in (mag, log_r)]
    tgt = [np.asarray(v, dtype=np.float64).reshape(-1) for v in (target_mag, target_log_r)]
    if len(src[0]) == 0 or len(src[0]) != len(src[1]) or len(tgt[0]) == 0:
        raise ValueError("histogram_ratio_weights: need non-empty, equal-length arrays")
    if len(tgt[0]) != len(tgt[1]):
        raise ValueError("histogram_ratio_weights: target_mag and target_log_r lengths differ")
    if not all(np.isfinite(v).all() for v in (*src, *tgt)):
        raise ValueError("histogram_ratio_weights: inputs must be finite")
    nb = tuple(int(b) for b in bins)
    if len(nb) != 2 or min(nb) < 1:
        raise ValueError(f"histogram_ratio_weights: bins must be two integers >= 1, got {bins}")
    edges = []
    for v, k in zip(tgt, nb, strict=True):
        lo, hi = float(v.min()), float(v.max())
        pad = 1e-9 * max(1.0, abs(hi - lo)) if hi > lo else 0.5
        edges.append(np.linspace(lo - pad, hi + pad, k + 1))
    h_t, _, _ = np.histogram2d(tgt[0], tgt[1], bins=edges)
    h_s, _, _ = np.histogram2d(src[0], src[1], bins=edges)
    h_t /= h_t.sum()
    coverage = float(h_t[h_s > 0].sum())
    if h_s.sum() > 0:
        h_s /= h_s.sum()
    ratio = np.divide(h_t, h_s, out=np.zeros_like(h_t), where=h_s > 0)
    i = np.digitize(src[0], edges[0]) - 1
    j = np.digitize(src[1], edges[1]) - 1
    inside = (i >= 0) & (i < nb[0]) & (j >= 0) & (j < nb[1])
    w = np.zeros(len(src[0]))
    w[inside] = ratio[i[inside], j[inside]]
    return MatchWeights(w, coverage, edges[0], edges[1])


def resample_indices(weights: Any, n: int, rng: torch.Generator) -> Tensor:
    """``n`` indices drawn with replacement with probabilities ∝ ``weights`` (int64).

    Raises
    ------
    ValueError
        If no weight is positive (the drawn population does not overlap the target).
    """
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    if not bool((w > 0).any()):
        raise ValueError(
            "target_catalog: the drawn magnitude-radius population does not overlap the "
            "target catalogue's; widen mag_min/mag_max or hlr_min/hlr_max"
        )
    return torch.multinomial(w, n, replacement=True, generator=rng)


def read_target_catalog(
    path: str, mag_column: str, radius_column: str, radius_unit: str, pixel_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """(magnitudes, half-light radii in arcsec) of the finite, positive-radius rows of a FITS
    table; ``radius_unit`` is ``"arcsec"`` or ``"pixel"`` (times ``pixel_scale``).

    Raises
    ------
    ValueError
        Missing/unreadable file, missing columns (the message lists the available ones),
        or fewer than 10 usable rows.
    """
    from lensml.data.fits_io import read_catalog

    table = read_catalog(path)
    missing = [c for c in (mag_column, radius_column) if c not in table.colnames]
    if missing:
        raise ValueError(
            f"target_catalog {path}: no column(s) {missing}; it has {table.colnames} "
            "(set target_mag_column / target_radius_column)"
        )
    try:
        mag = np.asarray(table[mag_column], dtype=np.float64).reshape(-1)
        rad = np.asarray(table[radius_column], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(
            f"target_catalog {path}: columns {mag_column!r}, {radius_column!r} must be numeric"
        ) from None
    if radius_unit == "pixel":
        rad = rad * pixel_scale
    ok = np.isfinite(mag) & np.isfinite(rad) & (rad > 0)
    if ok.sum() < 10:
        raise ValueError(
            f"target_catalog {path}: only {int(ok.sum())} rows with finite {mag_column!r} and "
            f"positive finite {radius_column!r}; need at least 10"
        )
    return mag[ok], rad[ok]


# --------------------------------------------------------------------------- own galaxies


def draw_own_galaxies(n: int, rng: torch.Generator, cfg: Any, hlr: Tensor) -> dict[str, Tensor]:
    """Draw the structure of ``n`` own galaxies of half-light radii ``hlr`` (arcsec, (n,)).

    ``cfg`` provides the population fields of the generator's Config (see module docstring).
    Returns float64 ``(n,)`` tensors ``bt, n_b, q_b, phi_b, r_b, q_d, phi_d, r_d`` (radii
    circularised, arcsec), ``clump_frac`` and ``n_clumps``, and ``(n, clump_max)`` clump
    arrays ``clump_x, clump_y`` (source-frame offsets, arcsec), ``clump_sigma`` (arcsec) and
    ``clump_weight`` (fractions of the clump flux, 0 for absent clumps). A fixed number of
    random numbers is drawn per galaxy, so item i does not depend on the others.
    """
    f64 = torch.float64
    c_max = int(cfg.clump_max)
    dominated = _uniform(n, rng) < cfg.bulge_dominated_fraction
    bt = torch.where(dominated, _uniform(n, rng, 0.6, 1.0), _uniform(n, rng, 0.0, cfg.disk_bt_max))
    n_b = _uniform(n, rng, cfg.n_bulge_min, cfg.n_bulge_max)
    ratio = _uniform(n, rng, 0.15, 0.6)
    cos_i = _uniform(n, rng)
    q0 = cfg.disk_thickness
    q_d = torch.sqrt((1 - q0 * q0) * cos_i * cos_i + q0 * q0)
    phi_d = _uniform(n, rng, 0.0, math.pi)
    q_b = _uniform(n, rng, 0.6, 1.0)
    phi_b = phi_d + 0.2 * torch.randn(n, generator=rng, dtype=f64)
    n_cl = torch.poisson(torch.full((n,), float(cfg.clump_mean), dtype=f64), generator=rng)
    n_cl = torch.clamp(n_cl, max=c_max)
    clump_frac = _uniform(n, rng, 0.0, cfg.clump_flux_max) * (n_cl > 0)
    u1 = torch.rand(n, c_max, generator=rng, dtype=f64).clamp_min(1e-12)
    u2 = torch.rand(n, c_max, generator=rng, dtype=f64).clamp_min(1e-12)
    theta = 2 * math.pi * torch.rand(n, c_max, generator=rng, dtype=f64)
    log_frac = math.log(0.05) + math.log(5.0) * torch.rand(n, c_max, generator=rng, dtype=f64)
    weight = 0.2 + 0.8 * torch.rand(n, c_max, generator=rng, dtype=f64)
    active = torch.arange(c_max)[None, :] < n_cl[:, None]
    weight = weight * active
    weight = weight / weight.sum(1, keepdim=True).clamp_min(1e-300)
    # sizes: solve the composite half-light radius for r_d = 1, then scale
    one = torch.ones(n, dtype=f64)
    h1 = bulge_disk_hlr(bt, ratio, n_b, one)
    r_d = hlr.to(f64) / h1
    r_b = ratio * r_d
    # clumps in the disk plane: radius ~ Gamma(2, scale length) of the face-on disk
    from lensml.physics.light.sersic import b_n

    r_major = r_d / torch.sqrt(q_d)
    rad = -torch.log(u1 * u2) * (r_major / b_n(one))[:, None]
    xp, yp = rad * torch.cos(theta), rad * torch.sin(theta) * q_d[:, None]
    c, s = torch.cos(phi_d)[:, None], torch.sin(phi_d)[:, None]
    return {
        "bt": bt, "n_b": n_b, "q_b": q_b, "phi_b": phi_b, "r_b": r_b,
        "q_d": q_d, "phi_d": phi_d, "r_d": r_d, "clump_frac": clump_frac, "n_clumps": n_cl,
        "clump_x": c * xp - s * yp, "clump_y": s * xp + c * yp,
        "clump_sigma": (r_d[:, None] * torch.exp(log_frac)).clamp_min(CLUMP_SIGMA_MIN),
        "clump_weight": weight,
    }  # fmt: skip


@dataclass(frozen=True)
class RenderPSF:
    """PSF of the own-galaxy renderer.

    Attributes
    ----------
    kernel : Tensor or dict
        ``(1 or B, 1, K, K)`` pixel-integrated kernel at pixel_scale / oversample (K odd,
        unit sum; one per galaxy or shared), or a parametric mapping such as
        ``{"kind": "gaussian", "fwhm": 0.121}`` for :func:`render_sersic_stamps`.
    margin : int
        Native pixels around the stamp from which the PSF scatters light in (sets the
        kernel size of a parametric PSF: 2 margin oversample + 1 sub-pixels).
    oversample : int
        The components are rendered on a grid this many times finer than the pixels and
        block-summed (pixel-integrated fluxes add exactly).
    """

    kernel: Any
    margin: int
    oversample: int


def component_rows(
    p: dict[str, Tensor], flux: Tensor, g1: Tensor, g2: Tensor, dx: Tensor, dy: Tensor
) -> dict[str, Tensor]:
    """Every light component of sheared galaxies as one elliptical Sérsic per row.

    Rows: the exponential disk of each galaxy with disk light, its bulge when B/T > 0, and
    each clump (a round Gaussian exp(−R²/2σ²) = Sérsic n = 1/2 with r_eff = σ √(2 b_{1/2}),
    b_{1/2} the stamp renderer's b_n, so σ is exact). Each component
    profile f(uᵀ F u) is sheared into f(xᵀ A⁻¹ F A⁻¹ x) (:func:`shear_ellipse`); clump
    centres p move to A p; every centre is then offset by (dx, dy).

    Returns
    -------
    dict
        ``(R,)`` tensors ``owner`` (int64 galaxy index), ``kind`` (int64: 0 disk, 1 bulge,
        2 clump) and float64 ``flux``, ``r_eff``
        (semi-major, arcsec), ``n``, ``q``, ``phi`` (rad), ``x0``, ``y0`` (arcsec).
    """
    from lensml.physics.light.sersic import b_n

    f64 = torch.float64
    flux, g1, g2, dx, dy = (torch.as_tensor(v, dtype=f64) for v in (flux, g1, g2, dx, dy))
    bsz = len(flux)
    idx = torch.arange(bsz)
    f_disk = flux * (1 - p["bt"]) * (1 - p["clump_frac"])
    f_bulge = flux * p["bt"]
    f_clump = (flux * (1 - p["bt"]) * p["clump_frac"])[:, None] * p["clump_weight"]
    a_mat = shear_matrix(g1, g2)
    centres = torch.einsum("bij,bcj->bci", a_mat, torch.stack([p["clump_x"], p["clump_y"]], -1))
    c_on = f_clump > 0
    c_gal = idx[:, None].expand_as(f_clump)[c_on]
    n_cl = int(c_on.sum())
    parts = {
        "owner": (idx, idx, c_gal),
        "kind": (torch.zeros(bsz, dtype=torch.int64), torch.ones(bsz, dtype=torch.int64),
                 torch.full((n_cl,), 2, dtype=torch.int64)),
        "flux": (f_disk, f_bulge, f_clump[c_on]),
        "r_eff": (p["r_d"] / p["q_d"].sqrt(), p["r_b"] / p["q_b"].sqrt(),
                  p["clump_sigma"][c_on] * torch.sqrt(2 * b_n(torch.tensor(0.5, dtype=f64)))),
        "n": (torch.ones(bsz, dtype=f64), p["n_b"], torch.full((n_cl,), 0.5, dtype=f64)),
        "q": (p["q_d"], p["q_b"], torch.ones(n_cl, dtype=f64)),
        "phi": (p["phi_d"], p["phi_b"], torch.zeros(n_cl, dtype=f64)),
        "x0": (dx, dx, dx[c_gal] + centres[..., 0][c_on]),
        "y0": (dy, dy, dy[c_gal] + centres[..., 1][c_on]),
    }  # fmt: skip
    rows = {k: torch.cat(v) for k, v in parts.items()}
    keep = rows["flux"] > 0
    rows = {k: v[keep] for k, v in rows.items()}
    o = rows["owner"]
    rows["r_eff"], rows["q"], rows["phi"] = shear_ellipse(
        rows["r_eff"], rows["q"], rows["phi"], g1[o], g2[o]
    )
    return rows


def render_own_galaxies(
    p: dict[str, Tensor], flux: Tensor, g1: Tensor, g2: Tensor, dx: Tensor, dy: Tensor,
    size: int, pixel_scale: float, psf: RenderPSF, dtype: torch.dtype = torch.float32,
    max_rows: int = 512,
) -> Tensor:  # fmt: skip
    """PSF-convolved, pixel-integrated stamps ``(B, 1, size, size)`` of own galaxies.

    Parameters
    ----------
    p : dict
        From :func:`draw_own_galaxies` (rows of the B galaxies).
    flux : Tensor
        ``(B,)`` total flux (image units × pixel).
    g1, g2 : Tensor
        ``(B,)`` reduced shear, |g| < 1.
    dx, dy : Tensor
        ``(B,)`` post-shear centroid offset from the stamp centre, arcsec.
    size, pixel_scale : int, float
        Stamp side (pixels) and pixel scale (arcsec).
    psf : RenderPSF
    dtype : torch.dtype
        Of the computation and result (float32 by default, float64 for reference tests).
    max_rows : int
        Components rendered per call of :func:`render_sersic_stamps` (memory bound).
    """
    from lensml.physics.grids import PixelGrid
    from lensml.physics.stamps import render_sersic_stamps

    rows = component_rows(p, flux, g1, g2, dx, dy)
    out = torch.zeros(len(flux), 1, size, size, dtype=dtype)
    fb = psf.oversample
    grid = PixelGrid.square(size * fb, pixel_scale / fb)
    kw: dict[str, Any] = {"margin": max(10, psf.margin * fb)}
    if not isinstance(psf.kernel, Tensor):
        kw["psf_size"] = max(2 * psf.margin * fb + 1, 9)
    for part in torch.arange(len(rows["owner"])).split(max_rows):
        r = {k: v[part] for k, v in rows.items()}
        kernel = psf.kernel
        if isinstance(kernel, Tensor):
            kernel = (kernel if kernel.shape[0] == 1 else kernel[r["owner"]]).to(dtype)
        img = render_sersic_stamps(
            grid, r["r_eff"].to(dtype), r["n"].to(dtype), r["q"].to(dtype), r["phi"].to(dtype),
            r["x0"].to(dtype), r["y0"].to(dtype), flux=r["flux"].to(dtype), psf=kernel,
            dtype=dtype, **kw,
        )  # fmt: skip
        if fb > 1:
            img = F.avg_pool2d(img, fb) * (fb * fb)
        out = out.index_add(0, r["owner"], img)
    return out


# --------------------------------------------------------------------------- COSMOS galaxies


@dataclass(frozen=True)
class CosmosCatalogData:
    """Parametric COSMOS galaxies ready to transform.

    Attributes
    ----------
    prototypes : tuple
        GalSim objects from ``COSMOSCatalog.makeGalaxy(i, gal_type="parametric")``.
    mag : numpy.ndarray
        F814W ``mag_auto`` of each galaxy.
    hlr : numpy.ndarray
        Circularised half-light radius (arcsec) of the parametric model.
    flux : numpy.ndarray
        Flux of each prototype (GalSim's HST units).
    """

    prototypes: tuple[Any, ...]
    mag: np.ndarray
    hlr: np.ndarray
    flux: np.ndarray

    def __len__(self) -> int:
        return len(self.prototypes)


@functools.lru_cache(maxsize=4)
def load_cosmos_catalog(directory: str, exclusion_level: str = "marginal") -> CosmosCatalogData:
    """Build every parametric galaxy of GalSim's COSMOS example catalogue (cached).

    Raises
    ------
    ValueError
        If GalSim cannot read the catalogue in ``directory``.
    """
    import galsim

    from lensml.sims.shear_presets import COSMOS_FILES

    try:
        cat = galsim.COSMOSCatalog(
            file_name=COSMOS_FILES["catalog"], dir=directory, use_real=False,
            exclusion_level=exclusion_level,
        )  # fmt: skip
    except (OSError, ValueError, galsim.GalSimError) as err:
        raise ValueError(
            f"cosmos_dir {directory}: cannot read the COSMOS catalogue: {err}"
        ) from None
    protos, mags, hlrs, fluxes = [], [], [], []
    for i in range(cat.nobjects):
        rec = cat.getParametricRecord(i)
        if rec["use_bulgefit"]:  # de Vaucouleurs bulge + exponential disk
            fb, fd = float(rec["flux"][1]), float(rec["flux"][2])
            bt, rb, nb, rd = fb / (fb + fd), float(rec["hlr"][1]), 4.0, float(rec["hlr"][2])
        else:  # single Sérsic (n clipped to [0.3, 6] as GalSim does)
            n_s = min(max(float(rec["sersicfit"][2]), 0.3), 6.0)
            bt, rb, nb, rd = 1.0, float(rec["hlr"][0]), n_s, float(rec["hlr"][0])
        hlr = float(bulge_disk_hlr(*(torch.tensor([v], dtype=torch.float64) for v in (
            bt, rb, nb, rd))))  # fmt: skip
        proto = cat.makeGalaxy(i, gal_type="parametric")
        protos.append(proto)
        mags.append(float(rec["mag_auto"]))
        hlrs.append(hlr)
        fluxes.append(float(proto.flux))
    return CosmosCatalogData(tuple(protos), np.array(mags), np.array(hlrs), np.array(fluxes))


def render_cosmos_stamp(
    proto: Any, rotation: float, dilation: float, flux: float, g1: float, g2: float,
    dx: float, dy: float, psf: Any, size: int, pixel_scale: float,
) -> np.ndarray:  # fmt: skip
    """One GalSim stamp ``(size, size)`` float64 of a COSMOS prototype.

    ``rotation`` (rad, CCW), ``dilation`` (flux-preserving size factor), ``flux`` (total),
    ``g1, g2`` (reduced shear), ``dx, dy`` (post-shear offset, arcsec), ``psf`` a GalSim object.
    """
    import galsim

    gal = proto.rotate(rotation * galsim.radians).dilate(dilation).withFlux(flux)
    gal = gal.shear(g1=g1, g2=g2).shift(dx, dy)
    img = galsim.Convolve(gal, psf).drawImage(nx=size, ny=size, scale=pixel_scale, method="auto")
    return img.array.astype(np.float64)
