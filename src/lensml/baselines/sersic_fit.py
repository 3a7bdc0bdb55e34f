"""Baseline ``sersic-fit``: batched PSF-convolved Sérsic χ² fitting (GaLNet's "standard" tool).

The classical method GaLNet (Li et al. 2022) is compared with (2DPHOT, GALFIT): minimise

    χ²(p) = Σ_pixels (image − M(p))² / variance,    M = Sérsic(p) ⊗ PSF ⊗ pixel     (eq. 5, BG = 0)

over the seven parameters ``x, y, mag, r_eff, q, pa, n`` of every stamp of a batch at once, by
Levenberg–Marquardt with a damping factor per galaxy (Marquardt's diag(JᵀWJ) scaling, ×0.3
after an accepted step, ×10 after a rejected one), only the unfinished galaxies being
processed at each iteration.

Model
-----
:func:`lensml.physics.stamps.render_sersic_stamps` in float64, with each stamp's own PSF image
as its ``(B, 1, P, P)`` pixel-integrated kernel. It takes any odd, image-shaped kernel,
integrates the pixel once (no double pixel convolution), treats the cusp of high-n profiles on
a refined central lattice with the analytic spike flux, and agrees with GalSim to 0.5% of the
peak. It is also what the ``sersic`` generator renders with (there with the parametric double
Moffat and a 15-pixel fine PSF core); with ``render_core = 15`` the model of a fit and the
generator's noiseless ``"model"`` differ by a median χ² of 5e-4 (max 0.7 over 128 KiDS
mocks; 0.009 / 9.6 with the renderer's default core of 9), so fits of mocks see no model
mismatch. (Rendering :mod:`lensml.physics.light.sersic` on a supersampled grid and convolving
with :mod:`lensml.physics.convolve` would re-implement the same thing, less accurately.)
Known limitation of the renderer: its refined centre sits on the pixel holding the galaxy
centre, so the image jumps by up to ~8e-4 of the peak when the centre crosses a pixel edge;
a fit whose truth lies exactly on an edge can end on the other side (χ² ~ 0.1 instead of 0
for noiseless stamps, parameters still within 1e-3).

Jacobian
--------
One-sided finite differences of that renderer: the unperturbed model and six perturbed ones
rendered as one batch in ``jacobian_dtype`` (d M / d ln F is M itself). float32 (default):
steps of 1e-2 pixel in x, y and 1e-3 of the other parameters' scales, χ²-metric error
< 1% per column against the forward-mode derivative and covariances equal to 0.1%; float64:
1e-4 pixel and 1e-6. x, y steps point towards the nearest pixel centre, so that the jump
above is never inside a step. Why not automatic differentiation: the renderer is
differentiable, but forward mode costs ~7 renders per column (measured: 1.8 s for one column
of 256 stamps against 0.25 s for the render), and a hand-differentiated surrogate (point
samples plus a supersampled centre, FFT-convolved; tried) was off by 20–300% for compact
(r_eff ≲ 2 px), cuspy (n ≳ 4) galaxies, which made LM slower and the covariance wrong. The
differences cost 7 float32 renders (~2 float64 ones) per Jacobian and hold for every galaxy.
The Jacobian is recomputed after each accepted step longer than ~1σ (δᵀJᵀWJδ >
``refresh_tol``; 0 recomputes it after every accepted step); the last one, at most ~1σ from
the result, gives (JᵀWJ)⁻¹.

Two stages share the damping and the Jacobian: trial models are rendered in float32 (the
renderer's float64 path is ~10× slower; float32 models differ by < 3e-6 of the peak) until the
decrement is below ``prefit_tol`` (1e-2), then in float64. Each stage stops an item when the
Gauss–Newton decrement ``gᵀ(JᵀWJ)⁻¹g`` (the χ² a full Gauss–Newton step would still gain,
i.e. the squared distance to the minimum in σ units) falls below its tolerance (``tol`` =
1e-3 for the float64 stage, a remaining step of σ/30; float32 differences set a floor of
~2e-5–1e-4 on noisy stamps), when no step decreases χ² even at damping 1e12, or after
``max_iter`` iterations in all. ``converged`` requires the final
decrement below ``converged_tol`` (1e-2, i.e. within 0.1σ), a finite result, and no bound hit.

Parameters and bounds
---------------------
LM works in unbounded variables ``u`` mapped smoothly onto internal parameters
``θ = (x, y, ln F, ln r_circ, e1, e2, n)``:

* ``x, y = B tanh(u / B)`` with ``B = center_bound`` (arcsec);
* ``ln F = ln F_0 + u`` (F in counts);
* ``ln r_circ = ln r_lo + (ln r_hi − ln r_lo) sigmoid(u)``: the **circularised** radius
  ``r_circ = r_eff √q`` is fitted, because at fixed semi-major radius the image is a cone
  (not differentiable) in the ellipticity at q = 1, while at fixed ``r_circ`` it is smooth;
  the reported ``r_eff = r_circ / √q`` (semi-major, GaLNet eq. 1);
* ``(e1, e2) = e_max tanh(ρ) / ρ · (u1, u2)``, ρ = |u|: ``|e| = (1 − q) / (1 + q)`` and
  ``pa = ½ atan2(e2, e1)``, so PA has no wrap and round galaxies are interior points;
* ``ln n = ln n_lo + (ln n_hi − ln n_lo) sigmoid(u)``.

Outputs are in the ``sersic`` generator's label columns (:data:`LABELS`): x, y (arcsec from
the stamp centre, x right, y up), mag = zeropoint − 2.5 log10(F / exptime), r_eff (arcsec,
semi-major), q, pa (degrees in [0, 180) counter-clockwise from +x), n. Their covariance is
the internal (JᵀWJ)⁻¹ propagated by the derivative of that map (PA and q errors are
undefined at exactly q = 1).

Goodness of fit: ``chi2`` over all fitted pixels, ``reduced_chi2 = chi2 / (N_pix − 7)`` and
GaLNet's a-posteriori ``reduced_chi2_reff`` (eq. 11) over the pixels inside the fitted
effective-radius ellipse (:func:`reduced_chi2_within_reff`).

Measured (``benchmarks/bench_sersic_fit.py``: 256 KiDS mocks of the ``sersic`` generator
without neighbours, one torch thread on the shared 2-core CPU at load ~7): 11 galaxies/s
(3.8 LM iterations on average, 98.8% converged, pull NMAD 0.87–1.06 against the truth);
AstroPhot 0.18 on 5 of them: 11.5 s per galaxy on average, 3.9 s median (2 of its 5 fits
stopped at its iteration limit or "by immobility"), i.e. 128× (43× on the median); where
AstroPhot converged, the two agree within 0.31 combined σ. Pulls on 1000 noisy stamps:
variances 0.95–1.05 for all seven parameters (tests/baselines/test_sersic_fit.py).

Deviations from the paper's tool: no sky background parameter (the stamps are
sky-subtracted), no automatic neighbour masking (pass ``mask``), and the fit is unweighted by
any prior — a plain χ² minimum, like 2DPHOT's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from pydantic import Field, model_validator
from torch import Tensor

from lensml.baselines.fit_inputs import check_fit_inputs
from lensml.baselines.sersic_moments import LABELS, moments_init
from lensml.config import ConfigModel
from lensml.physics.grids import PixelGrid
from lensml.physics.stamps import render_sersic_stamps
from lensml.registry import BASELINES

__all__ = [
    "LABELS",
    "SersicFit",
    "SersicFitResult",
    "labels_from_theta",
    "moments_init",
    "reduced_chi2_within_reff",
    "theta_from_labels",
]

_OWNER = "SersicFit"
_F64 = torch.float64
_LN10 = math.log(10.0)
_U_FLUX_MAX = 25.0  # |ln F − ln F_0| allowed to the optimiser


# ---- parameter maps ----------------------------------------------------------------------
def theta_from_labels(labels: Tensor, zeropoint: Tensor, exptime: Tensor) -> Tensor:
    """Label columns (x, y, mag, r_eff, q, pa°, n) → θ = (x, y, ln F, ln r_circ, e1, e2, n).

    ``zeropoint`` and ``exptime``: ``(B,)``; ``mag = zeropoint − 2.5 log10(F / exptime)``.
    """
    x, y, mag, r_eff, q, pa, n = labels.unbind(-1)
    lnf = (zeropoint - mag) * (0.4 * _LN10) + torch.log(exptime)
    a = (1.0 - q) / (1.0 + q)
    two_phi = 2.0 * torch.deg2rad(pa)
    lnr = torch.log(r_eff) + 0.5 * torch.log(q)
    return torch.stack([x, y, lnf, lnr, a * torch.cos(two_phi), a * torch.sin(two_phi), n], -1)


def labels_from_theta(theta: Tensor, zeropoint: Tensor, exptime: Tensor) -> Tensor:
    """Inverse of :func:`theta_from_labels` (pa folded into [0, 180) degrees)."""
    x, y, lnf, lnr, e1, e2, n = theta.unbind(-1)
    a = torch.sqrt(e1 * e1 + e2 * e2)
    q = (1.0 - a) / (1.0 + a)
    mag = zeropoint - 2.5 * (lnf - torch.log(exptime)) / _LN10
    r_eff = torch.exp(lnr) / torch.sqrt(q)
    pa = torch.remainder(torch.rad2deg(0.5 * torch.atan2(e2, e1)), 180.0)
    return torch.stack([x, y, mag, r_eff, q, pa, n], -1)


def _label_jacobian(theta: Tensor) -> Tensor:
    """d(labels)/dθ, ``(B, 7, 7)`` (rows: labels, columns: θ), analytic."""
    _, _, _, lnr, e1, e2, _ = theta.unbind(-1)
    a = torch.sqrt(e1 * e1 + e2 * e2).clamp_min(1e-300)
    q = (1.0 - a) / (1.0 + a)
    r_eff = torch.exp(lnr) / torch.sqrt(q)
    dq_da = -2.0 / (1.0 + a) ** 2
    jac = torch.zeros((*theta.shape[:-1], 7, 7), dtype=theta.dtype, device=theta.device)
    jac[..., 0, 0] = 1.0
    jac[..., 1, 1] = 1.0
    jac[..., 2, 2] = -2.5 / _LN10
    jac[..., 3, 3] = r_eff
    for col, ei in ((4, e1), (5, e2)):
        dq = dq_da * ei / a
        jac[..., 4, col] = dq
        jac[..., 3, col] = -0.5 * r_eff / q * dq
    deg = 180.0 / math.pi
    jac[..., 5, 4] = -0.5 * e2 / (a * a) * deg
    jac[..., 5, 5] = 0.5 * e1 / (a * a) * deg
    jac[..., 6, 6] = 1.0
    return jac


@dataclass(frozen=True)
class _Bounds:
    """Constants of the u → θ map (python floats), shared by a chunk."""

    center: float
    lnr_lo: float
    lnr_hi: float
    e_max: float
    lnn_lo: float
    lnn_hi: float

    def theta(self, u: Tensor, lnf0: Tensor) -> Tensor:
        """θ from u (last dim 7); ``lnf0`` broadcasts against ``u[..., 0]``."""
        b = self.center
        ux, uy, uf, ur, u1, u2, un = u.unbind(-1)
        rho2 = u1 * u1 + u2 * u2
        rho = torch.sqrt(torch.where(rho2 > 1e-8, rho2, torch.ones_like(rho2)))
        g = torch.where(rho2 > 1e-8, torch.tanh(rho) / rho, 1.0 - rho2 / 3.0)
        return torch.stack(
            [
                b * torch.tanh(ux / b),
                b * torch.tanh(uy / b),
                lnf0 + uf,
                self.lnr_lo + (self.lnr_hi - self.lnr_lo) * torch.sigmoid(ur),
                self.e_max * g * u1,
                self.e_max * g * u2,
                torch.exp(self.lnn_lo + (self.lnn_hi - self.lnn_lo) * torch.sigmoid(un)),
            ],
            -1,
        )

    def dtheta_du(self, u: Tensor) -> Tensor:
        """Analytic dθ/du, ``(B, 7, 7)`` (rows θ, columns u)."""
        b = self.center
        out = torch.zeros((*u.shape[:-1], 7, 7), dtype=u.dtype, device=u.device)
        for i in (0, 1):
            out[..., i, i] = 1.0 - torch.tanh(u[..., i] / b) ** 2
        out[..., 2, 2] = 1.0
        s_r = torch.sigmoid(u[..., 3])
        out[..., 3, 3] = (self.lnr_hi - self.lnr_lo) * s_r * (1 - s_r)
        u1, u2 = u[..., 4], u[..., 5]
        rho2 = u1 * u1 + u2 * u2
        big = rho2 > 1e-4
        rho = torch.sqrt(torch.where(big, rho2, torch.ones_like(rho2)))
        g = torch.where(big, torch.tanh(rho) / rho, 1.0 - rho2 / 3.0)
        sech2 = 1.0 - torch.tanh(rho) ** 2
        # g'(ρ)/ρ, with its series -2/3 + 8ρ²/15 near 0
        gp = torch.where(big, (rho * sech2 - torch.tanh(rho)) / rho**3, -2 / 3 + 8 * rho2 / 15)
        for i, ui in ((4, u1), (5, u2)):
            for j, uj in ((4, u1), (5, u2)):
                out[..., i, j] = self.e_max * (gp * ui * uj + (g if i == j else 0.0))
        s_n = torch.sigmoid(u[..., 6])
        n = torch.exp(self.lnn_lo + (self.lnn_hi - self.lnn_lo) * s_n)
        out[..., 6, 6] = n * (self.lnn_hi - self.lnn_lo) * s_n * (1 - s_n)
        return out

    def u(self, theta: Tensor, lnf0: Tensor) -> Tensor:
        """u from θ, clipping θ into the open bounds first."""
        x, y, lnf, lnr, e1, e2, n = theta.unbind(-1)
        b = self.center
        lim = 1.0 - 1e-6

        def inv_sig(v: Tensor, lo: float, hi: float) -> Tensor:
            return torch.logit(((v - lo) / (hi - lo)).clamp(1e-6, lim))

        a = torch.sqrt(e1 * e1 + e2 * e2)
        a_c = a.clamp(max=self.e_max * lim)
        rho = torch.atanh(a_c / self.e_max)
        scale = torch.where(a > 1e-12, rho / a.clamp_min(1e-12), 1.0 / self.e_max)
        return torch.stack(
            [
                b * torch.atanh((x / b).clamp(-lim, lim)),
                b * torch.atanh((y / b).clamp(-lim, lim)),
                (lnf - lnf0).clamp(-_U_FLUX_MAX, _U_FLUX_MAX),
                inv_sig(lnr, self.lnr_lo, self.lnr_hi),
                e1 * scale,
                e2 * scale,
                inv_sig(torch.log(n), self.lnn_lo, self.lnn_hi),
            ],
            -1,
        )


def _render_theta(theta: Tensor, psf: Tensor, grid: PixelGrid, core: int = 15) -> Tensor:
    """Renderer model ``(B, S, S)`` in θ's dtype at internal parameters θ ``(B, 7)``.

    ``core``: the renderer's fine-lattice PSF core (native pixels, odd; capped at the PSF
    size); 15 is what the ``sersic`` generator uses.
    """
    x, y, lnf, lnr, e1, e2, n = theta.unbind(-1)
    a = torch.sqrt(e1 * e1 + e2 * e2)
    q = (1.0 - a) / (1.0 + a)
    out = render_sersic_stamps(
        grid,
        r_eff=torch.exp(lnr) / torch.sqrt(q),
        n=n,
        q=q,
        phi=0.5 * torch.atan2(e2, e1),
        x0=x,
        y0=y,
        flux=torch.exp(lnf),
        psf=psf,
        core=min(core, psf.shape[-1]),
        dtype=theta.dtype,
    )
    return out[:, 0]


# ---- Jacobian --------------------------------------------------------------------------
def _fd_jacobian(
    theta: Tensor,
    psf: Tensor,
    grid: PixelGrid,
    dtype: torch.dtype,
    core: int = 15,
    base: Tensor | None = None,
) -> Tensor:
    """dM/dθ ``(B, 7, S, S)`` by one-sided differences of the renderer, all in ``dtype``.

    The unperturbed model and the six perturbed ones are rendered as one batch in ``dtype``
    (d M / d ln F is the model itself), so that the differences see only ``dtype`` rounding.
    Steps: x, y 1e-2 pixel in float32 (1e-4 in float64), taken towards the nearest pixel
    centre so that the renderer's discrete placement of its refined central patch (on the
    pixel holding the centre) does not switch within a step — a centre exactly on a pixel edge
    is first moved 1e-6 pixel inwards; the other parameters 1e-3 (1e-6) of their scale, n
    away from its upper bound. For cuspy profiles the renderer's spike and cap make the
    model piecewise smooth in x, y on a ~1e-3 pixel scale; the 1e-2 pixel step then gives the
    slope over that scale (what a fit sees), not the local one. ``base``: the ``(B, S, S)``
    model at θ already rendered in ``dtype`` (as in the fit's float32 stage) saves a render.
    """
    bsz = theta.shape[0]
    ps, half = grid.pixel_scale, (grid.nx - 1) / 2
    h, h_xy = (1e-3, 1e-2) if dtype == torch.float32 else (1e-6, 1e-4)
    cols = (0, 1, 3, 4, 5, 6)
    theta = theta.clone()
    steps = torch.full((bsz, 7), h, dtype=theta.dtype, device=theta.device)
    for i in (0, 1):
        pix = theta[:, i] / ps + half  # pixel-index coordinate, centres at integers
        inward = torch.where(pix > torch.round(pix), -1.0, 1.0)
        tie = (pix - torch.round(pix)).abs() > 0.5 - 1e-6
        theta[:, i] = torch.where(tie, theta[:, i] + inward * 1e-6 * ps, theta[:, i])
        steps[:, i] = inward * h_xy * ps
        base = None if bool(tie.any()) else base  # θ moved: that base no longer applies
    steps[:, 6] = torch.where(theta[:, 6] > 4.0, -h, h) * theta[:, 6]
    first = 0 if base is None else 1
    pert = theta.unsqueeze(0).repeat(len(cols) + 1, 1, 1)
    for j, col in enumerate(cols):
        pert[j + 1, :, col] += steps[:, col]
    reps = len(cols) + 1 - first
    psf_rep = psf.repeat(reps, 1, 1, 1) if psf.shape[0] > 1 else psf
    models = _render_theta(pert[first:].reshape(-1, 7).to(dtype), psf_rep.to(dtype), grid, core)
    models = models.reshape(reps, bsz, grid.ny, grid.nx)
    if base is not None:
        models = torch.cat([base.to(dtype).unsqueeze(0), models], 0)
    jac = torch.empty((bsz, 7, grid.ny, grid.nx), dtype=dtype, device=theta.device)
    jac[:, 2] = models[0]
    for j, col in enumerate(cols):
        jac[:, col] = (models[j + 1] - models[0]) / steps[:, col, None, None].to(dtype)
    return jac


# ---- goodness of fit ----------------------------------------------------------------------
def reduced_chi2_within_reff(
    image: Tensor,
    model: Tensor,
    variance: Tensor | float,
    params: Tensor,
    pixel_scale: float,
    n_params: int = 7,
) -> Tensor:
    """GaLNet's a-posteriori reduced χ² inside the effective radius (Li et al. 2022, eq. 11).

    ``χ̃² = Σ_{R_i ≤ r_eff} (p_i − m_i)² / σ_i² / (N_in − n_params)`` over the pixels whose
    centres lie inside the ellipse of semi-major axis ``r_eff``, axis ratio q and angle pa
    around (x, y) (the Sérsic R of eq. 1).

    Parameters
    ----------
    image, model : Tensor
        ``(B, 1, S, S)`` data and PSF-convolved model, counts.
    variance : Tensor or float
        ``(B, 1, S, S)`` per-pixel variance (pixels with an infinite variance are left out),
        or the background variance σ_bkg² of the paper as a number or ``(B,)`` tensor
        (counts²), > 0.
    params : Tensor
        ``(B, 7)`` in :data:`LABELS` order (x, y arcsec; r_eff arcsec; pa degrees).
    pixel_scale : float
        Pixel side in arcsec.
    n_params : int
        Number of fitted parameters subtracted from the pixel count (7).

    Returns
    -------
    Tensor
        ``(B,)`` float64; NaN where the ellipse holds ``<= n_params`` pixel centres.
    """
    img = image[:, 0].to(_F64)
    mod = model[:, 0].to(_F64)
    bsz, s, _ = img.shape
    var = torch.as_tensor(variance, dtype=_F64, device=img.device)
    var = var[:, 0] if var.ndim == 4 else var.reshape(-1, 1, 1).expand(bsz, 1, 1)
    p = params.to(_F64)
    ax = (torch.arange(s, dtype=_F64, device=img.device) - (s - 1) / 2) * pixel_scale
    dx = ax[None, None, :] - p[:, 0, None, None]
    dy = ax[None, :, None] - p[:, 1, None, None]
    phi = torch.deg2rad(p[:, 5])[:, None, None]
    xp = torch.cos(phi) * dx + torch.sin(phi) * dy
    yp = (torch.cos(phi) * dy - torch.sin(phi) * dx) / p[:, 4, None, None]
    inside = ((xp * xp + yp * yp) <= (p[:, 3] ** 2)[:, None, None]) & torch.isfinite(var)
    chi = torch.where(inside, (img - mod) ** 2 / var, torch.zeros_like(img)).sum((-2, -1))
    dof = inside.sum((-2, -1)).to(_F64) - n_params
    return torch.where(dof > 0, chi / dof.clamp_min(1.0), torch.full_like(chi, math.nan))


# ---- result -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SersicFitResult:
    """Best-fit Sérsic parameters of N stamps (float64 unless noted).

    Attributes
    ----------
    params : Tensor
        ``(N, 7)`` columns :data:`LABELS`: x, y (arcsec from the stamp centre), mag, r_eff
        (arcsec, semi-major), q, pa (degrees in [0, 180), CCW from +x), n.
    errors : Tensor
        ``(N, 7)`` 1σ uncertainties, sqrt of the diagonal of ``covariance``.
    covariance : Tensor
        ``(N, 7, 7)`` (JᵀWJ)⁻¹ propagated to the label columns.
    chi2, reduced_chi2 : Tensor
        ``(N,)`` χ² over the fitted pixels and χ² / (N_pix − 7).
    reduced_chi2_reff : Tensor
        ``(N,)`` GaLNet eq. 11 inside the fitted r_eff ellipse (NaN if ≤ 7 pixels there).
    gn_decrement : Tensor
        ``(N,)`` gᵀ(JᵀWJ)⁻¹g at the result: the χ² a further Gauss–Newton step would gain
        (the squared distance to the minimum in σ units).
    n_iter : Tensor
        ``(N,)`` int64 Levenberg–Marquardt iterations (of the best start).
    converged : Tensor
        bool: ``gn_decrement`` below the tolerance, finite, and not at a bound.
    at_bound : Tensor
        bool: r_eff, n or the centre sits on its bound or q at its minimum.
    model : Tensor or None
        ``(N, 1, S, S)`` float32 best-fit model images (None if not requested).
    """

    params: Tensor
    errors: Tensor
    covariance: Tensor
    chi2: Tensor
    reduced_chi2: Tensor
    reduced_chi2_reff: Tensor
    gn_decrement: Tensor
    n_iter: Tensor
    converged: Tensor
    at_bound: Tensor
    model: Tensor | None

    label_names: tuple[str, ...] = LABELS

    def as_labels(self) -> dict[str, Tensor]:
        """``{"x": ..., "y": ..., ..., "n": ...}`` (``(N,)`` each), for evaluation tables."""
        return {name: self.params[:, i] for i, name in enumerate(LABELS)}

    @staticmethod
    def concatenate(parts: list[SersicFitResult]) -> SersicFitResult:
        """Join results of consecutive chunks."""
        out = {}
        for f in fields(SersicFitResult):
            vals = [getattr(p, f.name) for p in parts]
            if f.name == "label_names":
                out[f.name] = vals[0]
            elif vals[0] is None:
                out[f.name] = None
            else:
                out[f.name] = torch.cat(vals, 0)
        return SersicFitResult(**out)


# ---- the baseline -------------------------------------------------------------------------
@BASELINES.register("sersic-fit")
class SersicFit:
    """Batched PSF-convolved Sérsic χ² fit (see the module docstring).

    Parameters
    ----------
    config : SersicFit.Config or mapping, optional
        Settings; keyword arguments override fields.

    Examples
    --------
    >>> fit = SersicFit(zeropoint=30.0, exptime=1.0)                    # doctest: +SKIP
    >>> res = fit(batch["image"], batch["psf"], batch["variance"], pixel_scale=0.2)
    >>> res.params, res.errors, res.converged                           # (N, 7) ...
    """

    name = "sersic-fit"

    class Config(ConfigModel):
        """Settings of the Sérsic fit. Radii in arcsec."""

        pixel_scale: float = Field(0.2, gt=0, description="default pixel side, arcsec")
        zeropoint: float = Field(
            30.0, description="default zero point: mag = zeropoint − 2.5 log10(flux / exptime)"
        )
        exptime: float = Field(1.0, gt=0, description="default exposure time (flux unit)")
        radius_min: float = Field(
            0.02, gt=0, description="lower bound of the circularised radius r_eff √q"
        )
        radius_max: float = Field(
            30.0, gt=0, description="upper bound of the circularised radius r_eff √q"
        )
        q_min: float = Field(0.05, gt=0, lt=1, description="lower bound of the axis ratio")
        n_min: float = Field(0.2, ge=0.1, description="lower bound of the Sérsic index")
        n_max: float = Field(8.0, le=8.0, description="upper bound of the Sérsic index")
        center_bound: float | None = Field(
            None, gt=0, description="|x|, |y| bound; None: half the stamp minus 6 pixels"
        )
        n_starts: tuple[float, ...] = Field(
            (2.0,), min_length=1, description="starting Sérsic indices (multi-start: best χ²)"
        )
        max_iter: int = Field(60, ge=1, description="Levenberg–Marquardt iterations")
        tol: float = Field(
            1e-3, gt=0, description="stop when the Gauss–Newton χ² decrement is below this"
        )
        converged_tol: float = Field(
            1e-2, gt=0, description="final decrement below which a fit counts as converged"
        )
        lambda_init: float = Field(1e-2, gt=0, description="initial LM damping")
        jacobian_dtype: str = Field(
            "float32", pattern="^float(32|64)$", description="dtype of the Jacobian"
        )
        prefit_dtype: str = Field(
            "float32",
            pattern="^float(32|64)$",
            description="dtype of the trial models until within prefit_tol (float64: none)",
        )
        prefit_tol: float = Field(1e-2, gt=0, description="decrement ending the float32 stage")
        refresh_tol: float = Field(
            1.0, ge=0, description="recompute J after accepted steps with δᵀJᵀWJδ above this"
        )
        psf_sum_tol: float = Field(1e-3, gt=0, description="allowed |sum(psf) − 1|")
        render_core: int = Field(
            15, ge=3, description="renderer's fine-lattice PSF core, pixels (odd; generator: 15)"
        )
        chunk_size: int = Field(256, ge=1, description="galaxies fitted together")
        return_model: bool = Field(True, description="keep the model images in the result")
        scale_errors_by_chi2: bool = Field(
            False, description="multiply the covariance by max(χ²_red, 1)"
        )

        @model_validator(mode="after")
        def _check(self):
            if self.radius_min >= self.radius_max:
                raise ValueError("radius_min must be < radius_max")
            if self.n_min >= self.n_max:
                raise ValueError("n_min must be < n_max")
            if self.render_core % 2 == 0:
                raise ValueError("render_core must be odd")
            if any(not (self.n_min < v < self.n_max) for v in self.n_starts):
                raise ValueError("n_starts must lie strictly between n_min and n_max")
            return self

    def __init__(self, config: Config | dict | None = None, **overrides) -> None:
        data = config.model_dump() if isinstance(config, self.Config) else dict(config or {})
        data.update(overrides)
        self.config = self.Config(**data)

    # ------------------------------------------------------------------------------------
    def __call__(
        self,
        image: Tensor,
        psf: Tensor,
        variance: Tensor,
        *,
        pixel_scale: float | None = None,
        zeropoint: float | Tensor | None = None,
        exptime: float | Tensor | None = None,
        mask: Tensor | None = None,
        init: Tensor | None = None,
    ) -> SersicFitResult:
        """Fit every stamp.

        Parameters
        ----------
        image : Tensor
            ``(N, 1, S, S)`` sky-subtracted counts, the galaxy near the centre.
        psf : Tensor
            ``(N or 1, 1, P, P)``, P odd, unit sum (within ``psf_sum_tol``): the
            pixel-integrated PSF of each stamp.
        variance : Tensor
            ``(N, 1, S, S)`` per-pixel noise variance (counts²), > 0 where not masked.
        pixel_scale : float, optional
            Pixel side in arcsec (default: the config's).
        zeropoint, exptime : float or (N,) Tensor, optional
            ``mag = zeropoint − 2.5 log10(flux / exptime)`` with flux in counts (defaults:
            the config's).
        mask : Tensor, optional
            ``(N, 1, S, S)`` bool, True for pixels to ignore (they may hold NaN).
        init : Tensor, optional
            ``(N, 7)`` starting parameters in :data:`LABELS` columns (e.g. a network's
            prediction); default :func:`moments_init`.

        Returns
        -------
        SersicFitResult
        """
        cfg = self.config
        ps = float(cfg.pixel_scale if pixel_scale is None else pixel_scale)
        ok = check_fit_inputs(_OWNER, image, variance, psf, mask, ps, cfg.psf_sum_tol,
                              noise_name="variance", min_size=9, square=True)  # fmt: skip
        img, psf64, var, msk = ok.image[:, 0], ok.psf, ok.noise[:, 0], ok.mask[:, 0]
        nb = img.shape[0]
        zp = _per_item(cfg.zeropoint if zeropoint is None else zeropoint, "zeropoint", nb, img)
        et = _per_item(cfg.exptime if exptime is None else exptime, "exptime", nb, img)
        if bool((et <= 0).any()):
            raise ValueError(f"{_OWNER}: 'exptime' must be > 0")
        if init is not None:
            init = torch.as_tensor(init, dtype=_F64, device=img.device)
            ok = init.shape == (nb, 7) and bool(torch.isfinite(init).all())
            if not ok or bool((init[:, 3] <= 0).any() | (init[:, 4] <= 0).any()):
                raise ValueError(
                    f"{_OWNER}: 'init' must be a finite ({nb}, 7) tensor in LABELS order "
                    "with r_eff > 0 and q > 0"
                )
            init = init.clone()
            init[:, 4] = init[:, 4].clamp(max=1.0)
            init[:, 6] = init[:, 6].clamp(cfg.n_min * 1.01, cfg.n_max * 0.99)
        parts = []
        for lo in range(0, nb, cfg.chunk_size):
            sl = slice(lo, min(nb, lo + cfg.chunk_size))
            chunk_psf = psf64[sl] if psf64.shape[0] > 1 else psf64
            parts.append(
                self._fit_chunk(
                    img[sl],
                    chunk_psf,
                    var[sl],
                    msk[sl],
                    ps,
                    zp[sl],
                    et[sl],
                    None if init is None else init[sl],
                )
            )
        return SersicFitResult.concatenate(parts)

    fit = __call__

    # ------------------------------------------------------------------------------------
    def _bounds(self, size: int, ps: float) -> _Bounds:
        cfg = self.config
        center = cfg.center_bound if cfg.center_bound is not None else (size // 2 - 6) * ps
        e_max = (1.0 - cfg.q_min) / (1.0 + cfg.q_min)
        return _Bounds(
            center=max(center, ps),
            lnr_lo=math.log(cfg.radius_min),
            lnr_hi=math.log(cfg.radius_max),
            e_max=e_max,
            lnn_lo=math.log(cfg.n_min),
            lnn_hi=math.log(cfg.n_max),
        )

    def _fit_chunk(self, img, psf, var, msk, ps, zp, et, init) -> SersicFitResult:
        cfg = self.config
        s = img.shape[-1]
        grid = PixelGrid.square(s, ps)
        bounds = self._bounds(s, ps)
        w = torch.where(msk, torch.zeros_like(var), 1.0 / var)
        data = torch.where(msk, torch.zeros_like(img), img)
        if init is None:
            init = moments_init(
                data.unsqueeze(1),
                psf,
                ps,
                var.unsqueeze(1),  # 1 in masked pixels, where the data are 0
                zeropoint=zp,
                exptime=et,
                n_init=cfg.n_starts[0],
            )
        theta0 = theta_from_labels(init, zp, et)
        lnf0 = theta0[:, 2].clone()
        best = None
        for n_start in cfg.n_starts if len(cfg.n_starts) > 1 else (None,):
            th = theta0.clone()
            if n_start is not None:
                th[:, 6] = n_start
            run = self._levenberg_marquardt(bounds.u(th, lnf0), lnf0, bounds, data, w, psf, grid)
            if best is None:
                best = run
            else:
                better = run["chi2"] < best["chi2"]
                best = {
                    k: torch.where(better.view(-1, *([1] * (v.ndim - 1))), run[k], v)
                    for k, v in best.items()
                }
        return self._finish(best, lnf0, bounds, data, w, psf, grid, zp, et)

    def _jacobian(self, theta, psf, grid, base=None) -> Tensor:
        """Unweighted dM/dθ ``(B, 7, S·S)`` (finite differences of the renderer)."""
        jdt = getattr(torch, self.config.jacobian_dtype)
        core = self.config.render_core
        jac = _fd_jacobian(theta, psf, grid, jdt, core, base)
        return jac.reshape(theta.shape[0], 7, -1)

    def _levenberg_marquardt(self, u, lnf0, bounds, data, w, psf, grid) -> dict[str, Tensor]:
        """LM in u, in two stages sharing the damping and the Jacobian: trial models rendered
        in ``prefit_dtype`` (float32, ~10× cheaper) until within ~0.1σ of the minimum, then
        in float64 until ``tol``. Returns the final state, with the weighted θ-Jacobian
        ``jac`` at the returned ``u``."""
        cfg = self.config
        bsz, s = data.shape[0], data.shape[-1]
        dev = u.device
        st = {
            "u": u,
            "lam": torch.full((bsz,), cfg.lambda_init, dtype=_F64, device=dev),
            "jac": torch.zeros(
                (bsz, 7, s * s), dtype=getattr(torch, cfg.jacobian_dtype), device=dev
            ),
            "need": torch.ones(bsz, dtype=torch.bool, device=dev),
            "n_iter": torch.zeros(bsz, dtype=torch.int64, device=dev),
        }
        if cfg.prefit_dtype != "float64":
            self._lm_stage(st, lnf0, bounds, data, w, psf, grid, torch.float32, cfg.prefit_tol)
        self._lm_stage(st, lnf0, bounds, data, w, psf, grid, _F64, cfg.tol)
        stale = torch.nonzero(st["need"]).squeeze(1)
        if stale.numel():  # stopped by max_iter right after an accepted step
            self._refresh_jacobian(st, stale, lnf0, bounds, w, psf, grid)
        return st

    def _refresh_jacobian(self, st, idx, lnf0, bounds, w, psf, grid, base=None) -> None:
        """Weighted θ-Jacobian of the items ``idx`` at their current ``u`` (``base``: their
        models there, rendered in the Jacobian's dtype, if at hand)."""
        jdt = st["jac"].dtype
        th = bounds.theta(st["u"][idx], lnf0[idx])
        jw = self._jacobian(th, psf[idx] if psf.shape[0] > 1 else psf, grid, base)
        st["jac"][idx] = jw * torch.sqrt(w[idx]).reshape(idx.numel(), 1, -1).to(jdt)
        st["need"][idx] = False

    def _lm_stage(self, st, lnf0, bounds, data, w, psf, grid, dtype, tol) -> None:
        """Levenberg–Marquardt iterations with models rendered in ``dtype`` (χ² in float64),
        updating ``st`` in place; a float32 stage also stops an item when a step is rejected
        with a decrement below ``10 tol``: float32 models differ from float64 ones by < 3e-6
        of the peak (χ² < 4e-6 on KiDS mocks), but that blurs χ² comparisons at ~1e-3."""
        cfg = self.config
        bsz = data.shape[0]
        u, lam, need, n_iter = st["u"], st["lam"], st["need"], st["n_iter"]
        sqrt_w = torch.sqrt(w).reshape(bsz, -1)
        w_flat = w.reshape(bsz, -1)
        flat = data.reshape(bsz, -1)
        core = cfg.render_core
        psf_d = psf.to(dtype)

        def render(uu: Tensor, idx: Tensor) -> Tensor:
            th = bounds.theta(uu, lnf0[idx]).to(dtype)
            p = psf_d[idx] if psf.shape[0] > 1 else psf_d
            return _render_theta(th, p, grid, core).reshape(idx.numel(), -1).to(_F64)

        everyone = torch.arange(bsz, device=u.device)
        model = render(u, everyone)
        chi2 = ((flat - model) ** 2 * w_flat).sum(-1)
        done = torch.zeros(bsz, dtype=torch.bool, device=u.device)
        eye = torch.eye(7, dtype=_F64, device=u.device)
        for _ in range(cfg.max_iter):
            act = torch.nonzero(~done & (n_iter < cfg.max_iter)).squeeze(1)
            if act.numel() == 0:
                break
            upd = act[need[act]]
            if upd.numel():
                base = None
                if dtype == st["jac"].dtype:  # the current models were rendered in that dtype
                    base = model[upd].reshape(upd.numel(), grid.ny, grid.nx).to(dtype)
                self._refresh_jacobian(st, upd, lnf0, bounds, w, psf, grid, base)
            ja = st["jac"][act].to(_F64)
            mt = bounds.dtheta_du(u[act])
            res = (flat[act] - model[act]) * sqrt_w[act]
            a_mat = mt.transpose(1, 2) @ (ja @ ja.transpose(1, 2)) @ mt
            grad = (mt.transpose(1, 2) @ (ja @ res.unsqueeze(-1))).squeeze(-1)
            diag = torch.diagonal(a_mat, dim1=1, dim2=2).clamp_min(1e-30)
            dec = (grad * _solve(a_mat + 1e-12 * diag.unsqueeze(-1) * eye, grad)).sum(-1)
            conv = dec < tol
            done[act[conv]] = True
            go = ~conv
            idx = act[go]
            if idx.numel() == 0:
                continue
            step = _solve(a_mat[go] + (lam[idx, None] * diag[go]).unsqueeze(-1) * eye, grad[go])
            u_try = u[idx] + torch.nan_to_num(step, nan=0.0).clamp(-5.0, 5.0)
            u_try[:, 2] = u_try[:, 2].clamp(-_U_FLUX_MAX, _U_FLUX_MAX)
            m_try = render(u_try, idx)
            c_try = ((flat[idx] - m_try) ** 2 * w_flat[idx]).sum(-1)
            ok = torch.isfinite(c_try) & (c_try < chi2[idx])
            u[idx] = torch.where(ok[:, None], u_try, u[idx])
            model[idx] = torch.where(ok[:, None], m_try, model[idx])
            chi2[idx] = torch.where(ok, c_try, chi2[idx])
            # a new Jacobian only after a step of more than ~1σ (δᵀ JᵀWJ δ > refresh_tol)
            moved = (step * (a_mat[go] @ step.unsqueeze(-1)).squeeze(-1)).sum(-1)
            need[idx] = need[idx] | (ok & (moved > cfg.refresh_tol))
            lam[idx] = torch.where(ok, lam[idx] * 0.3, lam[idx] * 10.0).clamp(1e-9, 1e12)
            n_iter[idx] += 1
            stop = ~ok & (lam[idx] >= 1e12)  # no decrease even along a tiny gradient step
            if dtype != _F64:  # float32 rounding blurs χ² comparisons at the ~1e-3 level
                stop = stop | (~ok & (dec[go] < 10 * tol))
            done[idx] = stop
        st["model"], st["chi2"] = model, chi2

    def _finish(self, run, lnf0, bounds, data, w, psf, grid, zp, et) -> SersicFitResult:
        """Covariance, goodness of fit and flags at the LM result."""
        cfg = self.config
        bsz, s = data.shape[0], data.shape[-1]
        u, chi2, model = run["u"], run["chi2"], run["model"]
        jt = run["jac"].to(_F64)
        sqrt_w = torch.sqrt(w).reshape(bsz, -1)
        mt = bounds.dtheta_du(u)
        ju = mt.transpose(1, 2) @ jt
        a_u = ju @ ju.transpose(1, 2)
        eye = torch.eye(7, dtype=_F64, device=u.device)
        reg = a_u + 1e-12 * torch.diagonal(a_u, dim1=1, dim2=2).clamp_min(1e-30)[..., None] * eye
        grad = (ju @ ((data.reshape(bsz, -1) - model) * sqrt_w).unsqueeze(-1)).squeeze(-1)
        dec = (grad * _solve(reg, grad)).sum(-1)
        theta = bounds.theta(u, lnf0)
        cov_t = _inverse(jt @ jt.transpose(1, 2))
        npix = (w > 0).reshape(bsz, -1).sum(-1).to(_F64)
        red = chi2 / (npix - 7).clamp_min(1.0)
        if cfg.scale_errors_by_chi2:
            cov_t = cov_t * red.clamp_min(1.0)[:, None, None]
        lj = _label_jacobian(theta)
        cov = lj @ cov_t @ lj.transpose(1, 2)
        params = labels_from_theta(theta, zp, et)
        errors = torch.sqrt(torch.diagonal(cov, dim1=1, dim2=2).clamp_min(0))
        model_img = model.reshape(bsz, 1, s, s)
        red_reff = reduced_chi2_within_reff(
            data.unsqueeze(1),
            model_img,
            torch.where(w > 0, 1.0 / w, math.inf).unsqueeze(1),
            params,
            grid.pixel_scale,
        )
        at_bound = _at_bound(u, bounds)
        finite = torch.isfinite(params).all(-1) & torch.isfinite(chi2)
        return SersicFitResult(
            params=params,
            errors=errors,
            covariance=cov,
            chi2=chi2,
            reduced_chi2=red,
            reduced_chi2_reff=red_reff,
            gn_decrement=dec,
            n_iter=run["n_iter"],
            converged=(dec < cfg.converged_tol) & finite & ~at_bound,
            at_bound=at_bound,
            model=model_img.to(torch.float32) if cfg.return_model else None,
        )


# ---- helpers ------------------------------------------------------------------------------
def _solve(a: Tensor, b: Tensor) -> Tensor:
    """Batched ``a⁻¹ b`` for SPD ``a`` (Cholesky, falling back to a pseudo-inverse)."""
    chol, info = torch.linalg.cholesky_ex(a)
    out = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)
    bad = info != 0
    if bool(bad.any()):
        out[bad] = (torch.linalg.pinv(a[bad]) @ b[bad].unsqueeze(-1)).squeeze(-1)
    return out


def _inverse(a: Tensor) -> Tensor:
    """Batched inverse of SPD matrices (pseudo-inverse where Cholesky fails)."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    return torch.stack([_solve(a, eye[..., i]) for i in range(a.shape[-1])], -1)


def _at_bound(u: Tensor, bounds: _Bounds) -> Tensor:
    """Whether a bounded coordinate is within 1e-4 (in its unit-interval form) of a bound."""
    edge = 1e-4
    sig = torch.sigmoid(u[:, [3, 6]])
    near = ((sig < edge) | (sig > 1 - edge)).any(-1)
    cen = (torch.tanh(u[:, :2] / bounds.center).abs() > 1 - edge).any(-1)
    rho = torch.sqrt(u[:, 4] ** 2 + u[:, 5] ** 2)
    return near | cen | (torch.tanh(rho) > 1 - edge)


def _per_item(value, name: str, nb: int, like: Tensor) -> Tensor:
    t = torch.as_tensor(value, dtype=_F64, device=like.device).reshape(-1)
    if t.numel() not in (1, nb) or not bool(torch.isfinite(t).all()):
        raise ValueError(f"{_OWNER}: {name!r} must be a finite number or ({nb},) tensor")
    return t.expand(nb).clone()
