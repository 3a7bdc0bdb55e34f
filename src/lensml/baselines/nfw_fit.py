"""Baseline ``nfw-tangential-fit``: NFW fit to the reduced tangential shear profile.

The classical cluster weak-lensing estimate the cluster CNN paper compares with (Sect. 5.4):
extract the azimuthally averaged reduced tangential shear g_t(R) around the centre, outside
an inner strong-lensing region (:mod:`lensml.baselines.profiles`), and fit a spherical NFW
halo for its mass and concentration by weighted least squares,

    χ²(log10 M, c) = Σ_bins [ ⟨g_t^model⟩_bin − g_t ]² / σ_bin²,
    g_t^model(R) = γ_t(R) / (1 − κ(R))          (reduced shear),

with γ_t = κ̄(<R) − κ(R) and κ̄ from :func:`lensml.physics.mass.nfw.tangential_shear` and
:func:`~lensml.physics.mass.nfw.mean_convergence`, averaged over the pixels of each bin with
the bin's radial nodes. (M, c) → (r_s, α_rs) in arcsec is done in torch (differentiable) with
ρ_Δ(z_l), Σcrit and D_l precomputed once by :mod:`lensml.physics.cosmology`, exactly as
:func:`lensml.physics.cosmology.nfw_lensing_params`:

    r_Δ = (3M / (4π ρ_Δ))^{1/3},  r_s = r_Δ / c,  ρ_s = M / (4π r_s³ m(c)),
    κ_s = ρ_s r_s / Σcrit,  θ_s = r_s / D_l,  α_rs = 4 κ_s θ_s (1 + ln ½).

The mass definition defaults to ``"vir"`` (Bryan & Norman 1998), the cluster generator's
label convention (log10 M_vir and the NFW concentration of the whole halo, c = r_vir / r_s).

Optimiser: all B fits at once, in float64. A coarse grid over (log10 M, c) evaluated at the
bin mean radii picks the starting point of each fit (avoiding the local minima of the
mass–concentration degeneracy), then Levenberg–Marquardt in unbounded variables
u = logit of the position inside the bounds (log10 M linear, c logarithmic inside
[c_min, c_max]) with a per-fit damping, central finite-difference Jacobians (the model has
two parameters, so four extra model evaluations per iteration). Uncertainties come from the
inverse of JᵀWJ in (log10 M, c) at the optimum (optionally scaled by χ²_red).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from lensml.baselines.profiles import RadialBins, ShearProfile, _check_maps, tangential_profile
from lensml.config import ConfigModel
from lensml.physics.mass import nfw
from lensml.physics.mass.base import TINY_R2, nfw_aux
from lensml.registry import BASELINES

__all__ = [
    "CosmoNumbers",
    "NFWFitResult",
    "NFWTangentialFit",
    "cosmo_numbers",
    "nfw_params_torch",
    "reduced_tangential_model",
]

_ARCSEC = math.pi / 180.0 / 3600.0
_G1 = 1.0 + math.log(0.5)


@dataclass(frozen=True)
class CosmoNumbers:
    """Per-map cosmological numbers for the (M, c) → lensing-parameter conversion.

    Attributes
    ----------
    rho_delta : Tensor
        ``(B,)`` Δ ρ_ref(z_l) in M_sun / Mpc³ (physical).
    sigma_crit : Tensor
        ``(B,)`` Σcrit in M_sun / Mpc².
    d_l : Tensor
        ``(B,)`` angular-diameter distance to the lens in Mpc.
    """

    rho_delta: Tensor
    sigma_crit: Tensor
    d_l: Tensor

    def subset(self, index: Tensor) -> CosmoNumbers:
        """The numbers of the maps ``index`` (an int64 index tensor)."""
        return CosmoNumbers(self.rho_delta[index], self.sigma_crit[index], self.d_l[index])


def cosmo_numbers(
    z_l,
    z_s,
    mass_def: str = "vir",
    cosmo="Planck18",
    batch: int | None = None,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> CosmoNumbers:
    """ρ_Δ(z_l), Σcrit(z_l, z_s) and D_l(z_l) from astropy, once, as ``(B,)`` tensors.

    ``z_l``, ``z_s``: numbers or length-B sequences / tensors with z_s > z_l > 0;
    ``batch`` broadcasts numbers to B values.
    """
    import numpy as np

    from lensml.physics import cosmology as cosmo_mod

    zl = np.asarray(torch.as_tensor(z_l, dtype=torch.float64).cpu(), dtype=float).reshape(-1)
    zs = np.asarray(torch.as_tensor(z_s, dtype=torch.float64).cpu(), dtype=float).reshape(-1)
    n = batch or max(zl.size, zs.size)
    for name, arr in (("z_l", zl), ("z_s", zs)):
        if arr.size not in (1, n):
            raise ValueError(f"cosmo_numbers: {name!r} must be a number or have B={n} values")
    zl, zs = np.broadcast_to(zl, (n,)), np.broadcast_to(zs, (n,))
    # distinct redshift pairs only (usually one): astropy is the slow part
    pairs, inverse = np.unique(np.stack([zl, zs], 1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    rho = np.asarray(cosmo_mod.overdensity_density(pairs[:, 0], mass_def, cosmo)).reshape(-1)
    sc = np.asarray(cosmo_mod.sigma_crit(pairs[:, 0], pairs[:, 1], cosmo)).reshape(-1)
    dl = np.asarray(cosmo_mod.lens_distances(pairs[:, 0], pairs[:, 1], cosmo)[0]).reshape(-1)

    def t(a):
        return torch.as_tensor(a[inverse], dtype=dtype, device=device)

    return CosmoNumbers(rho_delta=t(rho), sigma_crit=t(sc), d_l=t(dl))


def nfw_params_torch(log10_mass: Tensor, concentration: Tensor, numbers: CosmoNumbers):
    """Differentiable (log10 M [M_sun], c) → (r_s [arcsec], α_rs [arcsec], κ_s).

    Shapes broadcast against the ``(B,)`` numbers (e.g. ``(B,)`` or ``(B, G)`` with the
    numbers unsqueezed by the caller). Matches
    :func:`lensml.physics.cosmology.nfw_lensing_params`.
    """
    rho, sc, dl = numbers.rho_delta, numbers.sigma_crit, numbers.d_l
    if log10_mass.ndim == 2:
        rho, sc, dl = rho[:, None], sc[:, None], dl[:, None]
    mass = torch.pow(10.0, log10_mass)
    r_delta = torch.pow(3 * mass / (4 * math.pi * rho), 1.0 / 3.0)
    r_s = r_delta / concentration
    m_c = torch.log1p(concentration) - concentration / (1 + concentration)
    rho_s = mass / (4 * math.pi * r_s**3 * m_c)
    kappa_s = rho_s * r_s / sc
    rs_arcsec = r_s / dl / _ARCSEC
    alpha_rs = 4 * kappa_s * rs_arcsec * _G1
    return rs_arcsec, alpha_rs, kappa_s


def reduced_tangential_model(
    radius: Tensor, rs_arcsec: Tensor, alpha_rs: Tensor, denom_floor: float = 1e-2
) -> Tensor:
    """NFW reduced tangential shear g_t = γ_t / (1 − κ) at radii ``(B, N)`` (arcsec).

    ``rs_arcsec``, ``alpha_rs``: ``(B,)``. Uses the NFW auxiliary functions of
    :func:`lensml.physics.mass.base.nfw_aux` once (κ = 2 κ_s F, κ̄ = 4 κ_s g / x², the
    formulas of :mod:`lensml.physics.mass.nfw`; equal to
    ``nfw.tangential_shear / (1 − nfw.mean_convergence + nfw.tangential_shear)``) without
    the per-call parameter validation, since this is the fit's hot path. The denominator is
    floored at ``denom_floor`` so trial parameters inside the critical curve give a large
    but finite χ².
    """
    rs = rs_arcsec.unsqueeze(-1)
    kappa_s = nfw.alpha_rs_to_kappa_s(alpha_rs, rs_arcsec).unsqueeze(-1)
    x = torch.sqrt(radius * radius + TINY_R2) / rs
    aux = nfw_aux(x)
    kappa = 2 * kappa_s * aux["F"]
    gamma_t = 4 * kappa_s * aux["g"] / (x * x) - kappa
    return gamma_t / torch.clamp(1.0 - kappa, min=denom_floor)


@dataclass(frozen=True)
class NFWFitResult:
    """Best-fit NFW parameters of B maps (all tensors ``(B,)`` float64 unless noted).

    Attributes
    ----------
    log10_mass, concentration : Tensor
        Best fit log10(M_Δ / M_sun) and c = r_Δ / r_s (Δ = ``mass_def``).
    log10_mass_err, concentration_err : Tensor
        1σ uncertainties, sqrt of the diagonal of ``covariance``.
    covariance : Tensor
        ``(B, 2, 2)`` (JᵀWJ)⁻¹ in (log10 M, c).
    chi2, reduced_chi2 : Tensor
        χ² at the optimum and χ² / (N_bins − 2).
    n_iter : Tensor
        int64 LM iterations used.
    converged : Tensor
        bool: LM met its tolerance, the result is finite and not on a bound.
    at_bound : Tensor
        bool: a parameter sits on (within 1e-4 of the range of) a bound.
    profile : ShearProfile
        The fitted profile.
    mass_def : str
        The mass definition of ``log10_mass`` and ``concentration``.
    """

    log10_mass: Tensor
    concentration: Tensor
    log10_mass_err: Tensor
    concentration_err: Tensor
    covariance: Tensor
    chi2: Tensor
    reduced_chi2: Tensor
    n_iter: Tensor
    converged: Tensor
    at_bound: Tensor
    profile: ShearProfile
    mass_def: str

    def as_labels(self) -> dict[str, Tensor]:
        """``{"log10_mass": ..., "concentration": ...}``, for evaluation tables."""
        return {"log10_mass": self.log10_mass, "concentration": self.concentration}


@BASELINES.register("nfw-tangential-fit")
class NFWTangentialFit:
    """Batched NFW fit to the reduced tangential shear profile (see the module docstring).

    Parameters
    ----------
    config : NFWTangentialFit.Config or mapping, optional
        Settings; keyword arguments override fields.

    Examples
    --------
    >>> fit = NFWTangentialFit(z_l=0.25, z_s=1.0)              # doctest: +SKIP
    >>> res = fit(g, pixel_scale=8.0, sigma=0.41)              # g: (B, 2, H, W)
    >>> res.log10_mass, res.concentration, res.converged
    """

    name = "nfw-tangential-fit"

    class Config(ConfigModel):
        """Settings of the NFW tangential-shear fit.

        The redshifts are defaults for maps without their own (the paper's values were lost
        in the text; z_l = 0.25, z_s = 1.0 are typical of MOKA / Euclid cluster studies —
        pass the generator's values). Radii are in arcsec; None gives the defaults of
        :func:`lensml.baselines.profiles.radial_bins` (0.1 and 1.0 × half the map side).
        """

        z_l: float = Field(0.25, gt=0, description="lens redshift (default for all maps)")
        z_s: float = Field(1.0, gt=0, description="source redshift (default for all maps)")
        mass_def: Literal["vir", "200c", "200m"] = Field("vir", description="mass definition")
        cosmology: str = Field("Planck18", description="astropy cosmology name")
        n_bins: int = Field(12, ge=3, description="radial bins")
        spacing: Literal["log", "linear"] = Field("log", description="radial bin spacing")
        r_min: float | None = Field(None, ge=0, description="inner radius, arcsec")
        r_max: float | None = Field(None, gt=0, description="outer radius, arcsec")
        nodes_per_bin: int = Field(8, ge=1, description="radial nodes per bin for the model")
        log10_mass_min: float = Field(13.0, description="lower bound of log10 M / M_sun")
        log10_mass_max: float = Field(16.0, description="upper bound of log10 M / M_sun")
        c_min: float = Field(1.0, gt=0, description="lower bound of the concentration")
        c_max: float = Field(20.0, gt=0, description="upper bound of the concentration")
        grid_mass: int = Field(16, ge=2, description="initial grid points in log10 M")
        grid_c: int = Field(12, ge=2, description="initial grid points in c (log-spaced)")
        max_iter: int = Field(60, ge=1, description="Levenberg–Marquardt iterations")
        tol: float = Field(1e-9, gt=0, description="relative χ² change that stops a fit")
        scale_errors_by_chi2: bool = Field(
            False, description="multiply the covariance by max(χ²_red, 1)"
        )

        @model_validator(mode="after")
        def _bounds(self):
            if self.log10_mass_min >= self.log10_mass_max:
                raise ValueError("log10_mass_min must be < log10_mass_max")
            if self.c_min >= self.c_max:
                raise ValueError("c_min must be < c_max")
            if self.z_s <= self.z_l:
                raise ValueError("z_s must be > z_l")
            if self.r_min is not None and self.r_max is not None and self.r_min >= self.r_max:
                raise ValueError("r_min must be < r_max")
            return self

    def __init__(self, config: Config | dict | None = None, **overrides) -> None:
        if isinstance(config, self.Config):
            data = config.model_dump()
        else:
            data = dict(config or {})
        data.update(overrides)
        self.config = self.Config(**data)

    # ----------------------------------------------------------------------------------
    def bins(self, shape: tuple[int, int], pixel_scale: float, center=None) -> RadialBins:
        """The radial binning this fit uses for maps of ``shape`` (see :func:`radial_bins`)."""
        from lensml.baselines.profiles import radial_bins

        cfg = self.config
        return radial_bins(
            shape,
            pixel_scale,
            n_bins=cfg.n_bins,
            r_min=cfg.r_min,
            r_max=cfg.r_max,
            spacing=cfg.spacing,
            center=center,
            nodes_per_bin=cfg.nodes_per_bin,
        )

    def __call__(
        self,
        g: Tensor,
        pixel_scale: float,
        *,
        sigma: float | Tensor | None = None,
        z_l=None,
        z_s=None,
        center=None,
        bins: RadialBins | None = None,
    ) -> NFWFitResult:
        """Extract the profiles of ``g`` and fit them.

        Parameters
        ----------
        g : Tensor
            ``(B, 2, H, W)`` reduced shear maps (g1, g2), finite.
        pixel_scale : float
            Pixel side in arcsec, > 0.
        sigma : float or Tensor, optional
            Per-pixel noise σ per shear component (number or ``(B,)``); None uses the
            empirical scatter in each bin (then a noiseless map gets near-zero errors:
            pass a nominal σ for noiseless maps to weight bins by pixel count).
        z_l, z_s : float or sequence of B floats, optional
            Redshifts per map; default the config's.
        center : (x, y) or Tensor (B, 2), optional
            Halo centre relative to the map centre in arcsec; default the map centre.
        bins : RadialBins, optional
            Precomputed binning (e.g. reused across batches); overrides ``center``.
        """
        g = _check_maps(g, "NFWTangentialFit")
        if bins is None:
            bins = self.bins(tuple(g.shape[-2:]), pixel_scale, center)
        profile = tangential_profile(g, pixel_scale, bins=bins, sigma=sigma)
        return self.fit_profile(profile, z_l=z_l, z_s=z_s)

    # ----------------------------------------------------------------------------------
    def fit_profile(self, profile: ShearProfile, *, z_l=None, z_s=None) -> NFWFitResult:
        """Fit an extracted :class:`ShearProfile` (all its maps at once)."""
        cfg = self.config
        if not isinstance(profile, ShearProfile):
            raise ValueError("NFWTangentialFit.fit_profile: 'profile' must be a ShearProfile")
        data = profile.g_t
        b, nb = data.shape
        dev, dtype = data.device, torch.float64
        data = data.to(dtype)
        err = profile.g_t_err.to(dtype)
        floor = 1e-12 + 1e-9 * data.abs().amax(1, keepdim=True)
        w = 1.0 / torch.clamp(err, min=1e-300) ** 2
        w = torch.where(err > floor, w, 1.0 / floor**2)
        numbers = cosmo_numbers(
            cfg.z_l if z_l is None else z_l,
            cfg.z_s if z_s is None else z_s,
            cfg.mass_def,
            cfg.cosmology,
            batch=b,
            dtype=dtype,
            device=dev,
        )
        nodes = profile.bins.nodes.to(dtype).expand(b, -1, -1)
        nweights = profile.bins.node_weights.to(dtype).expand(b, -1, -1)
        k = nodes.shape[-1]
        flat_nodes = nodes.reshape(b, nb * k)

        def model(logm: Tensor, conc: Tensor, sel: Tensor | None = None) -> Tensor:
            """Bin-averaged model of the fits ``sel`` (all when None)."""
            nums = numbers if sel is None else numbers.subset(sel)
            rad = flat_nodes if sel is None else flat_nodes[sel]
            nw = nweights if sel is None else nweights[sel]
            rs, ars, _ = nfw_params_torch(logm, conc, nums)
            gt = reduced_tangential_model(rad, rs, ars).view(-1, nb, k)
            return (gt * nw).sum(-1)

        lm_lo, lm_hi = cfg.log10_mass_min, cfg.log10_mass_max
        lc_lo, lc_hi = math.log(cfg.c_min), math.log(cfg.c_max)

        def to_phys(u: Tensor) -> tuple[Tensor, Tensor]:
            s = torch.sigmoid(u)
            return lm_lo + (lm_hi - lm_lo) * s[:, 0], torch.exp(lc_lo + (lc_hi - lc_lo) * s[:, 1])

        u = self._grid_start(profile, data, w, numbers, (lm_lo, lm_hi, lc_lo, lc_hi))

        # ---- Levenberg–Marquardt; each iteration works on the fits not yet done
        sqrt_w = torch.sqrt(w)
        lam = torch.full((b,), 1e-3, dtype=dtype, device=dev)
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        n_iter = torch.zeros(b, dtype=torch.int64, device=dev)
        res0 = model(*to_phys(u)) - data
        chi2 = (w * res0 * res0).sum(-1)
        eye = torch.eye(2, dtype=dtype, device=dev)
        for _ in range(cfg.max_iter):
            act = torch.nonzero(~done).squeeze(1)
            if act.numel() == 0:
                break
            ua, da, swa, la, ca = u[act], data[act], sqrt_w[act], lam[act], chi2[act]
            logm, conc = to_phys(ua)
            mod = model(logm, conc, act)
            jp = self._jac_phys(model, logm, conc, act, mod)
            sg = torch.sigmoid(ua)
            dlogm = (lm_hi - lm_lo) * sg[:, 0] * (1 - sg[:, 0])
            dconc = conc * (lc_hi - lc_lo) * sg[:, 1] * (1 - sg[:, 1])
            jw = jp * torch.stack([dlogm, dconc], 1).unsqueeze(1) * swa.unsqueeze(-1)
            rw = (mod - da) * swa
            a = jw.transpose(1, 2) @ jw
            grad = (jw.transpose(1, 2) @ rw.unsqueeze(-1)).squeeze(-1)
            diag = torch.diagonal(a, dim1=1, dim2=2).clamp(min=1e-12)
            damped = a + (la.unsqueeze(-1) * diag).unsqueeze(-1) * eye + 1e-12 * eye
            step = -torch.linalg.solve(damped, grad.unsqueeze(-1)).squeeze(-1)
            step = torch.nan_to_num(step).clamp(-5, 5)
            u_new = ua + step
            res = model(*to_phys(u_new), act) - da
            chi2_new = (swa * swa * res * res).sum(-1)
            better = (chi2_new <= ca) & torch.isfinite(chi2_new)
            rel = (ca - chi2_new) / ca.clamp(min=1e-300)
            small = better & ((rel < cfg.tol) | (step.abs().amax(1) < 1e-9))
            # pinned to a bound: the sigmoid saturates and u creeps outwards; stop there
            sg_new = torch.sigmoid(u_new)
            pinned = ((sg_new < 1e-5) | (sg_new > 1 - 1e-5)).any(1)
            small = small | (better & pinned & (rel < 1e-6))
            stuck = ~better & (la >= 1e6)  # no decrease even along a short gradient step
            u[act] = torch.where(better.unsqueeze(1), u_new, ua)
            chi2[act] = torch.where(better, chi2_new, ca)
            lam[act] = torch.where(better, la * 0.3, la * 10.0).clamp(1e-12, 1e16)
            n_iter[act] += 1
            done[act] = small | stuck

        logm, conc = to_phys(u)
        jp = self._jac_phys(model, logm, conc, None, None)
        jw = jp * sqrt_w.unsqueeze(-1)
        fisher = jw.transpose(1, 2) @ jw
        cov = torch.linalg.pinv(fisher)
        valid = (profile.counts > 0).sum(1)
        dof = (valid - 2).clamp(min=1).to(dtype)
        red = chi2 / dof
        if cfg.scale_errors_by_chi2:
            cov = cov * red.clamp(min=1.0)[:, None, None]
        var = torch.diagonal(cov, dim1=1, dim2=2).clamp(min=0)
        edge = 1e-4
        s = torch.sigmoid(u)
        at_bound = ((s < edge) | (s > 1 - edge)).any(1)
        finite = torch.isfinite(logm) & torch.isfinite(conc) & torch.isfinite(chi2)
        return NFWFitResult(
            log10_mass=logm,
            concentration=conc,
            log10_mass_err=torch.sqrt(var[:, 0]),
            concentration_err=torch.sqrt(var[:, 1]),
            covariance=cov,
            chi2=chi2,
            reduced_chi2=red,
            n_iter=n_iter,
            converged=done & finite & ~at_bound,
            at_bound=at_bound,
            profile=profile,
            mass_def=cfg.mass_def,
        )

    def _grid_start(self, profile, data, w, numbers, bounds) -> Tensor:
        """Best point of a coarse (log10 M, c) grid per fit, as unbounded variables (B, 2).

        The model is evaluated at the bin mean radii (not the nodes); the grid holds interior
        points only (``grid_mass × grid_c``, c log-spaced), processed in chunks of maps.
        """
        cfg = self.config
        lm_lo, lm_hi, lc_lo, lc_hi = bounds
        b, nb = data.shape
        dtype, dev = data.dtype, data.device
        gm = torch.linspace(0, 1, cfg.grid_mass + 2, dtype=dtype, device=dev)[1:-1]
        gc = torch.linspace(0, 1, cfg.grid_c + 2, dtype=dtype, device=dev)[1:-1]
        sm, sc = (t.reshape(-1) for t in torch.meshgrid(gm, gc, indexing="ij"))
        ng = sm.numel()
        radius = profile.radius.to(dtype).expand(b, -1)
        best = torch.empty(b, dtype=torch.int64, device=dev)
        chunk = max(1, 200_000 // (ng * nb))
        for i in range(0, b, chunk):
            sel = torch.arange(i, min(b, i + chunk), device=dev)
            n = sel.numel()
            glm = (lm_lo + (lm_hi - lm_lo) * sm).expand(n, ng)
            gcc = torch.exp(lc_lo + (lc_hi - lc_lo) * sc).expand(n, ng)
            rs, ars, _ = nfw_params_torch(glm, gcc, numbers.subset(sel))
            rad = radius[sel].unsqueeze(1).expand(n, ng, nb).reshape(n * ng, nb)
            gmod = reduced_tangential_model(rad, rs.reshape(-1), ars.reshape(-1)).view(n, ng, nb)
            chi = (w[sel].unsqueeze(1) * (gmod - data[sel].unsqueeze(1)) ** 2).sum(-1)
            best[sel] = torch.argmin(torch.nan_to_num(chi, nan=math.inf), dim=1)
        return torch.stack([torch.logit(sm[best]), torch.logit(sc[best])], dim=1)

    @staticmethod
    def _jac_phys(model, logm: Tensor, conc: Tensor, sel, base: Tensor | None) -> Tensor:
        """Finite-difference Jacobian ``(B, N, 2)`` of ``model`` in (log10 M, c).

        Forward differences (step 1e-7, relative for c) from ``base`` when it is given
        (inside the LM loop), central differences (step 1e-5) for the final covariance.
        """
        if base is not None:
            h = 1e-7
            d_m = (model(logm + h, conc, sel) - base) / h
            d_c = (model(logm, conc * (1 + h), sel) - base) / (h * conc).unsqueeze(1)
        else:
            h = 1e-5
            d_m = (model(logm + h, conc, sel) - model(logm - h, conc, sel)) / (2 * h)
            d_c = (model(logm, conc * (1 + h), sel) - model(logm, conc * (1 - h), sel)) / (
                2 * h * conc
            ).unsqueeze(1)
        return torch.stack([d_m, d_c], dim=-1)
