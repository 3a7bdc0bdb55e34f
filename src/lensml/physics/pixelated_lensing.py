"""Forward model of the pixelated-RIM paper: pixelated κ and pixelated source → image (§2.2).

For a convergence map κ on the image grid (M² pixels over ``fov`` arcsec) and a source
surface-brightness map on a source grid (``n_source``² pixels over ``source_fov`` arcsec):

1. deflection α by linear FFT convolution of κ with the 1/r kernel (eq. 5;
   :func:`lensml.physics.pixelated.deflection_from_pixelated_kappa`, zero-padded so that no
   wrap-around reaches the M × M output — the paper's (4M + 1)² padding gives the same numbers);
2. ray tracing β = θ − α(θ) at the image pixel centres (eq. 4);
3. bilinear interpolation of the source at β (zero outside the source grid);
4. convolution with the PSF (unit-sum kernel, zero padding at the image edges);
5. white Gaussian noise of standard deviation σ (§3.3; SNR ≡ 1/σ for sources of peak 1).

The image is in the units of the source (surface brightness): a source of peak 1 gives a lensed
image of peak ≤ 1 before blurring, so σ is the inverse peak signal-to-noise ratio, as in the paper.

Likelihood (eq. 3) with C = σ² I: ``log p(y | x) = −½ χ²``, ``χ² = Σ_i (y_i − F(x)_i)² / σ²``
(constant terms dropped); :meth:`PixelatedLensing.likelihood_gradients` differentiates it by
autograd with respect to the source and κ, one example at a time in effect (the batch terms are
independent).

Helpers for the simulator: :func:`gaussian_psf_kernels` (per-example Gaussian PSFs),
:func:`einstein_radius_from_kappa` (θ_E from the mass in κ > 1 pixels, eq. 13 / §3.2.2) and
:func:`truncated_normal` (Table 1's distributions, inverse-CDF sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lensml.physics.convolve import convolve
from lensml.physics.grids import PixelGrid
from lensml.physics.pixelated import KERNELS, deflection_from_pixelated_kappa
from lensml.physics.psf import gaussian_psf
from lensml.physics.raytrace import sample_source

__all__ = [
    "PixelatedLensing",
    "einstein_radius_from_kappa",
    "gaussian_psf_kernels",
    "truncated_normal",
]


def _check_positive_int(value: object, name: str, lo: int = 2) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"PixelatedLensing: {name!r} must be an integer >= {lo}; got {value!r}")
    return value


def _check_positive_float(value: object, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"PixelatedLensing: {name!r} must be a finite number > 0; got {value!r}")
    return float(value)


@dataclass(frozen=True)
class PixelatedLensing:
    """Ray-tracing forward model with a pixelated κ map and a pixelated source.

    Parameters
    ----------
    n_image : int
        Image (and κ) pixels per side M, >= 2. Paper: 128.
    fov : float
        Image field of view, edge to edge, arcsec (> 0). Paper: 7.69″ (0.06″ pixels).
    n_source : int
        Source pixels per side, >= 2. Paper: 128.
    source_fov : float
        Source field of view, arcsec (> 0). Paper: 3″.
    kernel : {"point", "pixel", "linear"}
        Deflection kernel of :mod:`lensml.physics.pixelated` (paper: point masses;
        ``"linear"`` is the most accurate near steep κ gradients such as a cusp).
    """

    n_image: int = 128
    fov: float = 7.69
    n_source: int = 128
    source_fov: float = 3.0
    kernel: str = "point"
    image_grid: PixelGrid = field(init=False, repr=False, compare=False)
    source_grid: PixelGrid = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_positive_int(self.n_image, "n_image")
        _check_positive_int(self.n_source, "n_source")
        _check_positive_float(self.fov, "fov")
        _check_positive_float(self.source_fov, "source_fov")
        if self.kernel not in KERNELS:
            raise ValueError(
                f"PixelatedLensing: 'kernel' must be one of {KERNELS}; got {self.kernel!r}"
            )
        object.__setattr__(
            self, "image_grid", PixelGrid.square(self.n_image, self.fov / self.n_image)
        )
        object.__setattr__(
            self, "source_grid", PixelGrid.square(self.n_source, self.source_fov / self.n_source)
        )

    # ----------------------------------------------------------------------------------
    @property
    def pixel_scale(self) -> float:
        """Image (and κ) pixel side, arcsec."""
        return self.image_grid.pixel_scale

    @property
    def source_pixel_scale(self) -> float:
        """Source pixel side, arcsec."""
        return self.source_grid.pixel_scale

    def _check_map(self, value: Tensor, name: str, n: int, owner: str) -> Tensor:
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise ValueError(f"PixelatedLensing.{owner}: {name!r} must be a floating-point tensor")
        if value.ndim == 2:
            value = value[None, None]
        elif value.ndim == 3:
            value = value[:, None]
        if value.ndim != 4 or value.shape[1] != 1 or tuple(value.shape[-2:]) != (n, n):
            raise ValueError(
                f"PixelatedLensing.{owner}: {name!r} must have shape (B, 1, {n}, {n}); "
                f"got {tuple(value.shape)}"
            )
        if not bool(torch.isfinite(value.detach()).all()):
            raise ValueError(f"PixelatedLensing.{owner}: {name!r} contains NaN or inf")
        return value

    def _sigma(self, sigma: float | Tensor, like: Tensor, owner: str) -> Tensor:
        s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
        if s.ndim > 1 or (s.ndim == 1 and s.shape[0] not in (1, like.shape[0])):
            raise ValueError(
                f"PixelatedLensing.{owner}: 'sigma' must be a number or a (B,) tensor with "
                f"B = {like.shape[0]}; got shape {tuple(s.shape)}"
            )
        if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
            raise ValueError(f"PixelatedLensing.{owner}: 'sigma' must be finite and > 0")
        return s.reshape(-1, 1, 1, 1) if s.ndim == 1 else s.reshape(1, 1, 1, 1)

    # ----------------------------------------------------------------------------------
    def deflection(self, kappa: Tensor) -> tuple[Tensor, Tensor]:
        """Deflection (α_x, α_y), each ``(B, M, M)`` arcsec, of κ ``(B, 1, M, M)``."""
        k = self._check_map(kappa, "kappa", self.n_image, "deflection")
        return deflection_from_pixelated_kappa(k[:, 0], self.pixel_scale, self.kernel)

    def ray_trace(self, kappa: Tensor) -> tuple[Tensor, Tensor]:
        """Source-plane positions β = θ − α(θ) of the image pixel centres, each ``(B, M, M)``."""
        ax, ay = self.deflection(kappa)
        x, y = self.image_grid.coordinates(dtype=ax.dtype, device=ax.device)
        return x - ax, y - ay

    def lens(self, source: Tensor, kappa: Tensor) -> Tensor:
        """Lensed surface brightness ``(B, 1, M, M)`` (no PSF), bilinear source sampling."""
        src = self._check_map(source, "source", self.n_source, "lens")
        bx, by = self.ray_trace(kappa)
        return sample_source(src.to(bx.dtype), self.source_grid, bx, by)

    def forward(self, source: Tensor, kappa: Tensor, psf: Tensor | None = None) -> Tensor:
        """Noiseless observation ``(B, 1, M, M)``: :meth:`lens` convolved with ``psf``.

        ``psf`` is ``(B|1, 1, K, K)`` (K odd, unit sum) or None (no blur).
        """
        image = self.lens(source, kappa)
        if psf is None:
            return image
        if not isinstance(psf, Tensor) or psf.ndim != 4 or psf.shape[1] != 1:
            raise ValueError(
                "PixelatedLensing.forward: 'psf' must be a (B|1, 1, K, K) tensor or None; "
                f"got {getattr(psf, 'shape', type(psf))}"
            )
        return convolve(image, psf)

    __call__ = forward

    def chi2(
        self,
        y: Tensor,
        source: Tensor,
        kappa: Tensor,
        sigma: float | Tensor,
        psf: Tensor | None = None,
    ) -> Tensor:
        """χ² = Σ_i (y_i − F(x)_i)² / σ², shape ``(B,)``."""
        obs = self._check_map(y, "y", self.n_image, "chi2")
        model = self.forward(source, kappa, psf)
        s = self._sigma(sigma, model, "chi2")
        return (((obs.to(model.dtype) - model) / s) ** 2).sum(dim=(1, 2, 3))

    def reduced_chi2(
        self,
        y: Tensor,
        source: Tensor,
        kappa: Tensor,
        sigma: float | Tensor,
        psf: Tensor | None = None,
    ) -> Tensor:
        """χ²_ν = χ² / ν with ν = M² (the paper's convention, §2.5.1), shape ``(B,)``."""
        return self.chi2(y, source, kappa, sigma, psf) / float(self.n_image**2)

    def log_likelihood(
        self,
        y: Tensor,
        source: Tensor,
        kappa: Tensor,
        sigma: float | Tensor,
        psf: Tensor | None = None,
    ) -> Tensor:
        """Gaussian log-likelihood −½ χ² (eq. 3 without constants), shape ``(B,)``."""
        return -0.5 * self.chi2(y, source, kappa, sigma, psf)

    def likelihood_gradients(
        self,
        y: Tensor,
        source: Tensor,
        kappa: Tensor,
        sigma: float | Tensor,
        psf: Tensor | None = None,
        create_graph: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """∇_source log p(y | x) and ∇_κ log p(y | x) by autograd, shapes of the inputs.

        The inputs are detached first, so the result does not depend on (or propagate into)
        any graph they belong to; with ``create_graph=True`` the result is differentiable
        with respect to those detached copies only (for second-order checks).
        """
        with torch.enable_grad():
            s = source.detach().requires_grad_(True)
            k = kappa.detach().requires_grad_(True)
            ll = self.log_likelihood(y.detach(), s, k, sigma, psf).sum()
            gs, gk = torch.autograd.grad(ll, (s, k), create_graph=create_graph)
        return gs, gk

    def simulate(
        self,
        source: Tensor,
        kappa: Tensor,
        psf: Tensor | None,
        sigma: float | Tensor,
        rng: torch.Generator,
    ) -> Tensor:
        """Noisy observation ``F(x) + σ n``, n ~ N(0, 1) drawn from ``rng`` (a CPU generator)."""
        if not isinstance(rng, torch.Generator):
            raise ValueError("PixelatedLensing.simulate: 'rng' must be a torch.Generator")
        model = self.forward(source, kappa, psf)
        s = self._sigma(sigma, model, "simulate")
        noise = torch.randn(model.shape, generator=rng, dtype=model.dtype, device=rng.device)
        return model + s * noise.to(model.device)


def gaussian_psf_kernels(
    fwhm: Tensor | float,
    pixel_scale: float,
    size: int | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Unit-sum, pixel-integrated circular Gaussian PSFs, one per FWHM.

    Parameters
    ----------
    fwhm : Tensor or float
        FWHM in arcsec, ``(B,)`` or a number; > 0.
    pixel_scale : float
        Pixel side, arcsec.
    size : int, optional
        Odd kernel side; default ``2 ceil(3 σ_max / pixel_scale) + 1`` (at least 3), which holds
        > 99.7 % of the flux of the widest PSF along each axis.
    dtype : torch.dtype, optional
        Of the result (default: that of ``fwhm`` if a tensor, else torch's default).

    Returns
    -------
    Tensor
        ``(B, 1, K, K)``.
    """
    f = torch.as_tensor(fwhm, dtype=dtype or (fwhm.dtype if isinstance(fwhm, Tensor) else None))
    f = f.reshape(-1)
    if f.numel() == 0 or not bool(torch.isfinite(f).all()) or bool((f <= 0).any()):
        raise ValueError("gaussian_psf_kernels: 'fwhm' must be finite and > 0 arcsec")
    if size is None:
        sigma_px = float(f.max()) / (2 * math.sqrt(2 * math.log(2))) / pixel_scale
        size = max(3, 2 * math.ceil(3 * sigma_px) + 1)
    return gaussian_psf(f, size, pixel_scale, dtype=f.dtype)


def einstein_radius_from_kappa(
    kappa: Tensor, pixel_scale: float, method: str = "supercritical"
) -> Tensor:
    """Einstein radius of a pixelated convergence map, arcsec.

    Methods
    -------
    ``"supercritical"`` (the paper's estimate, eq. 13 and §3.2.2)
        θ_E = √(M(κ > 1) / π) with M(κ > 1) = Σ_{κ_i > 1} κ_i a (a the pixel area, κ in units
        of Σ_crit). For a singular isothermal sphere it returns θ_E / √2 (the κ > 1 disc has
        radius θ_E / 2 and holds half the mass inside θ_E); the paper uses it only to set the
        range of lensing scales of its training maps.
    ``"enclosed"``
        The radius √(n a / π) of the largest disc of n pixels, nearest first to the κ-weighted
        centroid of the supercritical pixels, whose mean convergence is ≥ 1 — the usual
        definition; within a fraction of a pixel for circular lenses, about the geometric-mean
        radius for elliptical ones.

    Both return 0 when no pixel is supercritical.

    Parameters
    ----------
    kappa : Tensor
        ``(B, 1, H, W)``, ``(B, H, W)`` or ``(H, W)``.
    pixel_scale : float
        Pixel side in arcsec (> 0).
    method : {"supercritical", "enclosed"}
        See above.

    Returns
    -------
    Tensor
        ``(B,)`` arcsec.
    """
    if not isinstance(kappa, Tensor) or not kappa.is_floating_point():
        raise ValueError("einstein_radius_from_kappa: 'kappa' must be a floating-point tensor")
    if method not in ("supercritical", "enclosed"):
        raise ValueError(
            "einstein_radius_from_kappa: 'method' must be 'supercritical' or 'enclosed'; "
            f"got {method!r}"
        )
    _ = _check_positive_float(pixel_scale, "pixel_scale")
    k = kappa.reshape(-1, *kappa.shape[-2:])
    area = pixel_scale**2
    sup = torch.where(k > 1, k, torch.zeros_like(k))
    mass = sup.sum(dim=(-2, -1)) * area
    if method == "supercritical":
        return torch.sqrt(mass / math.pi)
    h, w = k.shape[-2:]
    grid = PixelGrid(w, h, pixel_scale)
    x, y = grid.coordinates(dtype=k.dtype, device=k.device)
    tot = sup.sum(dim=(-2, -1)).clamp_min(torch.finfo(k.dtype).tiny)
    cx = (sup * x).sum(dim=(-2, -1)) / tot
    cy = (sup * y).sum(dim=(-2, -1)) / tot
    r = torch.sqrt((x - cx[:, None, None]) ** 2 + (y - cy[:, None, None]) ** 2).flatten(1)
    order = torch.argsort(r, dim=1)
    # mean κ of the n nearest pixels; they tile a disc of area n a, radius √(n a / π)
    count = torch.arange(1, r.shape[1] + 1, device=k.device, dtype=k.dtype)
    mean = torch.cumsum(torch.gather(k.flatten(1), 1, order), dim=1) / count
    idx = torch.arange(r.shape[1], device=k.device).expand_as(r)
    last = torch.where(mean >= 1, idx, torch.full_like(idx, -1)).max(dim=1).values
    theta = torch.sqrt((last + 1).to(k.dtype) * area / math.pi)
    return torch.where(mass > 0, theta, torch.zeros_like(theta))


def truncated_normal(
    n: int, lo: float, hi: float, mu: float, sd: float, rng: torch.Generator
) -> Tensor:
    """``n`` draws of N(mu, sd²) truncated to [lo, hi] (inverse-CDF sampling), float64.

    The paper's TN(a, b; μ, σ) of Table 1 is ``truncated_normal(n, a, b, μ, σ, rng)``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"truncated_normal: 'n' must be an integer >= 0; got {n!r}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"truncated_normal: need finite lo < hi; got [{lo}, {hi}]")
    if not (math.isfinite(sd) and sd > 0 and math.isfinite(mu)):
        raise ValueError(f"truncated_normal: need finite mu and sd > 0; got {mu}, {sd}")
    f64 = torch.float64

    def cdf(v: float) -> Tensor:
        return torch.special.ndtr(torch.tensor((v - mu) / sd, dtype=f64))

    a, b = cdf(lo), cdf(hi)
    u = torch.rand(n, generator=rng, dtype=f64)
    p = (a + u * (b - a)).clamp(1e-300, 1 - 1e-16)
    return (mu + sd * torch.special.ndtri(p)).clamp(lo, hi)
