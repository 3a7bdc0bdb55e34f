"""Point-spread functions: normalised profiles and pixel-integrated kernels.

Profiles (``*_profile``) are surface densities in 1/arcsec² with unit integral over the plane,
evaluated on coordinates ``(H, W)`` or ``(B, H, W)``.  Kernels (``*_psf``) are ``(B, 1, K, K)``
arrays, K odd, centred at ``(K//2, K//2)``: each pixel holds the PSF integrated over the pixel
(evaluated on an ``oversample``-times finer grid and block-averaged with
:func:`lensml.physics.grids.downsample`), so that convolving a *point-sampled* image with it
reproduces GalSim's pixel-convolved profile (``drawImage(method="auto")``).

Ellipticity follows GalSim's area-preserving ``shear(q=q, beta=phi)``: the profile is a function
of ``r² = q x'² + y'²/q`` (x' along the major axis at angle ``phi``), so ``fwhm`` is the
circularised FWHM (major-axis FWHM = fwhm/√q) and the normalisation does not depend on q.

Normalisation of kernels: ``"sum"`` divides by the kernel sum (unit sum, the usual choice);
``"analytic"`` divides by the analytic integral of the untruncated profile, so a kernel too
small for the PSF wings sums to less than one (use it to match an untruncated GalSim PSF).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lensml.physics.grids import PixelGrid, downsample
from lensml.physics.params import ANGLE, AXIS_RATIO, ParamLike, ParamSpec, as_params, check_coords
from lensml.registry import Registry

FWHM = ParamSpec("fwhm", "arcsec", 0.0, math.inf, low_open=True, doc="full width at half maximum")
BETA = ParamSpec(
    "beta",
    "dimensionless",
    1.0,
    math.inf,
    low_open=True,
    doc="Moffat index; the total flux is finite only for beta > 1",
)
FWHM2 = ParamSpec("fwhm2", "arcsec", 0.0, math.inf, low_open=True, doc="FWHM of 2nd Moffat")
BETA2 = ParamSpec("beta2", "dimensionless", 1.0, math.inf, low_open=True, doc="2nd Moffat index")
FRAC1 = ParamSpec("frac1", "dimensionless", 0.0, 1.0, doc="flux fraction of the 1st Moffat")
LAM_OVER_D = ParamSpec("lam_over_diam", "arcsec", 0.0, math.inf, low_open=True, doc="λ/D")
OBSCURATION = ParamSpec(
    "obscuration", "dimensionless", 0.0, 1.0, high_open=True, doc="central obscuration ε"
)
_SHAPE = (AXIS_RATIO, ANGLE)
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
AIRY_FWHM_FACTOR = 1.028  # FWHM ≈ 1.028 λ/D for an unobscured aperture

PSF_PROFILES: Registry[Callable[..., Tensor]] = Registry("psf profile")


def psf_fwhm_to_sigma(fwhm: ParamLike) -> ParamLike:
    """Gaussian dispersion from FWHM: ``fwhm / (2 √(2 ln 2))`` (same unit)."""
    return fwhm * _FWHM_TO_SIGMA


def psf_sigma_to_fwhm(sigma: ParamLike) -> ParamLike:
    """Gaussian FWHM from dispersion: ``2 √(2 ln 2) sigma``."""
    return sigma / _FWHM_TO_SIGMA


def moffat_alpha(fwhm: ParamLike, beta: ParamLike) -> ParamLike:
    """Moffat core radius ``alpha = FWHM / (2 √(2^{1/β} - 1))`` (same unit as fwhm)."""
    if isinstance(beta, Tensor):
        return fwhm / (2.0 * torch.sqrt(torch.pow(2.0, 1.0 / beta) - 1.0))
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def airy_fwhm(lam_over_diam: ParamLike) -> ParamLike:
    """FWHM of an unobscured Airy pattern, ``≈ 1.028 λ/D``."""
    return AIRY_FWHM_FACTOR * lam_over_diam


def _r2(x: Tensor, y: Tensor, q: Tensor, phi: Tensor) -> Tensor:
    """Area-preserving elliptical radius² ``q x'² + y'²/q`` (arcsec²)."""
    c, s = torch.cos(phi), torch.sin(phi)
    xp = c * x + s * y
    yp = c * y - s * x
    return q * xp * xp + yp * yp / q


def _batched(out: Tensor) -> Tensor:
    return out if out.ndim == 3 else out.unsqueeze(0)


@PSF_PROFILES.register("gaussian")
def gaussian_profile(
    x: Tensor, y: Tensor, fwhm: ParamLike, q: ParamLike = 1.0, phi: ParamLike = 0.0
) -> Tensor:
    """Gaussian PSF density (1/arcsec², unit integral); ``fwhm`` > 0 arcsec, circularised."""
    check_coords(x, y, "gaussian_psf")
    p = as_params({"fwhm": fwhm, "q": q, "phi": phi}, (FWHM, *_SHAPE), "gaussian_psf", like=x)
    s2 = (p["fwhm"] * _FWHM_TO_SIGMA) ** 2
    r2 = _r2(x, y, p["q"], p["phi"])
    return _batched(torch.exp(-0.5 * r2 / s2) / (2.0 * math.pi * s2))


@PSF_PROFILES.register("moffat")
def moffat_profile(
    x: Tensor,
    y: Tensor,
    fwhm: ParamLike,
    beta: ParamLike,
    q: ParamLike = 1.0,
    phi: ParamLike = 0.0,
) -> Tensor:
    """Moffat PSF density ``(β-1)/(π α²) (1 + r²/α²)^{-β}`` (1/arcsec², unit integral).

    ``beta`` must exceed 1: the integral of ``(1 + r²/α²)^{-β}`` over the plane is
    ``π α² / (β - 1)``, infinite for β <= 1.  ``fwhm`` > 0 arcsec (circularised).
    """
    check_coords(x, y, "moffat_psf")
    p = as_params(
        {"fwhm": fwhm, "beta": beta, "q": q, "phi": phi},
        (FWHM, BETA, *_SHAPE),
        "moffat_psf",
        like=x,
    )
    return _batched(_moffat(_r2(x, y, p["q"], p["phi"]), p["fwhm"], p["beta"]))


def _moffat(r2: Tensor, fwhm: Tensor, beta: Tensor) -> Tensor:
    alpha2 = moffat_alpha(fwhm, beta) ** 2
    return (beta - 1.0) / (math.pi * alpha2) * torch.exp(-beta * torch.log1p(r2 / alpha2))


@PSF_PROFILES.register("double_moffat")
def double_moffat_profile(
    x: Tensor,
    y: Tensor,
    fwhm: ParamLike,
    beta: ParamLike,
    fwhm2: ParamLike,
    beta2: ParamLike,
    frac1: ParamLike,
    q: ParamLike = 1.0,
    phi: ParamLike = 0.0,
) -> Tensor:
    """Sum of two concentric Moffats (2DPHOT / GaLNet PSF model), unit integral.

    ``frac1`` in [0, 1] is the flux fraction of the first Moffat ``(fwhm, beta)``; the second
    ``(fwhm2, beta2)`` carries ``1 - frac1``.  Both share the shape ``(q, phi)``.
    """
    check_coords(x, y, "double_moffat_psf")
    p = as_params(
        {
            "fwhm": fwhm,
            "beta": beta,
            "fwhm2": fwhm2,
            "beta2": beta2,
            "frac1": frac1,
            "q": q,
            "phi": phi,
        },
        (FWHM, BETA, FWHM2, BETA2, FRAC1, *_SHAPE),
        "double_moffat_psf",
        like=x,
    )
    r2 = _r2(x, y, p["q"], p["phi"])
    m1 = _moffat(r2, p["fwhm"], p["beta"])
    m2 = _moffat(r2, p["fwhm2"], p["beta2"])
    return _batched(p["frac1"] * m1 + (1.0 - p["frac1"]) * m2)


@PSF_PROFILES.register("airy")
def airy_profile(
    x: Tensor,
    y: Tensor,
    lam_over_diam: ParamLike,
    obscuration: ParamLike = 0.0,
    q: ParamLike = 1.0,
    phi: ParamLike = 0.0,
) -> Tensor:
    """Airy pattern density (1/arcsec², unit integral), optional central obscuration ε.

    ``I(r) = π / (4 L² (1 - ε²)) [2 J1(v)/v - ε² 2 J1(εv)/(εv)]²`` with ``v = π r / L``,
    ``L = lam_over_diam`` in arcsec (first dark ring at 1.22 L, FWHM ≈ 1.028 L for ε = 0).
    ``torch.special.bessel_j1`` has no autograd formula, so this profile is not
    differentiable in its parameters.
    """
    check_coords(x, y, "airy_psf")
    p = as_params(
        {"lam_over_diam": lam_over_diam, "obscuration": obscuration, "q": q, "phi": phi},
        (LAM_OVER_D, OBSCURATION, *_SHAPE),
        "airy_psf",
        like=x,
    )
    lam, eps = p["lam_over_diam"], p["obscuration"]
    v = math.pi * torch.sqrt(_r2(x, y, p["q"], p["phi"])) / lam
    amp = _jinc(v) - eps * eps * _jinc(eps * v)
    return _batched(math.pi / (4.0 * lam * lam * (1.0 - eps * eps)) * amp * amp)


_SPECS = {
    "gaussian": (FWHM, *_SHAPE),
    "moffat": (FWHM, BETA, *_SHAPE),
    "double_moffat": (FWHM, BETA, FWHM2, BETA2, FRAC1, *_SHAPE),
    "airy": (LAM_OVER_D, OBSCURATION, *_SHAPE),
}
_DEFAULTS = {"q": 1.0, "phi": 0.0, "obscuration": 0.0}


def profile_on_grid(kind: str, x: Tensor, y: Tensor, **params: ParamLike) -> Tensor:
    """Fast density of a registered PSF on shared ``(H, W)`` coordinates → ``(B, H, W)``.

    Same values as the ``*_profile`` functions; when ``q`` and ``phi`` are plain numbers the
    squared radius is computed once for the whole batch (the hot path of the stamp renderer).
    """
    if kind not in _SPECS:
        raise ValueError(f"profile_on_grid: unknown PSF kind {kind!r}; known: {sorted(_SPECS)}")
    values = {**_DEFAULTS, **params}
    p = as_params({s.name: values.get(s.name) for s in _SPECS[kind]}, _SPECS[kind], kind, like=x)
    if isinstance(values["q"], (int, float)) and isinstance(values["phi"], (int, float)):
        r2 = _r2(x, y, p["q"][0], p["phi"][0])
    else:
        r2 = _r2(x, y, p["q"], p["phi"])
    if kind == "gaussian":
        s2 = (p["fwhm"] * _FWHM_TO_SIGMA) ** 2
        out = torch.exp(-0.5 * r2 / s2) / (2.0 * math.pi * s2)
    elif kind == "moffat":
        out = _moffat(r2, p["fwhm"], p["beta"])
    elif kind == "double_moffat":
        out = p["frac1"] * _moffat(r2, p["fwhm"], p["beta"])
        out = out + (1.0 - p["frac1"]) * _moffat(r2, p["fwhm2"], p["beta2"])
    else:
        lam, eps = p["lam_over_diam"], p["obscuration"]
        v = math.pi * torch.sqrt(r2) / lam
        amp = _jinc(v) - eps * eps * _jinc(eps * v)
        out = math.pi / (4.0 * lam * lam * (1.0 - eps * eps)) * amp * amp
    return _batched(out.expand(out.shape[0], *x.shape[-2:]) if out.ndim == 3 else out)


def _jinc(v: Tensor) -> Tensor:
    """``2 J1(v) / v`` with the limit 1 at v = 0."""
    small = v.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(v), v)
    return torch.where(small, 1.0 - v * v / 8.0, 2.0 * torch.special.bessel_j1(safe) / safe)


def psf_kernel(
    kind: str,
    size: int,
    pixel_scale: float,
    oversample: int = 5,
    normalize: str = "sum",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    **params: ParamLike,
) -> Tensor:
    """Pixel-integrated PSF kernel of a registered profile.

    Parameters
    ----------
    kind : str
        ``"gaussian"``, ``"moffat"``, ``"double_moffat"`` or ``"airy"``.
    size : int
        Kernel side K in pixels, odd and >= 3.
    pixel_scale : float
        Pixel side in arcsec, > 0.
    oversample : int
        Sub-pixels per pixel side for the pixel integration, >= 1 (odd keeps a sample at
        the kernel centre).
    normalize : {"sum", "analytic", "none"}
        Unit sum, unit *analytic* integral (truncated wings are lost), or none (the kernel
        is then the pixel-integrated density times the pixel area, i.e. ``"analytic"``).
    dtype, device
        Of the result (default dtype when None; a tensor parameter's dtype otherwise).
    **params
        The profile's parameters (numbers or ``(B,)`` tensors).

    Returns
    -------
    Tensor
        ``(B, 1, K, K)``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 3 or size % 2 == 0:
        raise ValueError(f"psf_kernel: 'size' must be an odd integer >= 3; got {size!r}")
    if normalize not in ("sum", "analytic", "none"):
        raise ValueError(
            f"psf_kernel: 'normalize' must be 'sum', 'analytic' or 'none'; got {normalize!r}"
        )
    fn = PSF_PROFILES.get(kind)
    if dtype is None:
        tensors = [v for v in params.values() if isinstance(v, Tensor) and v.is_floating_point()]
        dtype = tensors[0].dtype if tensors else torch.get_default_dtype()
    grid = PixelGrid.square(size, pixel_scale)
    x, y = grid.coordinates(oversample, dtype=dtype, device=device)
    dens = downsample(fn(x, y, **params), oversample)
    kernel = (dens * grid.pixel_area).unsqueeze(1)
    if normalize == "sum":
        kernel = kernel / kernel.sum(dim=(-2, -1), keepdim=True)
    return kernel


def gaussian_psf(
    fwhm: ParamLike, size: int, pixel_scale: float, q: ParamLike = 1.0, phi: ParamLike = 0.0, **kw
) -> Tensor:
    """Gaussian kernel ``(B, 1, K, K)``; see :func:`psf_kernel` for ``size``, ``**kw``."""
    return psf_kernel("gaussian", size, pixel_scale, fwhm=fwhm, q=q, phi=phi, **kw)


def moffat_psf(
    fwhm: ParamLike,
    beta: ParamLike,
    size: int,
    pixel_scale: float,
    q: ParamLike = 1.0,
    phi: ParamLike = 0.0,
    **kw,
) -> Tensor:
    """Moffat kernel ``(B, 1, K, K)`` (beta > 1); see :func:`psf_kernel`."""
    return psf_kernel("moffat", size, pixel_scale, fwhm=fwhm, beta=beta, q=q, phi=phi, **kw)


def double_moffat_psf(
    fwhm: ParamLike,
    beta: ParamLike,
    fwhm2: ParamLike,
    beta2: ParamLike,
    frac1: ParamLike,
    size: int,
    pixel_scale: float,
    q: ParamLike = 1.0,
    phi: ParamLike = 0.0,
    **kw,
) -> Tensor:
    """Double-Moffat kernel ``(B, 1, K, K)``; see :func:`double_moffat_profile`."""
    return psf_kernel(
        "double_moffat",
        size,
        pixel_scale,
        fwhm=fwhm,
        beta=beta,
        fwhm2=fwhm2,
        beta2=beta2,
        frac1=frac1,
        q=q,
        phi=phi,
        **kw,
    )


def airy_psf(
    lam_over_diam: ParamLike,
    size: int,
    pixel_scale: float,
    obscuration: ParamLike = 0.0,
    q: ParamLike = 1.0,
    phi: ParamLike = 0.0,
    **kw,
) -> Tensor:
    """Airy kernel ``(B, 1, K, K)``; see :func:`airy_profile`."""
    return psf_kernel(
        "airy",
        size,
        pixel_scale,
        lam_over_diam=lam_over_diam,
        obscuration=obscuration,
        q=q,
        phi=phi,
        **kw,
    )
