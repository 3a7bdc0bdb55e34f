"""Noise and detector effects: shape noise, Poisson + read noise, correlated noise, sky
gradients, cosmic rays and pixel-response non-uniformity.

Every random function takes an explicit ``torch.Generator`` (keyword ``generator``; its device
must match the output's), never touches the global RNG, and is vectorised over the batch.
Numeric arguments are a number or a ``(B,)`` tensor (one value per batch item) and are
validated: NaN/inf or out-of-range values raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lensml.physics.grids import PixelGrid
from lensml.physics.params import ParamLike, ParamSpec, as_param, check_batch

__all__ = [
    "add_shape_noise",
    "correlated_noise",
    "cosmic_rays",
    "noise_variance_map",
    "poisson_read_noise",
    "prnu",
    "read_correlation_function",
    "shape_noise_sigma",
    "sky_gradient",
]

_INF = math.inf
SIGMA_E = ParamSpec(
    "sigma_e", "dimensionless", 0.0, _INF, doc="per-component ellipticity dispersion"
)
N_GAL = ParamSpec("n_gal_per_arcmin2", "arcmin^-2", 0.0, _INF, low_open=True, doc="source density")
PIXEL_SCALE = ParamSpec("pixel_scale_arcsec", "arcsec", 0.0, _INF, low_open=True, doc="pixel side")
SIGMA = ParamSpec("sigma", "image units", 0.0, _INF, doc="noise standard deviation")
READ_NOISE = ParamSpec("read_noise_e", "e-", 0.0, _INF, doc="read noise per pixel")
GAIN = ParamSpec("gain", "e-/ADU", 0.0, _INF, low_open=True, doc="detector gain")
SKY = ParamSpec("sky", "ADU/pixel", 0.0, _INF, doc="sky level")
AMPLITUDE = ParamSpec("amplitude", "image units", 0.0, _INF, doc="gradient amplitude at the edge")
DIRECTION = ParamSpec("direction", "rad", doc="gradient direction, counter-clockwise from +x")
CURVATURE = ParamSpec("curvature", "dimensionless", 0.0, _INF, doc="std of quadratic terms")
RATE = ParamSpec("rate_per_pixel", "1/pixel", 0.0, 1.0, doc="cosmic-ray hits per pixel")
PRNU_SIGMA = ParamSpec("sigma", "dimensionless", 0.0, _INF, doc="relative pixel-response scatter")


def _check_shape(shape: Sequence[int], owner: str) -> tuple[int, ...]:
    shape = tuple(shape)
    if len(shape) < 2 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape
    ):
        raise ValueError(f"{owner}: 'shape' must be >= 2 positive integers; got {shape!r}")
    return shape


def _check_finite(t: Tensor, name: str, owner: str) -> None:
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise ValueError(f"{owner}: {name!r} must be a floating-point tensor")
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{owner}: {name!r} contains NaN or inf")


def _batched(value: ParamLike, spec: ParamSpec, owner: str, like: Tensor, ndim: int) -> Tensor:
    """Validate and reshape to ``(B, 1, ..., 1)`` with ``ndim`` dims (leading axis = batch)."""
    return as_param(value, spec, owner, like=like, ndim=ndim)


def _like(dtype: torch.dtype | None, device) -> Tensor:
    return torch.empty(0, dtype=dtype or torch.get_default_dtype(), device=device)


def shape_noise_sigma(
    pixel_scale_arcsec: ParamLike, sigma_e: ParamLike = 0.3, n_gal_per_arcmin2: ParamLike = 30.0
) -> Tensor:
    """Per-pixel shear noise ``σ = σ_e / sqrt(n_g A_pix)`` (Giocoli et al. 2010; clusters eq. 13).

    Parameters
    ----------
    pixel_scale_arcsec : float or Tensor
        Pixel side in arcsec, > 0 (``A_pix = (pixel_scale / 60)²`` arcmin²).
    sigma_e : float or Tensor
        Intrinsic ellipticity dispersion **per component**, >= 0 (default 0.3); the noise added
        to each of g1, g2.
    n_gal_per_arcmin2 : float or Tensor
        Density of source galaxies in arcmin⁻², > 0 (default 30, Euclid wide).

    Returns
    -------
    Tensor
        ``(B,)`` standard deviation of each shear component per pixel.
    """
    owner = "shape_noise_sigma"
    s = as_param(pixel_scale_arcsec, PIXEL_SCALE, owner, ndim=1)
    e = as_param(sigma_e, SIGMA_E, owner, like=s, ndim=1)
    n = as_param(n_gal_per_arcmin2, N_GAL, owner, like=s, ndim=1)
    return e / torch.sqrt(n * (s / 60.0) ** 2)


def add_shape_noise(
    g1: Tensor, g2: Tensor, sigma: ParamLike, *, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Add independent Gaussian noise ``N(0, σ²)`` to both shear components.

    ``g1, g2`` are maps ``(B, H, W)`` / ``(H, W)`` (or images with more leading axes);
    ``sigma`` (>= 0) is a number or ``(B,)`` tensor, e.g. from :func:`shape_noise_sigma`.
    """
    owner = "add_shape_noise"
    _check_finite(g1, "g1", owner)
    _check_finite(g2, "g2", owner)
    if g1.shape != g2.shape:
        raise ValueError(f"{owner}: g1 and g2 shapes differ: {tuple(g1.shape)}, {tuple(g2.shape)}")
    s = _batched(sigma, SIGMA, owner, g1, max(g1.ndim, 3))
    shape = torch.broadcast_shapes(g1.shape, s.shape)
    n1 = torch.randn(shape, generator=generator, dtype=g1.dtype, device=g1.device)
    n2 = torch.randn(shape, generator=generator, dtype=g1.dtype, device=g1.device)
    return g1 + s * n1, g2 + s * n2


