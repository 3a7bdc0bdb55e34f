"""Scene pieces of the ``sersic`` generator: PSF sample, galaxies, stars, S/N, neighbours.

PSF (GaLNet §2.2: a "PSF sample" of double-Moffat models, FWHM 0.70″ ± 0.11″ in KiDS r)
------------------------------------------------------------------------------------------
Each stamp gets its own double Moffat (:func:`lensml.physics.psf.double_moffat_profile`):
a core of index β ~ U(β_survey ± ``psf_beta_spread``) carrying a fraction
``frac1 ~ U(psf_core_fraction_min, psf_core_fraction_max)`` of the light and a wing of
index ``psf_wing_beta`` and ``psf_wing_fwhm_ratio`` times the core's FWHM, both with the
same mild ellipticity (area-preserving, ``q ~ U(psf_q_min, 1)``, random angle).  The two
Moffat widths are scaled together so that the FWHM of the *sum* (circularised: the
half-maximum isophote encloses π (FWHM/2)²) equals the drawn FWHM ~ N(mean, std)
truncated to [min, max] of the survey preset (:func:`double_moffat_fwhm` solves the
half-maximum radius by bisection).  These shape numbers are generator choices in the
spirit of 2DPHOT's two-Moffat PSFs (La Barbera et al. 2008), not measured KiDS values.

The PSF *image* (``"psf"`` output, ``psf_size``² pixels, 25 × 25 in GaLNet) is the
pixel-integrated profile truncated to that box and normalised to unit sum; every object of
the scene (target, neighbours, stars) is convolved with exactly that truncated, normalised
kernel, so a fitter that convolves its model with the ``"psf"`` image has no PSF mismatch.
Pixel integration: the 3 × 3 sub-pixel midpoint rule plus the fourth-order term
(h²/24 ∇²), measured max error 1.1e-4 of the peak against 21 × 21 sub-pixels.

Galaxies are rendered by :func:`lensml.physics.stamps.render_sersic_stamps` with the
parametric PSF truncated to the same box (``psf_size``), then divided by the box's
analytic PSF flux, which is the same as convolving with the unit-sum truncated kernel.
Stars are the same kernel centred at sub-pixel positions.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lensml.physics.grids import PixelGrid
from lensml.sims.imaging import ImagingSurvey
from lensml.sims.sersic_priors import truncated_exponential, truncated_normal, uniform

__all__ = [
    "aperture_mask",
    "aperture_snr",
    "double_moffat_fwhm",
    "draw_neighbours",
    "draw_psf",
    "psf_boxes",
    "render_galaxies",
    "render_points",
]

_F64 = torch.float64
_SUB = 3  # sub-pixels per side for the PSF pixel integration
_PSF_KEYS = ("fwhm", "beta", "fwhm2", "beta2", "frac1", "q", "phi")


def _moffat_radial(r: Tensor, fwhm: Tensor, beta: Tensor) -> Tensor:
    alpha2 = (fwhm / (2.0 * torch.sqrt(torch.pow(2.0, 1.0 / beta) - 1.0))) ** 2
    return (beta - 1.0) / (math.pi * alpha2) * torch.pow(1.0 + r * r / alpha2, -beta)


def double_moffat_fwhm(
    fwhm: Tensor, beta: Tensor, fwhm2: Tensor, beta2: Tensor, frac1: Tensor
) -> Tensor:
    """FWHM of the sum of two concentric circular Moffats (bisection, float64).

    Parameters are ``(B,)`` tensors as in :func:`lensml.physics.psf.double_moffat_profile`
    (``frac1`` the flux fraction of the first).  The half-maximum radius lies between the
    two components' own half widths; 60 bisection steps give machine precision.
    """
    args = [torch.as_tensor(t, dtype=_F64) for t in (fwhm, beta, fwhm2, beta2, frac1)]
    f1, b1, f2, b2, w = torch.broadcast_tensors(*args)

    def profile(r: Tensor) -> Tensor:
        return w * _moffat_radial(r, f1, b1) + (1.0 - w) * _moffat_radial(r, f2, b2)

    half = 0.5 * profile(torch.zeros_like(f1))
    lo, hi = 0.5 * torch.minimum(f1, f2), 0.5 * torch.maximum(f1, f2)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        above = profile(mid) > half
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return lo + hi


def draw_psf(n: int, rng: torch.Generator, cfg: Any, survey: ImagingSurvey) -> dict[str, Tensor]:
    """Draw ``n`` double-Moffat PSFs (see the module docstring).

    Returns
    -------
    dict of str to Tensor
        float64 ``(n,)``: ``fwhm``, ``beta``, ``fwhm2``, ``beta2``, ``frac1``, ``q``, ``phi``
        (the arguments of :func:`lensml.physics.psf.double_moffat_profile`; ``phi`` in
        radians) and ``fwhm_total`` (arcsec), the FWHM of the sum.
    """
    fwhm_total = truncated_normal(
        n, rng, survey.psf_fwhm_mean, survey.psf_fwhm_std, survey.psf_fwhm_min, survey.psf_fwhm_max
    )
    beta = uniform(
        n, rng, survey.psf_beta - cfg.psf_beta_spread, survey.psf_beta + cfg.psf_beta_spread
    )
    frac1 = uniform(n, rng, cfg.psf_core_fraction_min, cfg.psf_core_fraction_max)
    q = uniform(n, rng, cfg.psf_q_min, 1.0)
    phi = uniform(n, rng, 0.0, math.pi)
    ratio = cfg.psf_wing_fwhm_ratio
    beta2 = torch.full_like(beta, cfg.psf_wing_beta)
    unit = double_moffat_fwhm(
        torch.ones_like(beta), beta, torch.full_like(beta, ratio), beta2, frac1
    )
    core = fwhm_total / unit
    return {
        "fwhm": core, "beta": beta, "fwhm2": core * ratio, "beta2": beta2, "frac1": frac1,
        "q": q, "phi": phi, "fwhm_total": fwhm_total,
    }  # fmt: skip


def _psf_args(psf: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    return {k: psf[k].to(dtype) for k in _PSF_KEYS}


def psf_boxes(
    psf: dict[str, Tensor],
    size: int,
    pixel_scale: float,
    dx: Tensor | None = None,
    dy: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Pixel-integrated PSF flux in a ``size × size`` box, ``(B, size, size)``.

    The box's centre pixel is at offset ``(−dx, −dy)`` arcsec from the PSF centre (``dx``,
    ``dy`` per item, default 0): a star at sub-pixel offset ``(dx, dy)`` from the centre of
    its nearest pixel.  Normalised analytically (the untruncated profile integrates to 1), so
    the sum is the fraction of the light inside the box.  Integration: 3 × 3 sub-pixel
    midpoints plus ``h²/24 ∇²`` (fourth order).
    """
    from lensml.physics.psf import double_moffat_profile

    args = _psf_args(psf, dtype)
    b = args["fwhm"].shape[0]
    zero = torch.zeros(b, dtype=dtype)
    dx = zero if dx is None else dx.to(dtype)
    dy = zero if dy is None else dy.to(dtype)
    h = pixel_scale / _SUB
    m = size * _SUB + 2
    ax = (torch.arange(m, dtype=dtype) - (m - 1) / 2) * h
    xx = ax[None, None, :] - dx[:, None, None]
    yy = ax[None, :, None] - dy[:, None, None]
    xx, yy = torch.broadcast_tensors(xx, yy)
    dens = double_moffat_profile(xx, yy, **args) * (h * h)
    lap = (
        dens[:, 1:-1, 2:] + dens[:, 1:-1, :-2] + dens[:, 2:, 1:-1] + dens[:, :-2, 1:-1]
        - 4.0 * dens[:, 1:-1, 1:-1]
    )  # fmt: skip
    inner = dens[:, 1:-1, 1:-1] + lap / 24.0
    return F.avg_pool2d(inner.unsqueeze(1), _SUB).squeeze(1) * (_SUB * _SUB)


