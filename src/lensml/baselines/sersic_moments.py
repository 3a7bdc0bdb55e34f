"""Starting values of a Sérsic fit from image moments (the ``sersic-fit`` initialisation).

:func:`moments_init` turns sky-subtracted stamps into the seven fit parameters
``x, y, mag, r_eff, q, pa, n`` without any model evaluation, all galaxies at once:

1. **Centre**: flux-weighted centroid of the positive pixels inside a circular aperture,
   iterated three times from the stamp centre (radius a third of the stamp side, then the
   region holding the galaxy's light), so that a neighbour near the edge does not drag it.
2. **Shape**: second moments of the positive pixels inside twice the rms radius about the
   centroid, minus the PSF's own second moments (for a convolution the unweighted moments
   add), with the eigenvalues kept above (0.3 pixel)²; then ``q = sqrt(λ_min / λ_max)`` and
   ``pa = ½ atan2(2 M_xy, M_xx − M_yy)`` (counter-clockwise from +x, folded into [0, 180)°).
   The circular aperture biases q towards 1 (by ~0.1 on the GaLNet prior; elliptical
   apertures that follow the shape were tried and are less biased, but they follow the noise
   of compact galaxies and then give q and sizes off by factors of 2).
3. **Size**: the half-light radius from the curve of growth in circular apertures (about the
   circularised radius), corrected for the PSF in quadrature (``r_circ² = r_obs² − r_psf²``,
   r_psf the PSF's half-light radius; exact for Gaussians), then ``r_eff = r_circ / √q``.
   Truncated second moments are not used for the size: a Sérsic profile with n ≳ 2 keeps a
   large part of its second moment at radii that a stamp cuts off or noise hides, whereas the
   half-light radius is set by the bright inner part.
4. **Magnitude**: from the sum of the whole stamp, ``mag = zeropoint − 2.5 log10(F /
   exptime)`` (F floored at one noise σ of the sum so that empty stamps give a finite value).
5. **Sérsic index**: a fixed ``n_init`` (default 2, between discs and spheroids).

These values only have to lie in the basin of the χ² minimum; the fitter refines them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["LABELS", "half_light_radius", "moments_init", "psf_moments"]

#: Column order of every parameter table of the Sérsic fit (the ``sersic`` generator's labels).
LABELS: tuple[str, ...] = ("x", "y", "mag", "r_eff", "q", "pa", "n")

_MIN_SIGMA_PIX = 0.3  # floor on the deconvolved second-moment eigenvalues, pixels
_Q_MIN = 0.1


def _axes(size: int, pixel_scale: float, like: Tensor) -> Tensor:
    """Pixel-centre coordinates of a centred axis, arcsec, ``(size,)``."""
    return (torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2) * pixel_scale


def psf_moments(psf: Tensor, pixel_scale: float) -> Tensor:
    """Unweighted second moments of PSF images about their centroids.

    Parameters
    ----------
    psf : Tensor
        ``(B, 1, P, P)`` PSF images (any normalisation; negative pixels are clipped to 0).
    pixel_scale : float
        Pixel side in arcsec.

    Returns
    -------
    Tensor
        ``(B, 3)`` ``(M_xx, M_yy, M_xy)`` in arcsec².
    """
    img = psf[:, 0].clamp_min(0)
    p = img.shape[-1]
    ax = _axes(p, pixel_scale, img)
    tot = img.sum((-2, -1)).clamp_min(torch.finfo(img.dtype).tiny)
    mx = (img.sum(-2) * ax).sum(-1) / tot
    my = (img.sum(-1) * ax).sum(-1) / tot
    dx = ax[None, None, :] - mx[:, None, None]
    dy = ax[None, :, None] - my[:, None, None]
    mxx = (img * dx * dx).sum((-2, -1)) / tot
    myy = (img * dy * dy).sum((-2, -1)) / tot
    mxy = (img * dx * dy).sum((-2, -1)) / tot
    return torch.stack([mxx, myy, mxy], dim=1)


def half_light_radius(
    image: Tensor,
    pixel_scale: float,
    x0: Tensor,
    y0: Tensor,
    q: Tensor,
    pa: Tensor,
    total: Tensor,
) -> Tensor:
    """Semi-major axis of the elliptical aperture holding half of ``total`` (curve of growth).

    Parameters
    ----------
    image : Tensor
        ``(B, H, W)`` sky-subtracted images (noise allowed).
    pixel_scale : float
        Pixel side in arcsec.
    x0, y0 : Tensor
        ``(B,)`` aperture centres in arcsec (stamp-centred, x right, y up).
    q, pa : Tensor
        ``(B,)`` aperture axis ratio in (0, 1] and major-axis angle in radians (CCW from +x).
    total : Tensor
        ``(B,)`` the flux whose half is sought (> 0).

    Returns
    -------
    Tensor
        ``(B,)`` arcsec; the cumulative flux is interpolated linearly between pixels.
    """
    b, h, w = image.shape
    xs = _axes(w, pixel_scale, image)
    ys = _axes(h, pixel_scale, image)
    dx = xs[None, None, :] - x0[:, None, None]
    dy = ys[None, :, None] - y0[:, None, None]
    c, s = torch.cos(pa)[:, None, None], torch.sin(pa)[:, None, None]
    xp = c * dx + s * dy
    yp = (c * dy - s * dx) / q[:, None, None]
    rad = torch.sqrt(xp * xp + yp * yp).reshape(b, -1)
    order = torch.argsort(rad, dim=1)
    r_sorted = torch.gather(rad, 1, order)
    cum = torch.cumsum(torch.gather(image.reshape(b, -1), 1, order), dim=1)
    half = 0.5 * total
    # first index where the curve of growth reaches half the total
    idx = torch.searchsorted(torch.cummax(cum, dim=1).values, half[:, None]).squeeze(1)
    idx = idx.clamp(1, rad.shape[1] - 1)
    c_hi = torch.gather(cum, 1, idx[:, None]).squeeze(1)
    c_lo = torch.gather(cum, 1, (idx - 1)[:, None]).squeeze(1)
    r_hi = torch.gather(r_sorted, 1, idx[:, None]).squeeze(1)
    r_lo = torch.gather(r_sorted, 1, (idx - 1)[:, None]).squeeze(1)
    frac = ((half - c_lo) / (c_hi - c_lo).clamp_min(torch.finfo(image.dtype).tiny)).clamp(0, 1)
    # r² grows with the enclosed area, so interpolate in r² and add half a pixel of area
    r2 = r_lo * r_lo + frac * (r_hi * r_hi - r_lo * r_lo)
    return torch.sqrt(r2 + pixel_scale * pixel_scale / (2 * math.pi))


def moments_init(
    image: Tensor,
    psf: Tensor,
    pixel_scale: float,
    variance: Tensor | None = None,
    *,
    zeropoint: float | Tensor = 0.0,
    exptime: float | Tensor = 1.0,
    n_init: float = 2.0,
) -> Tensor:
    """Initial Sérsic parameters from image moments (see the module docstring).

    Parameters
    ----------
    image : Tensor
        ``(B, 1, S, S)`` sky-subtracted stamps in counts, galaxy near the centre.
    psf : Tensor
        ``(B or 1, 1, P, P)`` PSF images (unit sum).
    pixel_scale : float
        Pixel side in arcsec, > 0.
    variance : Tensor, optional
        ``(B, 1, S, S)`` per-pixel noise variance (counts²); used for the flux floor and to
        ignore pixels below one noise σ in the moments. None: no threshold.
    zeropoint, exptime : float or (B,) Tensor
        Magnitude convention ``mag = zeropoint − 2.5 log10(flux / exptime)``: ``zeropoint``
        is the magnitude of 1 count per unit of ``exptime`` (per second for a zero point in
        counts/s, or give ``exptime = 1`` for a zero point in total counts).
    n_init : float
        Starting Sérsic index (default 2).

    Returns
    -------
    Tensor
        ``(B, 7)`` in the input's floating dtype, columns :data:`LABELS`: x, y (arcsec from
        the stamp centre), mag, r_eff (arcsec, semi-major), q in [0.1, 1], pa (degrees in
        [0, 180), CCW from +x), n.
    """
    img = image[:, 0]
    b, s, _ = img.shape
    dt = img.dtype if img.is_floating_point() else torch.float64
    img = img.to(dt)
    ps = float(pixel_scale)
    ax = _axes(s, ps, img)
    sig = None if variance is None else torch.sqrt(variance[:, 0].to(dt).clamp_min(0))
    pos = img.clamp_min(0) if sig is None else torch.where(img > sig, img, torch.zeros_like(img))

    # 1. centroid, iterated inside a shrinking circular aperture
    x0 = torch.zeros(b, dtype=dt, device=img.device)
    y0 = torch.zeros_like(x0)
    radius = torch.full_like(x0, s * ps / 3)
    for _ in range(3):
        dx = ax[None, None, :] - x0[:, None, None]
        dy = ax[None, :, None] - y0[:, None, None]
        inside = (dx * dx + dy * dy) <= (radius * radius)[:, None, None]
        wgt = pos * inside
        tot = wgt.sum((-2, -1))
        ok = tot > 0
        safe = tot.clamp_min(torch.finfo(dt).tiny)
        x0 = torch.where(ok, (wgt.sum(-2) * ax).sum(-1) / safe, x0)
        y0 = torch.where(ok, (wgt.sum(-1) * ax).sum(-1) / safe, y0)
        # radius: 3× the rms radius of the light found, within [3 px, S/3]
        r2 = (wgt * (dx * dx + dy * dy)).sum((-2, -1)) / safe
        radius = torch.where(ok, 3.0 * torch.sqrt(r2), radius).clamp(3 * ps, s * ps / 3)

    # 2. second moments about the centroid inside 2× the rms radius, PSF moments subtracted
    dx = ax[None, None, :] - x0[:, None, None]
    dy = ax[None, :, None] - y0[:, None, None]
    inside = (dx * dx + dy * dy) <= (2.0 * radius / 3.0)[:, None, None] ** 2
    wgt = pos * inside
    safe = wgt.sum((-2, -1)).clamp_min(torch.finfo(dt).tiny)
    mom = torch.stack([(wgt * d).sum((-2, -1)) / safe for d in (dx * dx, dy * dy, dx * dy)], 1)
    pm = psf_moments(psf.to(dt), ps).expand(b, 3)
    gxx, gyy, gxy = mom[:, 0] - pm[:, 0], mom[:, 1] - pm[:, 1], mom[:, 2] - pm[:, 2]
    half_tr = 0.5 * (gxx + gyy)
    disc = torch.sqrt(0.25 * (gxx - gyy) ** 2 + gxy * gxy)
    floor = (_MIN_SIGMA_PIX * ps) ** 2
    lam1 = (half_tr + disc).clamp_min(floor)
    lam2 = (half_tr - disc).clamp_min(floor)
    q = torch.sqrt(lam2 / lam1).clamp(_Q_MIN, 1.0)
    pa = 0.5 * torch.atan2(2.0 * gxy, gxx - gyy)

    # 4. total flux (whole stamp) with a floor at one σ of the sum
    total = img.sum((-2, -1))
    if sig is not None:
        flux_floor = torch.sqrt((sig * sig).sum((-2, -1))).clamp_min(torch.finfo(dt).tiny)
    else:
        flux_floor = total.abs().clamp_min(1.0) * 1e-3
    total = torch.maximum(total, flux_floor)

    # 3. half-light radius, PSF removed in quadrature on the circularised radius
    r_obs = half_light_radius(img, ps, x0, y0, torch.ones_like(q), pa, total)
    psf_img = psf[:, 0].to(dt)
    pc = torch.zeros(psf_img.shape[0], dtype=dt, device=img.device)
    r_psf = half_light_radius(
        psf_img, ps, pc, pc, torch.ones_like(pc), pc, psf_img.sum((-2, -1)).clamp_min(1e-30)
    ).expand(b)
    r_circ2 = r_obs * r_obs - r_psf * r_psf
    r_circ = torch.sqrt(r_circ2.clamp_min((0.5 * ps) ** 2))
    r_eff = r_circ / torch.sqrt(q)

    zp = torch.as_tensor(zeropoint, dtype=dt, device=img.device).expand(b)
    et = torch.as_tensor(exptime, dtype=dt, device=img.device).expand(b)
    mag = zp - 2.5 * torch.log10(total / et)
    pa_deg = torch.remainder(torch.rad2deg(pa), 180.0)
    n = torch.full_like(x0, float(n_init))
    return torch.stack([x0, y0, mag, r_eff, q, pa_deg, n], dim=1)