def _detector(image: Tensor, read_noise_e, gain, sky, owner: str):
    _check_finite(image, "image_counts", owner)
    nd = max(image.ndim, 3)
    r = _batched(read_noise_e, READ_NOISE, owner, image, nd)
    g = _batched(gain, GAIN, owner, image, nd)
    s = _batched(sky, SKY, owner, image, nd)
    return r, g, s


def poisson_read_noise(
    image_counts: Tensor,
    read_noise_e: ParamLike,
    gain: ParamLike = 1.0,
    sky: ParamLike = 0.0,
    *,
    generator: torch.Generator,
    gaussian: bool | None = None,
    gaussian_above: float = 1000.0,
    subtract_sky: bool = True,
) -> Tensor:
    """Noisy image: Poisson noise in electrons plus Gaussian read noise.

    ``electrons = Poisson(gain (image + sky)) + N(0, read_noise²)``, returned in ADU
    (``electrons / gain``) with the sky subtracted again unless ``subtract_sky=False``.

    Parameters
    ----------
    image_counts : Tensor
        Expected counts in ADU per pixel, shape ``(B, ...)``; negative expected counts (e.g.
        FFT ringing) are treated as zero for the Poisson rate.
    read_noise_e : float or Tensor
        Read noise in electrons per pixel, >= 0.
    gain : float or Tensor
        Electrons per ADU, > 0.
    sky : float or Tensor
        Sky level in ADU per pixel, >= 0.
    generator : torch.Generator
        Source of randomness.
    gaussian : bool or None
        True: Gaussian approximation ``N(λ, λ)`` everywhere (differentiable, reparameterised);
        False: exact Poisson; None: exact below ``gaussian_above`` electrons, Gaussian above.
    gaussian_above : float
        Threshold in electrons for ``gaussian=None``.
    subtract_sky : bool
        Subtract the (noiseless) sky level from the result.
    """
    owner = "poisson_read_noise"
    r, g, s = _detector(image_counts, read_noise_e, gain, sky, owner)
    if not (math.isfinite(gaussian_above) and gaussian_above >= 0):
        raise ValueError(f"{owner}: 'gaussian_above' must be a finite number >= 0")
    lam = ((image_counts + s) * g).clamp_min(0.0)
    shape, kw = lam.shape, {"dtype": lam.dtype, "device": lam.device}
    if gaussian is not False:
        gauss = lam + lam.sqrt() * torch.randn(shape, generator=generator, **kw)
    if gaussian is not True:
        exact = torch.poisson(lam.detach(), generator=generator)
    if gaussian is None:
        electrons = torch.where(lam > gaussian_above, gauss, exact)
    else:
        electrons = gauss if gaussian else exact
    electrons = electrons + r * torch.randn(shape, generator=generator, **kw)
    out = electrons / g
    return out - s if subtract_sky else out