def render_galaxies(
    grid: PixelGrid,
    gal: dict[str, Tensor],
    psf: dict[str, Tensor],
    psf_size: int,
    box_flux: Tensor,
    core: int = 15,
) -> Tensor:
    """PSF-convolved, pixel-integrated Sérsic galaxies in ADU, ``(B, 1, H, W)`` float32.

    ``gal`` holds ``(B,)`` tensors ``x``, ``y`` (arcsec), ``flux`` (ADU), ``r_eff`` (arcsec,
    semi-major), ``q``, ``pa`` (degrees CCW from +x), ``n``; ``psf`` one PSF per item
    (:func:`draw_psf`); ``box_flux`` the ``(B,)`` PSF flux inside the ``psf_size`` box
    (:func:`psf_boxes` sums), by which the result is divided (unit-sum truncated kernel).
    """
    from lensml.physics.stamps import render_sersic_stamps

    f32 = torch.float32
    mapping: dict[str, Any] = {"kind": "double_moffat", **_psf_args(psf, f32)}
    img = render_sersic_stamps(
        grid,
        gal["r_eff"].to(f32),
        gal["n"].to(f32),
        gal["q"].to(f32),
        torch.deg2rad(gal["pa"].to(_F64)).to(f32),
        gal["x"].to(f32),
        gal["y"].to(f32),
        flux=gal["flux"].to(f32),
        psf=mapping,
        psf_size=psf_size,
        core=core,
        dtype=f32,
    )
    return img / box_flux.to(f32)[:, None, None, None]


