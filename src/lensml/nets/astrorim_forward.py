"""AstroRIM's conditional forward operator F_φ and its adjoint (Walsh et al. §3.1.2, eqs. 16–31).

Given a pixelated source ``x`` and the lens parameters Θ predicted from the observation by
:class:`lensml.nets.astrorim.LensParameterEncoder`, the operator computes

    y = K_PSF * x(θ − α_total(θ; Θ)) + b_bg                                  (eqs. 21, 26, 27)

Stage 1 — warp (eqs. 16–21). α_total = α_SIE + α_shear + α_NFW evaluated with lensml's lens
physics on the image-pixel centres (``supersample`` × ``supersample`` sub-pixels per pixel,
block-averaged, when ``supersample > 1``):

* SIE: :func:`lensml.physics.mass.sie.deflection` (Kormann et al. 1994, the exact isothermal
  ellipsoid with lenstronomy's θ_E convention, ``theta_e = b``, core ``r_c``). The paper's
  eq. 16 writes ``b (q θ'_x, θ'_y) / √((q θ'_x)² + θ'_y² + r_c²)`` in the rotated frame — not
  the deflection of an elliptical mass (not a gradient, and never rotated back to the sky
  frame); lensml uses the physical SIE so that F with the true parameters reproduces the
  ``strong`` generator (which renders exactly this SIE).
* shear (eq. 17): :func:`lensml.physics.mass.shear.deflection` with γ1 = γ cos 2γ_φ,
  γ2 = γ sin 2γ_φ about the origin — identical to eq. 17.
* NFW (eqs. 18–19): :func:`lensml.physics.mass.nfw.deflection` (Wright & Brainerd 2000),
  α = 4 κ_s r_s g(x)/x with g(x) = ln(x/2) + arccosh(1/x)/√(1 − x²). The paper's eq. 19 F(x)
  (with F(1) = 2/3) is the bracket of the NFW *convergence*, not of the deflection; eq. 39
  (simulator) has the correct ln(x/2) + … form, which is used here. Centred on (x0, y0).

All lengths are in normalised image coordinates: the image spans [−1, 1] (pixel centres at
``(j − (H−1)/2) · 2/H``, ``grid_sample``'s ``align_corners=False`` convention) and the source
grid spans ``[−source_fov, source_fov]`` (1: the image's field, the ``strong`` generator's
convention). The source is then sampled bilinearly at β = θ − α with zero padding — the
numbers of ``grid_sample`` (``align_corners=False``) and
:func:`lensml.physics.raytrace.sample_source`, equal to rounding (tested) — and converted from
flux per source pixel to flux per image pixel by ``(image pixel / source pixel)²``.

Stage 2 — PSF (eqs. 22–26), global learnable: a Moffat profile ``[1 + (r/α)²]^−β`` with
``α = FWHM / (2 √(2^{1/β} − 1))``, FWHM = exp(log FWHM_raw) in pixels (initial 3.0, eq. 24),
β = exp(log β_raw) (initial 4.5, eq. 25), integrated over pixels (``psf_oversample``² samples
per pixel — the convention of the generator's stored PSFs) and normalised to unit sum, plus a
learned ``psf_size²`` residual kernel initialised to zero (eq. 22, not renormalised). The
convolution is linear (zero padding) with :func:`lensml.physics.convolve.convolve` (FFT).
A per-item PSF ``(B, 1, K, K)`` may be passed instead (e.g. a measured one).

Stage 3 — background (eq. 27): a global b_bg = exp(log b_bg,raw) added to the image. Noise
(eqs. 28–30) is available as :meth:`ConditionalForwardOperator.add_noise` with global gain and
read noise (1.0 e⁻/ADU and 1e−3 e⁻); the paper found it unnecessary in training. They are
buffers, not parameters: Poisson sampling carries no gradient, so they could never be learned
(and unused parameters would break distributed training). Learnable: log FWHM, log β, the
residual kernel and log b_bg — 444 numbers for a 21² kernel (paper: "~450").

Adjoint (eq. 31): ``F†(r) = Warpᵀ(PSFᵀ * r)`` with PSFᵀ the convolution with the flipped
kernel and Warpᵀ the exact transpose of bilinear sampling
(:func:`lensml.physics.raytrace.warp_adjoint`, scattering each value back to the four source
pixels with its bilinear weights) — the paper's "grid sampling with inverted coordinates" is not
the transpose and would fail the dot-product test ⟨F x, r⟩ = ⟨x, F† r⟩ that this one passes to
rounding. Both act on the linear part (the background is affine and has no adjoint term).

The lens geometry depends only on Θ, so :meth:`geometry` computes the source-plane positions
and their bilinear plan (four corner indices and weights per position, :func:`bilinear_plan`)
once per observation; :meth:`apply` gathers with it and :meth:`adjoint` scatters with the same
numbers, across all the RIM's iterations (the weights carry the gradient with respect to Θ).
Physics runs in float32 (float64 if given float64) with autocast disabled, so mixed precision
never sends half-precision data through the FFTs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lensml.physics.convolve import convolve
from lensml.physics.grids import PixelGrid, downsample, upsample
from lensml.physics.mass import nfw, shear, sie
from lensml.physics.psf import moffat_alpha
from lensml.physics.raytrace import grid_coordinates

__all__ = ["ConditionalForwardOperator", "LensGeometry", "bilinear_plan", "deflection_field"]

_PARAMS = ("b", "q", "phi", "x0", "y0", "gamma", "gamma_phi", "kappa_s", "r_s")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def deflection_field(
    x: Tensor,
    y: Tensor,
    params: Mapping[str, Tensor],
    core: float = 0.01,
    use_nfw: bool = True,
) -> tuple[Tensor, Tensor]:
    """Total deflection α_SIE + α_shear + α_NFW (eq. 20) in normalised units.

    Parameters
    ----------
    x, y : Tensor
        Image-plane positions ``(H, W)`` (normalised units, the image spanning [−1, 1]).
    params : mapping of str to Tensor
        The nine parameters (``(B,)`` tensors or numbers), normalised units: b > 0 (SIE θ_E,
        lenstronomy convention), q in (0, 1], phi (rad), x0, y0, gamma in [0, 1), gamma_phi
        (rad), kappa_s >= 0, r_s (> 0 where kappa_s > 0; items with r_s <= 0 get no halo).
    core : float
        SIE core radius r_c >= 0 (normalised; paper 0.01).
    use_nfw : bool
        Include the NFW halo.

    Returns
    -------
    tuple of Tensor
        ``(alpha_x, alpha_y)``, each ``(B, H, W)``.
    """
    missing = [p for p in _PARAMS if p not in params]
    if missing:
        raise ValueError(f"deflection_field: missing parameters {missing}; expected {_PARAMS}")
    p = {k: torch.as_tensor(params[k], dtype=x.dtype, device=x.device).reshape(-1) for k in _PARAMS}
    ax, ay = sie.deflection(x, y, p["b"], p["q"], p["phi"], p["x0"], p["y0"], core)
    g1 = p["gamma"] * torch.cos(2 * p["gamma_phi"])
    g2 = p["gamma"] * torch.sin(2 * p["gamma_phi"])
    sx, sy = shear.deflection(x, y, g1, g2)
    ax, ay = ax + sx, ay + sy
    if use_nfw:
        has = p["r_s"] > 0
        r_s = torch.where(has, p["r_s"], torch.ones_like(p["r_s"]))
        alpha_rs = torch.where(has, nfw.kappa_s_to_alpha_rs(p["kappa_s"], r_s), 0.0)
        nx, ny = nfw.deflection(x, y, r_s, alpha_rs, p["x0"], p["y0"])
        ax, ay = ax + nx, ay + ny
    return ax, ay


@dataclass(frozen=True)
class LensGeometry:
    """Source-plane positions of one batch of observations and their bilinear sampling plan.

    Attributes
    ----------
    bx, by : Tensor
        β = θ − α(θ) of the (sub-)pixel centres, ``(B, H·k, W·k)`` in normalised units.
    supersample : int
        k, sub-pixels per image-pixel side.
    index : Tensor
        ``(B, 4·N)`` flat source-pixel indices of the four bilinear corners of each of the
        N = (H·k)·(W·k) positions (corner-major), clamped into the grid.
    weight : Tensor
        ``(B, 4, N)`` bilinear weights, zero for corners outside the source grid (zero
        padding, ``grid_sample``'s ``padding_mode="zeros"``, ``align_corners=False``).
    """

    bx: Tensor
    by: Tensor
    supersample: int
    index: Tensor
    weight: Tensor

    @property
    def batch_size(self) -> int:
        """Number of observations B."""
        return int(self.bx.shape[0])


def bilinear_plan(bx: Tensor, by: Tensor, grid: PixelGrid) -> tuple[Tensor, Tensor]:
    """Corner indices ``(B, 4·N)`` and weights ``(B, 4, N)`` of bilinear sampling at (bx, by).

    The same arithmetic as :func:`lensml.physics.raytrace.warp_adjoint` (and therefore as
    ``grid_sample`` with ``align_corners=False``, zero padding): pixel ``(i, j)`` of ``grid`` is
    centred at ``(x_j, y_i)``; the weights are differentiable in (bx, by).
    """
    hs, ws = grid.shape
    xmin, _, ymin, _ = grid.extent
    s = float(grid.pixel_scale)
    b = bx.shape[0]
    fx = ((bx - xmin) / s - 0.5).reshape(b, -1)
    fy = ((by - ymin) / s - 0.5).reshape(b, -1)
    j0, i0 = torch.floor(fx.detach()), torch.floor(fy.detach())
    wx1, wy1 = fx - j0, fy - i0
    j0, i0 = j0.long(), i0.long()
    index, weight = [], []
    for di, wy in ((0, 1 - wy1), (1, wy1)):
        for dj, wx in ((0, 1 - wx1), (1, wx1)):
            i, j = i0 + di, j0 + dj
            valid = (i >= 0) & (i < hs) & (j >= 0) & (j < ws)
            index.append(i.clamp(0, hs - 1) * ws + j.clamp(0, ws - 1))
            weight.append(wx * wy * valid)
    return torch.cat(index, dim=1), torch.stack(weight, dim=1)


class ConditionalForwardOperator(nn.Module):
    """F_φ(x; Θ): warp by SIE + shear + NFW, global Moffat + residual PSF, global background.

    Parameters
    ----------
    image_size : int
        Observation side H = W in pixels (96 in the paper).
    source_size : int
        Source grid side Ns (96: the ``strong`` generator's ``source_size``).
    source_fov : float
        Half-side of the source grid in units of the image's half-side (1: same field).
    psf_size : int
        Side of the learned PSF kernel, odd (21).
    fwhm : float
        Initial Moffat FWHM in image pixels (eq. 24: 3.0).
    beta : float
        Initial Moffat index (eq. 25: 4.5).
    background : float
        Initial background b_bg > 0 (image units, per pixel).
    gain, read_noise : float
        Initial gain (e⁻/ADU) and read noise (e⁻) of :meth:`add_noise` (eqs. 28–30).
    core : float
        Fixed SIE core radius r_c (normalised units; paper 0.01).
    use_nfw : bool
        Include the NFW halo (the paper's "optional" component).
    supersample : int
        Sub-pixels per image-pixel side for the warp (1: the paper's pixel-centre sampling).
    psf_oversample : int
        Samples per pixel side when integrating the Moffat profile over pixels.
    """

    def __init__(
        self,
        image_size: int = 96,
        source_size: int = 96,
        source_fov: float = 1.0,
        psf_size: int = 21,
        fwhm: float = 3.0,
        beta: float = 4.5,
        background: float = 1e-3,
        gain: float = 1.0,
        read_noise: float = 1e-3,
        core: float = 0.01,
        use_nfw: bool = True,
        supersample: int = 1,
        psf_oversample: int = 5,
    ) -> None:
        super().__init__()
        owner = "ConditionalForwardOperator"
        ints = {
            "image_size": image_size,
            "source_size": source_size,
            "psf_size": psf_size,
            "supersample": supersample,
            "psf_oversample": psf_oversample,
        }
        for key, value in ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{owner}: {key} must be an integer >= 1, got {value!r}")
        if psf_size % 2 == 0 or psf_size < 3:
            raise ValueError(f"{owner}: psf_size must be odd and >= 3, got {psf_size}")
        positive = {
            "source_fov": source_fov,
            "fwhm": fwhm,
            "beta": beta,
            "background": background,
            "gain": gain,
            "read_noise": read_noise,
        }
        for key, value in positive.items():
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{owner}: {key} must be a finite number > 0, got {value!r}")
        if not isinstance(core, int | float) or not math.isfinite(core) or core < 0:
            raise ValueError(f"{owner}: core must be a finite number >= 0, got {core!r}")
        if not isinstance(use_nfw, bool):
            raise ValueError(f"{owner}: use_nfw must be true or false, got {use_nfw!r}")
        self.image_size, self.source_size, self.psf_size = image_size, source_size, psf_size
        self.supersample, self.psf_oversample = supersample, psf_oversample
        self.core, self.use_nfw = float(core), use_nfw
        self.image_grid = PixelGrid.square(image_size, 2.0 / image_size)
        self.source_grid = PixelGrid.square(source_size, 2.0 * source_fov / source_size)
        #: flux per source pixel → flux per image pixel
        self.flux_scale = (self.image_grid.pixel_scale / self.source_grid.pixel_scale) ** 2
        self.log_fwhm = nn.Parameter(torch.tensor(math.log(fwhm)))
        self.log_beta = nn.Parameter(torch.tensor(math.log(beta)))
        self.psf_residual = nn.Parameter(torch.zeros(psf_size, psf_size))
        self.log_background = nn.Parameter(torch.tensor(math.log(background)))
        # eqs. 28–30 call gain and read noise "learnable", but Poisson sampling carries no
        # gradient: they are buffers (saved with the weights, never optimised)
        self.register_buffer("log_gain", torch.tensor(math.log(gain)))
        self.register_buffer("log_read_noise", torch.tensor(math.log(read_noise)))

    # ------------------------------------------------------------------ global parameters
    @property
    def fwhm(self) -> Tensor:
        """Moffat FWHM in image pixels (eq. 24)."""
        return self.log_fwhm.exp()

    @property
    def beta(self) -> Tensor:
        """Moffat index β (eq. 25)."""
        return self.log_beta.exp()

    @property
    def background(self) -> Tensor:
        """Global background b_bg (eq. 27), image units per pixel."""
        return self.log_background.exp()

    def moffat_kernel(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """Pixel-integrated, unit-sum Moffat kernel ``(1, 1, K, K)`` of the global FWHM and β."""
        o, k = self.psf_oversample, self.psf_size
        x, y = grid_coordinates(PixelGrid.square(k, 1.0), o, dtype, self.log_fwhm.device)
        fwhm, beta = self.fwhm.to(dtype), self.beta.to(dtype)
        alpha = moffat_alpha(fwhm, beta)
        prof = torch.exp(-beta * torch.log1p((x * x + y * y) / (alpha * alpha)))
        kern = downsample(prof, o)
        return (kern / kern.sum()).reshape(1, 1, k, k)

    def psf_kernel(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """K_PSF = K_Moffat + K_residual (eq. 22), ``(1, 1, K, K)``."""
        return self.moffat_kernel(dtype) + self.psf_residual.to(dtype).reshape(
            1, 1, *([self.psf_size] * 2)
        )

    def psf_tv(self) -> Tensor:
        """L_PSF (eq. 46): Σ (K_{i+1,j} − K_{i,j})² + (K_{i,j+1} − K_{i,j})² of the residual."""
        r = self.psf_residual
        return ((r[1:, :] - r[:-1, :]) ** 2).sum() + ((r[:, 1:] - r[:, :-1]) ** 2).sum()

    # ------------------------------------------------------------------ physics
    def geometry(self, params: Mapping[str, Tensor]) -> LensGeometry:
        """Source-plane positions β = θ − α_total(θ; Θ) of the (sub-)pixel centres.

        Parameters
        ----------
        params : mapping of str to Tensor
            The nine ``(B,)`` parameters in normalised units (see :func:`deflection_field`).
        """
        ref = params.get("b") if isinstance(params, Mapping) else None
        if not isinstance(ref, Tensor):
            raise ValueError("geometry: params must be a mapping with (B,) tensors, 'b' included")
        dtype = _work_dtype(ref.dtype)
        with torch.autocast(ref.device.type, enabled=False):
            x, y = grid_coordinates(self.image_grid, self.supersample, dtype, ref.device)
            p = {k: torch.as_tensor(v).to(dtype) for k, v in params.items()}
            ax, ay = deflection_field(x, y, p, self.core, self.use_nfw)
            bx, by = x - ax, y - ay
            index, weight = bilinear_plan(bx, by, self.source_grid)
            return LensGeometry(bx, by, self.supersample, index, weight)

    def _kernel(self, psf: Tensor | None, dtype: torch.dtype) -> Tensor:
        if psf is None:
            return self.psf_kernel(dtype)
        if psf.ndim != 4 or psf.shape[1] != 1 or psf.shape[-1] != psf.shape[-2]:
            raise ValueError(f"psf must have shape (B or 1, 1, K, K); got {tuple(psf.shape)}")
        return psf.to(dtype)

    def _check_image(self, t: Tensor, name: str, side: int) -> None:
        if not isinstance(t, Tensor) or t.ndim != 4 or t.shape[1] != 1:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must have shape (B, 1, {side}, {side}); got {shape}")
        if tuple(t.shape[-2:]) != (side, side):
            raise ValueError(f"{name} must have shape (B, 1, {side}, {side}); got {tuple(t.shape)}")

    def warp(self, source: Tensor, geometry: LensGeometry) -> Tensor:
        """Bilinear sampling of ``source`` ``(B|1, 1, Ns, Ns)`` at the geometry's positions →
        ``(B, 1, H·k, W·k)`` (equal to :func:`lensml.physics.raytrace.sample_source`)."""
        b, n = geometry.weight.shape[0], geometry.weight.shape[-1]
        flat = source.reshape(source.shape[0], -1).expand(b, -1)
        vals = torch.gather(flat, 1, geometry.index).reshape(b, 4, n)
        out = (vals * geometry.weight.to(vals.dtype)).sum(dim=1)
        return out.reshape(b, 1, *geometry.bx.shape[-2:])

    def warp_adjoint(self, image: Tensor, geometry: LensGeometry) -> Tensor:
        """Transpose of :meth:`warp`: ``(B, 1, H·k, W·k)`` → ``(B, 1, Ns, Ns)`` (each value
        scattered to its four source pixels with its bilinear weights)."""
        b, n = geometry.weight.shape[0], geometry.weight.shape[-1]
        vals = image.reshape(b, 1, n) * geometry.weight.to(image.dtype)
        out = image.new_zeros(b, self.source_size * self.source_size)
        out = out.scatter_add(1, geometry.index, vals.reshape(b, 4 * n))
        return out.reshape(b, 1, self.source_size, self.source_size)

    def apply(self, source: Tensor, geometry: LensGeometry, psf: Tensor | None = None) -> Tensor:
        """Linear part ``K_PSF * Warp(x)`` (eqs. 21, 26): ``(B|1, 1, Ns, Ns)`` → ``(B, 1, H, H)``.

        Parameters
        ----------
        source : Tensor
            Source flux per source pixel on the source grid.
        geometry : LensGeometry
            From :meth:`geometry`.
        psf : Tensor, optional
            ``(B|1, 1, K, K)`` kernel to use instead of the learned global PSF.
        """
        self._check_image(source, "source", self.source_size)
        dtype = _work_dtype(source.dtype)
        with torch.autocast(source.device.type, enabled=False):
            warped = self.warp(source.to(dtype), geometry)
            k = geometry.supersample
            if k > 1:
                warped = F.avg_pool2d(warped, k)
            return convolve(warped * self.flux_scale, self._kernel(psf, dtype))

    def adjoint(self, image: Tensor, geometry: LensGeometry, psf: Tensor | None = None) -> Tensor:
        """Conditional adjoint F†(r) = Warpᵀ(PSFᵀ * r) (eq. 31): ``(B, 1, H, H)`` → source grid.

        Exact transpose of :meth:`apply` (same ``geometry`` and ``psf``).
        """
        self._check_image(image, "image", self.image_size)
        dtype = _work_dtype(image.dtype)
        with torch.autocast(image.device.type, enabled=False):
            r = convolve(image.to(dtype), self._kernel(psf, dtype).flip(-1, -2))
            k = geometry.supersample
            if k > 1:
                r = upsample(r, k) / (k * k)
            return self.warp_adjoint(r, geometry) * self.flux_scale

    def forward(
        self,
        source: Tensor,
        params: Mapping[str, Tensor] | LensGeometry,
        psf: Tensor | None = None,
        background: bool = True,
    ) -> Tensor:
        """Model image ``F_φ(x; Θ) = K_PSF * Warp(x) + b_bg`` (eq. 27), ``(B, 1, H, H)``.

        ``params`` is the encoder's dict (or a precomputed :class:`LensGeometry`).
        """
        geom = params if isinstance(params, LensGeometry) else self.geometry(params)
        out = self.apply(source, geom, psf)
        return out + self.background.to(out.dtype) if background else out

    def add_noise(self, image: Tensor, generator: torch.Generator) -> Tensor:
        """Eqs. 28–30: ``(Poisson(gain · y) + N(0, σ_read²)) / gain`` (not differentiable)."""
        if not isinstance(generator, torch.Generator):
            raise ValueError("add_noise: generator must be a torch.Generator")
        gain = self.log_gain.exp().detach().to(image.dtype)
        read = self.log_read_noise.exp().detach().to(image.dtype)
        with torch.no_grad():
            counts = torch.poisson((gain * image).clamp_min(0.0), generator=generator)
            noise = torch.randn(
                image.shape, generator=generator, dtype=image.dtype, device=image.device
            )
            return (counts + read * noise) / gain