def noise_variance_map(
    image_counts: Tensor, read_noise_e: ParamLike, gain: ParamLike = 1.0, sky: ParamLike = 0.0
) -> Tensor:
    """Expected per-pixel variance (ADU²) of :func:`poisson_read_noise`:
    ``(gain · max(image + sky, 0) + read_noise²) / gain²``."""
    r, g, s = _detector(image_counts, read_noise_e, gain, sky, "noise_variance_map")
    return (((image_counts + s) * g).clamp_min(0.0) + r**2) / g**2


def read_correlation_function(path: str) -> Tensor:
    """Read a 2-d noise correlation-function image (e.g. GalSim's COSMOS
    ``acs_I_unrot_sci_20_cf.fits``): odd-sized, zero lag at the central pixel, float64."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        data = hdul[0].data.astype("float64")
    return torch.from_numpy(data)


def _kernel_noise(white_shape, kernel: Tensor, generator, kw, nd: int) -> Tensor:
    if kernel.ndim == 2:
        kernel = kernel.reshape((1,) * (nd - 2) + tuple(kernel.shape))
    elif kernel.ndim != nd:
        raise ValueError(f"correlated_noise: kernel must be 2-d or {nd}-d; got {kernel.ndim}-d")
    kernel = kernel.to(**kw)
    kh, kw_ = kernel.shape[-2:]
    h, w = white_shape[-2:]
    size = (h + kh - 1, w + kw_ - 1)
    white = torch.randn((*white_shape[:-2], *size), generator=generator, **kw)
    spec = torch.fft.rfft2(white) * torch.fft.rfft2(kernel, s=size)
    field = torch.fft.irfft2(spec, s=size)[..., kh - 1 :, kw_ - 1 :]
    norm = kernel.pow(2).sum(dim=(-1, -2), keepdim=True).sqrt()
    if bool((norm.detach() == 0).any()):
        raise ValueError("correlated_noise: kernel must not be all zeros")
    return field / norm


def _cf_noise(shape, cf: Tensor, generator, kw, rescale: bool) -> Tensor:
    if cf.ndim != 2 or cf.shape[0] % 2 == 0 or cf.shape[1] % 2 == 0:
        raise ValueError(
            f"correlated_noise: correlation must be an odd-sized 2-d image; got {tuple(cf.shape)}"
        )
    cf = cf.to(**kw)
    hc, wc = cf.shape
    ny, nx = shape[-2] + hc, shape[-1] + wc
    embedded = torch.zeros(ny, nx, **kw)
    embedded[:hc, :wc] = cf
    embedded = torch.roll(embedded, shifts=(-(hc // 2), -(wc // 2)), dims=(0, 1))
    power = torch.fft.rfft2(embedded).real.clamp_min(0.0)  # clip negative power
    white = torch.randn((*shape[:-2], ny, nx), generator=generator, **kw)
    field = torch.fft.irfft2(torch.fft.rfft2(white) * power.sqrt(), s=(ny, nx))
    field = field[..., : shape[-2], : shape[-1]]
    if rescale:  # unit per-pixel variance of the clipped spectrum
        field = field / torch.fft.irfft2(power, s=(ny, nx))[0, 0].sqrt()
    return field


def correlated_noise(
    shape: Sequence[int],
    sigma: ParamLike | None = None,
    *,
    generator: torch.Generator,
    kernel: Tensor | None = None,
    correlation: Tensor | None = None,
    dtype: torch.dtype | None = None,
    device=None,
) -> Tensor:
    """Stationary correlated Gaussian noise.

    Exactly one of:

    * ``kernel``: white noise convolved with ``kernel`` (``(Kh, Kw)``, or with the same number
      of dims as ``shape`` for per-item kernels), drawn on a padded field so there are no edge
      effects, then rescaled so the per-pixel σ equals ``sigma`` (default 1);
    * ``correlation``: a 2-d correlation function ``ξ`` (odd-sized, zero lag at the centre, in
      image units²). Its FFT gives the power spectrum, negative power is clipped, and noise is
      drawn on a periodic field larger than the image plus ``ξ``'s support (so wrap-around does
      not alias). With ``sigma=None`` the noise has ``ξ``'s own variance; otherwise it is
      rescaled to per-pixel σ = ``sigma``.

    Parameters
    ----------
    shape : sequence of int
        Output shape ``(B, ..., H, W)``; ``sigma`` of shape ``(B,)`` applies per leading item.
    sigma : float or Tensor or None
        Target per-pixel standard deviation, >= 0.
    generator : torch.Generator
        Source of randomness.
    kernel, correlation : Tensor, optional
        See above.
    dtype, device
        Of the output.
    """
    owner = "correlated_noise"
    shape = _check_shape(shape, owner)
    if (kernel is None) == (correlation is None):
        raise ValueError(f"{owner}: give exactly one of 'kernel' or 'correlation'")
    like = _like(dtype, device)
    kw = {"dtype": like.dtype, "device": like.device}
    if kernel is not None:
        _check_finite(kernel, "kernel", owner)
        field = _kernel_noise(shape, kernel, generator, kw, len(shape))
        sigma = 1.0 if sigma is None else sigma
    else:
        _check_finite(correlation, "correlation", owner)
        field = _cf_noise(shape, correlation, generator, kw, rescale=sigma is not None)
    if sigma is None:
        return field
    return field * _batched(sigma, SIGMA, owner, like, len(shape))


def sky_gradient(
    grid: PixelGrid,
    amplitude: ParamLike,
    direction: ParamLike | None = None,
    kind: str = "linear",
    *,
    generator: torch.Generator,
    batch_size: int | None = None,
    curvature: ParamLike = 0.5,
    dtype: torch.dtype | None = None,
    device=None,
) -> Tensor:
    """Smooth sky background residual, ``(B, 1, H, W)`` in image units.

    With ``u, v`` the pixel coordinates relative to the grid centre divided by the half field
    of view (so ``|u|, |v| <= 1`` at the outer pixel edges):

    * ``"linear"``: ``amplitude · (u cos d + v sin d)``, a plane through zero at the centre
      reaching ±``amplitude`` at the edges along direction ``d``;
    * ``"2d"``: the plane plus ``amplitude · (a u² + b u v + c v²)`` with ``a, b, c`` drawn from
      ``N(0, curvature²)``, minus the mean over the grid.

    ``direction`` (rad) is drawn uniformly in ``[0, 2π)`` when None. The batch size is that of the
    tensor arguments, or ``batch_size`` when all are numbers.
    """
    owner = "sky_gradient"
    if kind not in ("linear", "2d"):
        raise ValueError(f"{owner}: 'kind' must be 'linear' or '2d'; got {kind!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"{owner}: 'batch_size' must be an integer >= 1; got {batch_size!r}")
    like = _like(dtype, device)
    kw = {"dtype": like.dtype, "device": like.device}
    amp = _batched(amplitude, AMPLITUDE, owner, like, 4)
    curv = _batched(curvature, CURVATURE, owner, like, 4)
    b = max(amp.shape[0], curv.shape[0], batch_size or 1)
    if direction is None:
        d = torch.rand((b, 1, 1, 1), generator=generator, **kw) * (2 * math.pi)
    else:
        d = _batched(direction, DIRECTION, owner, like, 4)
    b = check_batch({"amplitude": amp, "curvature": curv, "direction": d}, owner)
    if batch_size is not None and b not in (1, batch_size):
        raise ValueError(f"{owner}: 'batch_size' {batch_size} != parameter batch size {b}")
    b = max(b, batch_size or 1)
    xs, ys = grid.axes(dtype=like.dtype, device=like.device)
    u = ((xs - grid.center[0]) / (grid.fov[0] / 2)).reshape(1, 1, 1, -1)
    v = ((ys - grid.center[1]) / (grid.fov[1] / 2)).reshape(1, 1, -1, 1)
    sky = u * torch.cos(d) + v * torch.sin(d)
    if kind == "2d":
        a, bb, c = (curv * torch.randn((b, 1, 1, 1), generator=generator, **kw) for _ in range(3))
        sky = sky + a * u**2 + bb * u * v + c * v**2
        sky = sky - sky.mean(dim=(-1, -2), keepdim=True)
    return (amp * sky).expand(b, 1, grid.ny, grid.nx)


def cosmic_rays(
    shape: Sequence[int],
    rate_per_pixel: ParamLike | None = None,
    count: int | None = None,
    amplitude: tuple[float, float] = (50.0, 500.0),
    length: tuple[float, float] = (0.0, 6.0),
    *,
    generator: torch.Generator,
    dtype: torch.dtype | None = None,
    device=None,
) -> Tensor:
    """Additive cosmic-ray hits: points and short straight streaks.

    Each ``H × W`` plane (every leading index of ``shape``) receives ``count`` hits, or a
    Poisson number with mean ``rate_per_pixel · H · W``. A hit starts at a uniform position,
    runs along a uniform direction for a length uniform in ``length`` pixels (0 = one pixel),
    and sets the pixels it crosses to an amplitude uniform in ``amplitude`` (image units).

    Returns
    -------
    Tensor
        ``shape``, zero except at hit pixels.
    """
    owner = "cosmic_rays"
    shape = _check_shape(shape, owner)
    like = _like(dtype, device)
    kw = {"dtype": like.dtype, "device": like.device}
    for name, rng in (("amplitude", amplitude), ("length", length)):
        if len(rng) != 2 or not all(math.isfinite(float(t)) for t in rng):
            raise ValueError(f"{owner}: {name!r} must be a finite (low, high) pair; got {rng!r}")
        if not 0 <= rng[0] <= rng[1]:
            raise ValueError(f"{owner}: {name!r} must satisfy 0 <= low <= high; got {rng!r}")
    h, w = shape[-2:]
    planes = math.prod(shape[:-2])
    if (rate_per_pixel is None) == (count is None):
        raise ValueError(f"{owner}: give exactly one of 'rate_per_pixel' or 'count'")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{owner}: 'count' must be an integer >= 0; got {count!r}")
        counts = torch.full((planes,), count, device=like.device, dtype=torch.long)
    else:
        rate = as_param(rate_per_pixel, RATE, owner, like=like, ndim=1)
        if rate.shape[0] not in (1, shape[0]):
            raise ValueError(f"{owner}: 'rate_per_pixel' batch {rate.shape[0]} != {shape[0]}")
        mean = (rate * (h * w)).expand(shape[0]).repeat_interleave(planes // shape[0])
        counts = torch.poisson(mean, generator=generator).long()
    n = int(counts.sum())
    plane = torch.repeat_interleave(torch.arange(planes, device=like.device), counts)

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator, **kw)

    x0, y0 = uniform(-0.5, w - 0.5), uniform(-0.5, h - 0.5)
    theta, ell, amp = uniform(0.0, 2 * math.pi), uniform(*length), uniform(*amplitude)
    steps = max(2, math.ceil(2 * length[1]) + 1)
    t = torch.linspace(0.0, 1.0, steps, **kw)
    col = torch.round(x0[:, None] + t * (ell * torch.cos(theta))[:, None]).long()
    row = torch.round(y0[:, None] + t * (ell * torch.sin(theta))[:, None]).long()
    ok = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    flat = (plane[:, None] * (h * w) + row.clamp(0, h - 1) * w + col.clamp(0, w - 1))[ok]
    vals = amp[:, None].expand(n, steps)[ok]
    out = torch.zeros(planes * h * w, **kw).scatter_reduce(0, flat, vals, reduce="amax")
    return out.reshape(shape)


def prnu(
    shape: Sequence[int],
    sigma: ParamLike,
    *,
    generator: torch.Generator,
    dtype: torch.dtype | None = None,
    device=None,
) -> Tensor:
    """Multiplicative flat-field (pixel response) map ``1 + N(0, σ²)`` of ``shape``.

    ``sigma`` (>= 0, number or ``(B,)``) is the relative per-pixel response scatter; for
    ``σ ≲ 0.1`` the probability of a non-positive response is negligible (< 1e-23).
    """
    owner = "prnu"
    shape = _check_shape(shape, owner)
    like = _like(dtype, device)
    s = _batched(sigma, PRNU_SIGMA, owner, like, len(shape))
    noise = torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
    return 1.0 + s * noise