def render_points(
    grid: PixelGrid,
    x: Tensor,
    y: Tensor,
    flux: Tensor,
    psf: dict[str, Tensor],
    psf_size: int,
    box_flux: Tensor,
) -> Tensor:
    """Point sources (stars) of ``flux`` ADU at ``(x, y)`` arcsec, ``(B, 1, H, W)`` float32.

    Each is the truncated, unit-sum PSF of its item centred at its sub-pixel position
    (inside the stamp); ``box_flux`` as in :func:`render_galaxies`.
    """
    nn, ps = grid.nx, float(grid.pixel_scale)
    half = psf_size // 2
    c = (nn - 1) / 2
    ix = torch.round(x.to(_F64) / ps + c).long().clamp(0, nn - 1)
    iy = torch.round(y.to(_F64) / ps + c).long().clamp(0, nn - 1)
    dx = x.to(_F64) - (ix.to(_F64) - c) * ps
    dy = y.to(_F64) - (iy.to(_F64) - c) * ps
    boxes = psf_boxes(psf, psf_size, ps, dx, dy) / box_flux.to(torch.float32)[:, None, None]
    boxes = boxes * flux.to(torch.float32)[:, None, None]
    b, side = boxes.shape[0], nn + 2 * half
    rows = iy[:, None] + torch.arange(psf_size)
    cols = ix[:, None] + torch.arange(psf_size)
    idx = (rows[:, :, None] * side + cols[:, None, :]).reshape(b, -1)
    canvas = torch.zeros(b, side * side).scatter_add(1, idx, boxes.reshape(b, -1))
    canvas = canvas.reshape(b, side, side)[:, half : half + nn, half : half + nn]
    return canvas.unsqueeze(1)


def aperture_mask(grid: PixelGrid, radius: float) -> Tensor:
    """Boolean ``(H, W)`` mask of the pixels whose centres lie within ``radius`` arcsec of
    the stamp centre."""
    x, y = grid.coordinates(dtype=_F64)
    return x * x + y * y <= radius * radius


def aperture_snr(model: Tensor, background_var: Tensor, gain: float, mask: Tensor) -> Tensor:
    """S/N of a noiseless ``model`` (ADU, ``(B, 1, H, W)``) in an aperture, ``(B,)``.

    ``Σ_ap model / sqrt(Σ_ap (model / gain + background_var))`` with ``background_var`` the
    per-pixel background variance in ADU² (``(B,)`` or a number): Poisson noise of the
    galaxy itself plus sky and read noise.
    """
    m = model[:, 0].to(_F64) * mask
    signal = m.sum((-2, -1))
    var = (m.clamp_min(0.0) / gain).sum((-2, -1)) + background_var * float(mask.sum())
    return signal / torch.sqrt(var)


def draw_neighbours(
    target_x: Tensor, target_y: Tensor, rng: torch.Generator, cfg: Any, half_width: float
) -> dict[str, Tensor]:
    """Positions and magnitudes of neighbour galaxies and stars for each stamp.

    Galaxies: Poisson(``neighbour_density`` × stamp area) per stamp, uniform positions at
    least ``neighbour_exclusion`` arcsec from the target centre, plus with probability
    ``close_companion_prob`` one companion at a distance ``U(close_companion_min,
    close_companion_max)`` from the target (these overlap it); magnitudes from a truncated
    exponential with rate ``neighbour_mag_rate`` on ``[neighbour_mag_min,
    neighbour_mag_max]``.  Stars: Poisson(``star_density`` × area), uniform positions,
    magnitudes with rate ``star_mag_rate`` on ``[star_mag_min, star_mag_max]``.  All
    centres lie inside the stamp (``|x|, |y| <= half_width``): the wings of objects centred
    outside it are not modelled.

    Returns
    -------
    dict of str to Tensor
        ``gal_owner`` (long, stamp index of each neighbour galaxy), ``gal_x``, ``gal_y``,
        ``gal_mag``; ``star_owner``, ``star_x``, ``star_y``, ``star_mag`` (float64).
    """
    b = target_x.shape[0]
    area = (2.0 * half_width / 60.0) ** 2  # arcmin²
    lam_g = torch.full((b,), cfg.neighbour_density * area, dtype=_F64)
    lam_s = torch.full((b,), cfg.star_density * area, dtype=_F64)
    n_gal = torch.poisson(lam_g, generator=rng).long()
    n_star = torch.poisson(lam_s, generator=rng).long()
    close = torch.rand(b, generator=rng, dtype=_F64) < cfg.close_companion_prob

    owner = torch.repeat_interleave(torch.arange(b), n_gal)
    m = owner.shape[0]
    gx = uniform(m, rng, -half_width, half_width)
    gy = uniform(m, rng, -half_width, half_width)
    excl2 = cfg.neighbour_exclusion**2
    for _ in range(20):  # redraw neighbours that would sit on the target
        bad = (gx - target_x[owner]) ** 2 + (gy - target_y[owner]) ** 2 < excl2
        nb = int(bad.sum())
        if nb == 0:
            break
        gx[bad] = uniform(nb, rng, -half_width, half_width)
        gy[bad] = uniform(nb, rng, -half_width, half_width)
    c_owner = torch.nonzero(close).flatten()
    mc = c_owner.shape[0]
    rad = uniform(mc, rng, cfg.close_companion_min, cfg.close_companion_max)
    ang = uniform(mc, rng, 0.0, 2.0 * math.pi)
    cx = (target_x[c_owner] + rad * torch.cos(ang)).clamp(-half_width, half_width)
    cy = (target_y[c_owner] + rad * torch.sin(ang)).clamp(-half_width, half_width)
    owner = torch.cat([owner, c_owner])
    gx, gy = torch.cat([gx, cx]), torch.cat([gy, cy])
    gmag = truncated_exponential(
        owner.shape[0], rng, cfg.neighbour_mag_rate, cfg.neighbour_mag_min, cfg.neighbour_mag_max
    )
    s_owner = torch.repeat_interleave(torch.arange(b), n_star)
    ms = s_owner.shape[0]
    return {
        "gal_owner": owner, "gal_x": gx, "gal_y": gy, "gal_mag": gmag,
        "star_owner": s_owner,
        "star_x": uniform(ms, rng, -half_width, half_width),
        "star_y": uniform(ms, rng, -half_width, half_width),
        "star_mag": truncated_exponential(
            ms, rng, cfg.star_mag_rate, cfg.star_mag_min, cfg.star_mag_max
        ),
    }  # fmt: skip
