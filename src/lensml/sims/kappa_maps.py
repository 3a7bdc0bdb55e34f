"""Analytic convergence maps for the pixelated-RIM training set (Adam et al., §3.2, Table 2).

The paper's lenses are IllustrisTNG-100 κ maps (§3.2) plus pixelated SIEs (Table 2). TNG is not
available here, so the ``"realistic"`` family builds TNG-like maps analytically; the ``"sie"``
family follows Table 2 exactly. Every map lives on the image grid: ``n_pix``² pixels over ``fov``
arcsec, ``kappa[..., i, j]`` at ``(x_j, y_i)`` (:class:`lensml.physics.grids.PixelGrid`).

Families
--------
``"sie"`` (Table 2)
    Singular isothermal ellipsoid (:func:`lensml.physics.mass.sie.convergence`, lenstronomy's
    θ_E convention) with centre at radius U(0, 0.1)″ and azimuth U(0, 2π), orientation
    φ ~ U(0, π), θ_E ~ U(0.5, 2.5)″ and ellipticity e ~ U(0, 0.6). The paper does not define
    "ellipticity"; here (``ellipticity_convention``) e = 1 − q by default (q ∈ [0.4, 1], the
    ``strong`` generator's convention), or e = (1 − q)/(1 + q) (lenstronomy's |e|, q ∈ [0.25, 1]).
    θ_E is the SIE parameter, not rescaled; its κ > 1 estimate (below) is θ_E/√2.
``"realistic"`` (stands in for TNG)
    * main deflector: elliptical power law (EPL) κ = (3 − γ)/2 (b/R)^(γ−1) with
      R² = q x′² + y′²/q (x′ along the major axis; γ = 2 is lensml's SIE exactly), slope
      γ ~ TN(1.7, 2.3; 2.0, 0.1), e = 1 − q ~ U(0, 0.5), centre within 0.1″;
    * multipoles m = 3, 4: κ_m = a_m κ_circ(r) cos(m(ϑ − ϑ_m)), κ_circ the circularised EPL,
      relative amplitudes a_3 ~ U(0, 0.02), a_4 ~ U(0, 0.03) (observed |a_4| ≲ 0.02–0.03);
    * dark halo (probability 0.8): NFW (:func:`lensml.physics.mass.nfw.convergence`) made
      elliptical in the convergence (evaluated at the area-preserving radius of the same form),
      r_s ~ U(3, 12)″, e ~ U(0, 0.4), misaligned by ≤ 0.35 rad, normalised so that
      κ_halo(b)/κ_main(b) ~ U(0.2, 1.0);
    * subhalos: Poisson(3) (≤ 8) truncated SIS / pseudo-Jaffe
      (:func:`lensml.physics.mass.sis.tsis_convergence`) of total mass m = f π b² with f drawn
      from dN/df ∝ f^−1.9 on [10⁻³, 3·10⁻²], tidal radius r_t = √(b_sub b) (so b_sub = f^(2/3) b,
      r_t = f^(1/3) b), uniform within 2 b of the main centre;
    * second galaxy (group, probability 0.25): an SIE of θ_E = U(0.2, 0.6) b at U(1.3, 2.5) b
      (at most 3.5″) from the main centre;
    * external convergence κ_ext ~ U(0, 0.02) (a uniform sheet).

    ``b`` is set from a target θ_E drawn first (b = T/ρ(γ), ρ(γ) = ((3−γ)/2)^((3−γ)/(2(γ−1))) the
    estimate/θ_E ratio of a pure EPL), so sizes and separations are in proportion to the final
    Einstein radius; then the map is **rescaled** (below).

Pixelisation
------------
κ is averaged over ``supersample``² sub-pixels (midpoint rule). Each cuspy component (EPL, SIE,
NFW, truncated SIS, multipoles) is capped inside the radius R_c = ``cap_cells`` sub-pixels of its
centre and the analytic mass above the cap, M(<R_c) − π R_c² κ(R_c) (for R² = q x′² + y′²/q the
ellipse R < R_c has area π R_c²), is added to the pixel holding the centre. Without it the
sub-pixel nearest a singular centre carries an unbounded value; with it the mass in any set of
pixels is the analytic integral to < 0.4 % (measured: SIS and EPL γ = 1.8–2.25 in centred
squares of 1–33 pixels, ``supersample`` = 4). Smooth components (NFW, κ_ext) are sampled at pixel
centres.

Rescaling to an Einstein radius (§3.2.2)
----------------------------------------
The paper's θ_E estimate (eq. 13) is θ̂_E = √(Σ_{κ_i > 1} κ_i a / π)
(:func:`lensml.physics.pixelated_lensing.einstein_radius_from_kappa`); for an isothermal lens
θ̂_E = θ_E/√2. θ̂_E(s) of the map sκ is a non-decreasing step function of the factor s: with the
pixel values sorted, k_1 ≥ k_2 ≥ …, and C_j = a Σ_{i ≤ j} k_i, θ̂_E(s)² π = s C_j for
s ∈ (1/k_j, 1/k_{j+1}]. ``rescale="uniform"`` (default) draws the target T ~ U(0.5, 2.5)″ and
inverts this exactly (no bisection needed): j* = #{j : π T² k_j > C_j}, s = π T²/C_{j*}; where
T falls in a jump (adding one pixel of κ ≈ 1 changes θ̂_E by ≈ a/(2π θ̂_E), 10⁻³″ at 0.06″
pixels) s is set just below or just above 1/k_{j*+1}, whichever gives θ̂_E (recomputed on the
map in its dtype) closest to T inside the range. So θ̂_E ∈ [0.5, 2.5]″ always and
|θ̂_E − T| ≲ a/(2π T) (measured max over 128 maps: 3.5·10⁻⁴″ at 0.06″ pixels, 1.9·10⁻³″ at
0.12″).
``rescale="grid"`` is the paper's literal recipe: the factors ``grid_span``^u for
``grid_factors`` values u evenly spaced in [−1, 1] are tried, those whose θ̂_E lies in the range
are kept and one of them is drawn uniformly (if none is, the exact inversion to a uniform target
is used). The θ̂_E distribution is then not uniform (it follows the grid's log spacing).

Maps are clamped at κ ≥ 0 (only the multipoles can make a pixel slightly negative, and only
for q ≲ 0.5 at the largest amplitudes).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from lensml.config import ConfigModel

__all__ = [
    "FAMILIES",
    "KappaMapConfig",
    "draw_kappa_maps",
    "draw_realistic_params",
    "draw_sie_params",
    "einstein_radius_curve",
    "epl_convergence",
    "epl_estimate_ratio",
    "render_realistic",
    "render_sie",
    "rescale_kappa",
    "scale_for_einstein_radius",
]

FAMILIES = ("realistic", "sie")
_F64 = torch.float64
_CHUNK = 8  # maps rendered at once (memory ~ 8 × (N k)² × a few temporaries)

Range = tuple[float, float]


def _f(default: Any, doc: str, **kw: Any) -> Any:
    return Field(default, description=doc, **kw)


class KappaMapConfig(ConfigModel):
    """Settings of the κ-map families (module docstring); lengths in arcsec, angles in rad,
    ranges ``(low, high)`` drawn uniformly, ``*_tn`` fields ``(low, high, mean, sd)`` of a
    truncated normal."""

    realistic_fraction: float = _f(
        2.0 / 3.0, "probability of the realistic family (paper: 400k TNG + 200k SIE)", ge=0, le=1
    )
    theta_e_range: Range = _f((0.5, 2.5), "Einstein radius range, arcsec (Table 2, §3.2.2)")
    rescale: Literal["uniform", "grid"] = _f("uniform", "realistic maps: θ_E rescaling mode")
    grid_factors: int = _f(41, "rescale='grid': number of trial factors", ge=2, le=1001)
    grid_span: float = _f(4.0, "rescale='grid': factors in [1/span, span]", gt=1)
    supersample: int = _f(4, "sub-pixels per pixel side", ge=1, le=16)
    cap_cells: float = _f(1.0, "cusp cap radius, sub-pixels", gt=0, le=8)
    # SIE family (Table 2)
    sie_shift_max: float = _f(0.1, "SIE centre radius ~ U(0, this), arcsec", ge=0)
    sie_ellipticity_range: Range = _f((0.0, 0.6), "SIE ellipticity e")
    ellipticity_convention: Literal["1-q", "(1-q)/(1+q)"] = _f("1-q", "e → q mapping")
    # realistic family: main deflector
    main_shift_max: float = _f(0.1, "main centre radius ~ U(0, this), arcsec", ge=0)
    main_slope_tn: tuple[float, float, float, float] = _f(
        (1.7, 2.3, 2.0, 0.1), "EPL slope γ ~ TN(lo, hi; mean, sd)"
    )
    main_ellipticity_range: Range = _f((0.0, 0.5), "main e = 1 - q")
    m3_amplitude_range: Range = _f((0.0, 0.02), "m = 3 multipole relative amplitude")
    m4_amplitude_range: Range = _f((0.0, 0.03), "m = 4 multipole relative amplitude")
    # dark halo
    halo_prob: float = _f(0.8, "probability of an NFW dark halo", ge=0, le=1)
    halo_rs_range: Range = _f((3.0, 12.0), "NFW scale radius, arcsec")
    halo_kappa_ratio: Range = _f((0.2, 1.0), "kappa_halo / kappa_main at R = b")
    halo_ellipticity_range: Range = _f((0.0, 0.4), "halo e = 1 - q")
    halo_misalignment_max: float = _f(0.35, "halo angle offset max, rad", ge=0)
    halo_offset_max: float = _f(0.05, "halo centre offset from the main centre, arcsec", ge=0)
    # subhalos
    subhalo_mean: float = _f(3.0, "Poisson mean of the subhalo count", ge=0)
    subhalo_max: int = _f(8, "cap on the subhalo count", ge=0, le=64)
    subhalo_mass_range: Range = _f((1e-3, 3e-2), "subhalo mass / (pi b^2)")
    subhalo_mass_slope: float = _f(1.9, "dN/dm ∝ m^-slope", gt=0)
    subhalo_radius: float = _f(2.0, "subhalos within this x b of the main centre", gt=0)
    # second galaxy
    companion_prob: float = _f(0.25, "probability of a second galaxy (group)", ge=0, le=1)
    companion_ratio: Range = _f((0.2, 0.6), "companion theta_E / b")
    companion_distance: Range = _f((1.3, 2.5), "companion distance, units of b")
    companion_max_distance: float = _f(3.5, "companion distance cap, arcsec", gt=0)
    companion_ellipticity_range: Range = _f((0.0, 0.4), "companion e = 1 - q")
    kappa_ext_range: Range = _f((0.0, 0.02), "external convergence sheet")

    @model_validator(mode="after")
    def _check(self) -> KappaMapConfig:
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) == 2:
                if not all(math.isfinite(v) for v in value) or value[0] > value[1]:
                    raise ValueError(f"{name} must be (low, high) with low <= high; got {value}")
        if self.theta_e_range[0] <= 0:
            raise ValueError(f"theta_e_range must be > 0 arcsec; got {self.theta_e_range}")
        for name in (
            "sie_ellipticity_range",
            "main_ellipticity_range",
            "halo_ellipticity_range",
            "companion_ellipticity_range",
        ):
            a, b = getattr(self, name)
            if a < 0 or b >= 1:
                raise ValueError(f"{name} must lie in [0, 1); got {(a, b)}")
        for name in (
            "halo_rs_range",
            "subhalo_mass_range",
            "companion_ratio",
            "companion_distance",
        ):
            if getattr(self, name)[0] <= 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)}")
        if self.halo_kappa_ratio[0] < 0 or self.kappa_ext_range[0] < 0:
            raise ValueError("halo_kappa_ratio and kappa_ext_range must be >= 0")
        m3, m4 = self.m3_amplitude_range, self.m4_amplitude_range
        if m3[0] < 0 or m4[0] < 0 or m3[1] + m4[1] > 0.3:
            raise ValueError(
                "m3_amplitude_range and m4_amplitude_range must be >= 0 with maxima summing "
                f"to <= 0.3; got {m3}, {m4}"
            )
        slo, shi, mu, sd = self.main_slope_tn
        if not (1.0 < slo < shi < 3.0) or not sd > 0 or not math.isfinite(mu):
            raise ValueError(
                "main_slope_tn must be (lo, hi, mean, sd) with 1 < lo < hi < 3 and sd > 0; "
                f"got {self.main_slope_tn}"
            )
        return self


# ---------------------------------------------------------------------- profiles
def epl_convergence(
    x: Tensor,
    y: Tensor,
    theta_e: Tensor | float,
    gamma: Tensor | float,
    q: Tensor | float = 1.0,
    phi: Tensor | float = 0.0,
    x0: Tensor | float = 0.0,
    y0: Tensor | float = 0.0,
    r_min: float = 0.0,
) -> Tensor:
    """Elliptical power-law convergence κ = (3 − γ)/2 (θ_E / R)^(γ − 1), R² = q x′² + y′²/q.

    Parameters
    ----------
    x, y : Tensor
        Coordinates (arcsec), ``(H, W)`` or ``(B, H, W)``.
    theta_e : float or Tensor
        Einstein radius (arcsec, > 0): the mean convergence inside the ellipse R = θ_E is 1.
        For γ = 2 the profile is lensml's SIE (:func:`lensml.physics.mass.sie.convergence`).
    gamma : float or Tensor
        Logarithmic slope of the 3-d density, in (1, 3); 2 is isothermal.
    q, phi, x0, y0 : float or Tensor
        Axis ratio in (0, 1], major-axis angle (rad, CCW from +x) and centre (arcsec).
    r_min : float
        Cap: R is replaced by max(R, r_min) (arcsec, >= 0).

    Returns
    -------
    Tensor
        ``(B, H, W)``.
    """
    t = _col(theta_e, x), _col(gamma, x), _col(q, x), _col(phi, x), _col(x0, x), _col(y0, x)
    b, g, qq, ph, cx, cy = t
    r = _elliptical_radius(x, y, qq, ph, cx, cy).clamp_min(r_min)
    out = 0.5 * (3.0 - g) * torch.exp((g - 1.0) * (torch.log(b) - torch.log(r.clamp_min(1e-30))))
    return out if out.ndim == 3 else out.unsqueeze(0)


def epl_estimate_ratio(gamma: Tensor | float) -> Tensor:
    """θ̂_E/θ_E of a pure EPL for the κ > 1 estimate: ((3 − γ)/2)^((3 − γ)/(2(γ − 1)))
    (1/√2 for γ = 2; the κ = 1 contour is the ellipse R_1 = θ_E ((3 − γ)/2)^(1/(γ−1)) and
    holds the mass π θ_E^(γ−1) R_1^(3−γ))."""
    g = torch.as_tensor(gamma, dtype=_F64)
    return ((3.0 - g) / 2.0) ** ((3.0 - g) / (2.0 * (g - 1.0)))


def _col(v: Tensor | float, like: Tensor) -> Tensor:
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return t.reshape(-1, 1, 1)


def _elliptical_radius(x, y, q, phi, x0, y0) -> Tensor:
    """√(q x′² + y′²/q) (arcsec) for (B, 1, 1) parameters."""
    dx, dy = x - x0, y - y0
    c, s = torch.cos(phi), torch.sin(phi)
    xp = c * dx + s * dy
    yp = c * dy - s * dx
    return torch.sqrt(q * xp * xp + yp * yp / q)


def _q_from_e(e: Tensor, convention: str) -> Tensor:
    return 1.0 - e if convention == "1-q" else (1.0 - e) / (1.0 + e)


def _uniform(n: int | tuple[int, ...], lo: float, hi: float, rng: torch.Generator) -> Tensor:
    shape = (n,) if isinstance(n, int) else tuple(n)
    return lo + (hi - lo) * torch.rand(shape, generator=rng, dtype=_F64)


def _disk_offset(n: int, r_max: float, rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """Table 2's centre shift: radius U(0, r_max), azimuth U(0, 2π)."""
    r = _uniform(n, 0.0, r_max, rng)
    a = _uniform(n, 0.0, 2 * math.pi, rng)
    return r * torch.cos(a), r * torch.sin(a)


# ---------------------------------------------------------------------- parameters
def draw_sie_params(n: int, rng: torch.Generator, config: KappaMapConfig) -> dict[str, Tensor]:
    """Table 2 SIE parameters of ``n`` maps: ``theta_e, q, phi, x0, y0, e`` (float64 (n,))."""
    c = config
    x0, y0 = _disk_offset(n, c.sie_shift_max, rng)
    phi = _uniform(n, 0.0, math.pi, rng)
    theta_e = _uniform(n, *c.theta_e_range, rng)
    e = _uniform(n, *c.sie_ellipticity_range, rng)
    return {
        "theta_e": theta_e,
        "e": e,
        "q": _q_from_e(e, c.ellipticity_convention),
        "phi": phi,
        "x0": x0,
        "y0": y0,
    }


def draw_realistic_params(
    n: int, rng: torch.Generator, config: KappaMapConfig
) -> dict[str, Tensor]:
    """Parameters of ``n`` realistic maps (float64; ``sub_*`` arrays ``(n, subhalo_max)``).

    Keys: ``target`` (θ̂_E target, arcsec), ``gamma``, ``b`` (EPL θ_E before rescaling),
    ``q, phi, x0, y0``, ``a3, phi3, a4, phi4``, ``halo_alpha_rs, halo_rs, halo_q, halo_phi,
    halo_x0, halo_y0`` (alpha_rs = 0: no halo), ``sub_b, sub_rt, sub_x, sub_y`` (b = 0: unused
    slot), ``comp_b, comp_q, comp_phi, comp_x, comp_y`` (b = 0: none), ``kappa_ext``.
    """
    from lensml.physics.mass import nfw
    from lensml.physics.pixelated_lensing import truncated_normal

    c = config
    out: dict[str, Tensor] = {}
    target = _uniform(n, *c.theta_e_range, rng)
    gamma = truncated_normal(n, *c.main_slope_tn, rng)
    b = target / epl_estimate_ratio(gamma)
    x0, y0 = _disk_offset(n, c.main_shift_max, rng)
    phi = _uniform(n, 0.0, math.pi, rng)
    out.update(
        target=target,
        gamma=gamma,
        b=b,
        q=1.0 - _uniform(n, *c.main_ellipticity_range, rng),
        phi=phi,
        x0=x0,
        y0=y0,
        a3=_uniform(n, *c.m3_amplitude_range, rng),
        phi3=_uniform(n, 0.0, 2 * math.pi / 3, rng),
        a4=_uniform(n, *c.m4_amplitude_range, rng),
        phi4=_uniform(n, 0.0, math.pi / 2, rng),
    )
    # dark halo, normalised at R = b relative to the main deflector
    has_halo = torch.rand(n, generator=rng, dtype=_F64) < c.halo_prob
    r_s = _uniform(n, *c.halo_rs_range, rng)
    ratio = _uniform(n, *c.halo_kappa_ratio, rng)
    one = nfw.kappa_s_to_alpha_rs(torch.ones(n, dtype=_F64), r_s)
    k1 = nfw.convergence(b.reshape(n, 1, 1), torch.zeros(n, 1, 1, dtype=_F64), r_s, one)
    kappa_s = ratio * 0.5 * (3.0 - gamma) / k1.reshape(n)
    hx, hy = _disk_offset(n, c.halo_offset_max, rng)
    out.update(
        halo_rs=r_s,
        halo_alpha_rs=torch.where(has_halo, nfw.kappa_s_to_alpha_rs(kappa_s, r_s), 0.0),
        halo_q=1.0 - _uniform(n, *c.halo_ellipticity_range, rng),
        halo_phi=phi + _uniform(n, -c.halo_misalignment_max, c.halo_misalignment_max, rng),
        halo_x0=x0 + hx,
        halo_y0=y0 + hy,
    )
    # subhalos: power-law mass function, tidal truncation r_t = sqrt(b_sub b)
    k = int(c.subhalo_max)
    count = torch.poisson(torch.full((n,), float(c.subhalo_mean), dtype=_F64), generator=rng)
    count = count.clamp(max=k)
    used = torch.arange(k)[None, :] < count[:, None]
    lo, hi = c.subhalo_mass_range
    u = torch.rand((n, k), generator=rng, dtype=_F64)
    a = 1.0 - c.subhalo_mass_slope
    if abs(a) < 1e-12:
        frac = lo * (hi / lo) ** u
    else:
        frac = (lo**a + u * (hi**a - lo**a)) ** (1.0 / a)
    rad = c.subhalo_radius * b[:, None] * torch.sqrt(torch.rand((n, k), generator=rng, dtype=_F64))
    ang = _uniform((n, k), 0.0, 2 * math.pi, rng)
    out.update(
        n_subhalos=count,
        sub_b=torch.where(used, frac ** (2.0 / 3.0) * b[:, None], 0.0),
        sub_rt=frac ** (1.0 / 3.0) * b[:, None],
        sub_x=x0[:, None] + rad * torch.cos(ang),
        sub_y=y0[:, None] + rad * torch.sin(ang),
    )
    # second galaxy
    has_comp = torch.rand(n, generator=rng, dtype=_F64) < c.companion_prob
    dist = (_uniform(n, *c.companion_distance, rng) * b).clamp(max=c.companion_max_distance)
    cang = _uniform(n, 0.0, 2 * math.pi, rng)
    out.update(
        comp_b=torch.where(has_comp, _uniform(n, *c.companion_ratio, rng) * b, 0.0),
        comp_q=1.0 - _uniform(n, *c.companion_ellipticity_range, rng),
        comp_phi=_uniform(n, 0.0, math.pi, rng),
        comp_x=x0 + dist * torch.cos(cang),
        comp_y=y0 + dist * torch.sin(cang),
        kappa_ext=_uniform(n, *c.kappa_ext_range, rng),
    )
    return out


# ---------------------------------------------------------------------- rendering
def _grid(n_pix: int, fov: float) -> Any:
    from lensml.physics.grids import PixelGrid

    if isinstance(n_pix, bool) or not isinstance(n_pix, int) or n_pix < 2:
        raise ValueError(f"kappa maps: 'n_pix' must be an integer >= 2; got {n_pix!r}")
    if not isinstance(fov, (int, float)) or not math.isfinite(fov) or fov <= 0:
        raise ValueError(f"kappa maps: 'fov' must be a finite number > 0 arcsec; got {fov!r}")
    return PixelGrid.square(n_pix, float(fov) / n_pix)


class _Canvas:
    """Accumulators of capped profiles on the sub-pixel lattice (``fine``) and at pixel centres
    (``coarse``, smooth components), plus the point masses above the caps."""

    def __init__(self, m: int, grid: Any, k: int, cap_cells: float, dtype: torch.dtype) -> None:
        self.grid, self.k, self.dtype = grid, k, dtype
        self.x, self.y = grid.coordinates(k, dtype=dtype)
        self.r_c = cap_cells * grid.pixel_scale / k
        self.xc, self.yc = grid.coordinates(dtype=dtype)
        self.fine = torch.zeros(m, *self.x.shape, dtype=dtype)
        self.coarse = torch.zeros(m, *self.xc.shape, dtype=dtype)
        self.point_mass: list[tuple[Tensor, Tensor, Tensor]] = []

    def add_point_mass(self, mass: Tensor, x0: Tensor, y0: Tensor) -> None:
        self.point_mass.append((mass.to(_F64), x0.to(_F64), y0.to(_F64)))

    def result(self) -> Tensor:
        """``(m, 1, N, N)``: sub-pixel average plus the cap excess in the pixel of each centre."""
        import torch.nn.functional as F

        out = F.avg_pool2d(self.fine.unsqueeze(1), self.k) + self.coarse.unsqueeze(1)
        g = self.grid
        area = g.pixel_area
        flat = out.view(out.shape[0], -1)
        rows = torch.arange(out.shape[0])
        xs, ys = g.axes(dtype=_F64)
        for mass, x0, y0 in self.point_mass:
            j = torch.round((x0 - xs[0]) / g.pixel_scale).long()
            i = torch.round((y0 - ys[0]) / g.pixel_scale).long()
            ok = (i >= 0) & (i < g.ny) & (j >= 0) & (j < g.nx) & (mass > 0)
            idx = i.clamp(0, g.ny - 1) * g.nx + j.clamp(0, g.nx - 1)
            flat.index_put_((rows, idx), (mass * ok / area).to(out.dtype), accumulate=True)
        return out


def _add_epl(cv: _Canvas, b, gamma, q, phi, x0, y0) -> None:
    """Capped EPL (b = 0 items add nothing) and its excess mass π R_c² κ(R_c)(γ−1)/(3−γ)."""
    kap = epl_convergence(cv.x, cv.y, b.clamp_min(1e-30), gamma, q, phi, x0, y0, r_min=cv.r_c)
    cv.fine += torch.where(b.reshape(-1, 1, 1) > 0, kap, 0.0).to(cv.dtype)
    g = gamma.to(_F64)
    k_c = 0.5 * (3.0 - g) * (b.to(_F64) / cv.r_c) ** (g - 1.0)
    cv.add_point_mass(math.pi * cv.r_c**2 * k_c * (g - 1.0) / (3.0 - g), x0, y0)


def render_sie(
    params: dict[str, Tensor],
    n_pix: int,
    fov: float,
    config: KappaMapConfig | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Pixel-averaged SIE maps ``(m, 1, n_pix, n_pix)`` of :func:`draw_sie_params` output.

    Uses :func:`lensml.physics.mass.sie.convergence` on the sub-pixel lattice, capped at R_c
    with the excess mass π R_c² κ(R_c) added to the centre's pixel (module docstring).
    """
    from lensml.physics.mass import sie

    c = config or KappaMapConfig()
    grid = _grid(n_pix, fov)
    p = {key: v.to(_F64) for key, v in params.items()}
    outs = []
    for idx in torch.arange(len(p["theta_e"])).split(_CHUNK):
        cv = _Canvas(len(idx), grid, int(c.supersample), c.cap_cells, dtype)
        te = p["theta_e"][idx]
        kap = sie.convergence(
            cv.x, cv.y, te.to(dtype), p["q"][idx].to(dtype), p["phi"][idx].to(dtype),
            p["x0"][idx].to(dtype), p["y0"][idx].to(dtype),
        )  # fmt: skip
        k_c = (0.5 * te / cv.r_c).to(dtype).reshape(-1, 1, 1)
        cv.fine += torch.minimum(kap, k_c)
        cv.add_point_mass(math.pi * cv.r_c**2 * 0.5 * te / cv.r_c, p["x0"][idx], p["y0"][idx])
        outs.append(cv.result())
    return torch.cat(outs).clamp_min(0.0)


def render_realistic(
    params: dict[str, Tensor],
    n_pix: int,
    fov: float,
    config: KappaMapConfig | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Pixel-averaged realistic maps ``(m, 1, n_pix, n_pix)`` of :func:`draw_realistic_params`
    output, before rescaling (module docstring)."""
    from lensml.physics.mass import nfw, sis

    c = config or KappaMapConfig()
    grid = _grid(n_pix, fov)
    p = {key: v.to(_F64) for key, v in params.items()}
    outs = []
    for idx in torch.arange(len(p["b"])).split(_CHUNK):
        m = len(idx)
        cv = _Canvas(m, grid, int(c.supersample), c.cap_cells, dtype)
        r_c = cv.r_c

        def t(key: str, idx: Tensor = idx) -> Tensor:
            return p[key][idx]

        # main EPL
        _add_epl(cv, t("b"), t("gamma"), t("q"), t("phi"), t("x0"), t("y0"))
        # multipoles on the circularised EPL (zero net mass in the cap)
        dx = cv.x - _col(t("x0"), cv.x)
        dy = cv.y - _col(t("y0"), cv.x)
        ang = torch.atan2(dy, dx)
        circ = epl_convergence(cv.x, cv.y, t("b"), t("gamma"), 1.0, 0.0, t("x0"), t("y0"), r_c)
        pert = _col(t("a3"), cv.x) * torch.cos(3 * (ang - _col(t("phi3"), cv.x)))
        pert = pert + _col(t("a4"), cv.x) * torch.cos(4 * (ang - _col(t("phi4"), cv.x)))
        cv.fine += circ * pert
        # NFW halo, elliptical in κ through the area-preserving radius; smooth on the pixel
        # scale (r_s >= pixels), so sampled at pixel centres with its log cusp capped at R_c
        alpha = t("halo_alpha_rs")
        sel = torch.nonzero(alpha > 0).flatten()
        if len(sel):
            rs, al = t("halo_rs")[sel], alpha[sel]
            rh = _elliptical_radius(
                cv.xc, cv.yc, _col(t("halo_q")[sel], cv.x), _col(t("halo_phi")[sel], cv.x),
                _col(t("halo_x0")[sel], cv.x), _col(t("halo_y0")[sel], cv.x),
            ).clamp_min(r_c)  # fmt: skip
            cv.coarse[sel] += nfw.convergence(rh, torch.zeros_like(rh), rs, al).to(dtype)
            rc = torch.full((len(sel), 1), r_c, dtype=_F64)
            mean_c = nfw.mean_convergence(rc, rs, al).reshape(-1)
            k_c = nfw.convergence(
                rc.reshape(-1, 1, 1), torch.zeros(len(sel), 1, 1, dtype=_F64), rs, al
            ).reshape(-1)
            mass = torch.zeros(m, dtype=_F64)
            mass[sel] = math.pi * r_c**2 * (mean_c - k_c)
            cv.add_point_mass(mass, t("halo_x0"), t("halo_y0"))
        # truncated-SIS subhalos (evaluated only for the maps that have slot s)
        for s in range(p["sub_b"].shape[1]):
            bs = p["sub_b"][idx, s]
            sel = torch.nonzero(bs > 0).flatten()
            if not len(sel):
                continue
            bs = bs[sel]
            rt, sx, sy = (p[key][idx, s][sel] for key in ("sub_rt", "sub_x", "sub_y"))
            rr = torch.sqrt((cv.x - _col(sx, cv.x)) ** 2 + (cv.y - _col(sy, cv.x)) ** 2)
            rr = rr.clamp_min(r_c)
            cv.fine[sel] += sis.tsis_convergence(
                rr, torch.zeros_like(rr), bs.to(dtype), rt.to(dtype)
            )
            rc = torch.full((len(sel), 1), r_c, dtype=_F64)
            mass_c = sis.tsis_enclosed_mass(rc, bs, rt).reshape(-1)
            k_c = sis.tsis_convergence(
                rc.reshape(-1, 1, 1), torch.zeros(len(sel), 1, 1, dtype=_F64), bs, rt
            ).reshape(-1)
            mass = torch.zeros(m, dtype=_F64)
            mass[sel] = mass_c - math.pi * r_c**2 * k_c
            cv.add_point_mass(mass, p["sub_x"][idx, s], p["sub_y"][idx, s])
        # second galaxy (SIE)
        cb = t("comp_b")
        if bool((cb > 0).any()):
            two = torch.full_like(cb, 2.0)
            _add_epl(cv, cb, two, t("comp_q"), t("comp_phi"), t("comp_x"), t("comp_y"))
        cv.coarse += _col(t("kappa_ext"), cv.x)
        outs.append(cv.result())
    return torch.cat(outs).clamp_min(0.0)


# ---------------------------------------------------------------------- rescaling
def _sorted_mass(kappa: Tensor, pixel_scale: float) -> tuple[Tensor, Tensor]:
    """Pixel values sorted in decreasing order ``k`` and cumulative masses ``C`` (float64)."""
    k = kappa.reshape(kappa.shape[0], -1).to(_F64)
    k, _ = torch.sort(k, dim=1, descending=True)
    return k, torch.cumsum(k, dim=1) * pixel_scale**2


def einstein_radius_curve(kappa: Tensor, pixel_scale: float, factors: Tensor) -> Tensor:
    """θ̂_E (arcsec) of ``factors[b, f] × kappa[b]``, shape ``(B, F)`` (float64).

    Equals :func:`lensml.physics.pixelated_lensing.einstein_radius_from_kappa` of the scaled
    map, computed for all factors at once from the sorted pixel values.
    """
    k, cum = _sorted_mass(kappa, pixel_scale)
    s = factors.to(_F64)
    # number of pixels with s k_i > 1, for each factor
    count = (k[:, None, :] * s[:, :, None] > 1.0).sum(dim=2)
    mass = torch.where(
        count > 0, torch.gather(cum, 1, (count - 1).clamp_min(0)), torch.zeros_like(s)
    )
    return torch.sqrt(s * mass / math.pi)


def scale_for_einstein_radius(kappa: Tensor, pixel_scale: float, target: Tensor) -> Tensor:
    """Factors ``s`` (B,) float64 such that θ̂_E(s κ) = ``target`` (arcsec, (B,)), exactly
    up to the one-pixel jumps of the estimator (module docstring).

    Raises
    ------
    ValueError
        If a map is zero everywhere or a target is below one pixel's radius √(a/π).
    """
    k, cum = _sorted_mass(kappa, pixel_scale)
    t2 = math.pi * target.to(_F64).reshape(-1, 1) ** 2
    if bool((k[:, 0] <= 0).any()):
        raise ValueError("scale_for_einstein_radius: a kappa map is <= 0 everywhere")
    if bool((t2[:, 0] <= pixel_scale**2).any()):
        raise ValueError(
            "scale_for_einstein_radius: 'target' must exceed one pixel's radius "
            f"sqrt(a/pi) = {pixel_scale / math.sqrt(math.pi):.4g} arcsec"
        )
    return _bracket(k, cum, t2[:, 0])[0]


def _bracket(k: Tensor, cum: Tensor, t2: Tensor) -> tuple[Tensor, Tensor]:
    """Factors just below and above the solution of s C(1/s) = π T² (equal unless T falls in
    a jump of the step function), kept 10⁻⁶ (relative) away from the thresholds 1/k_i so
    that float32 rounding of s κ does not move a pixel across κ = 1."""
    inside = (t2[:, None] * k > cum) & (k > 0)
    j = inside.sum(dim=1).clamp_min(1)  # the first j pixels are supercritical
    s = t2 / torch.gather(cum, 1, (j - 1)[:, None])[:, 0]
    nxt = torch.gather(k, 1, j.clamp(max=k.shape[1] - 1)[:, None])[:, 0].clamp_min(1e-300)
    cur = torch.gather(k, 1, (j - 1)[:, None])[:, 0]
    jump = (j < k.shape[1]) & (s * nxt > 1.0)
    lower = torch.where(jump, (1.0 - 1e-6) / nxt, s)
    lower = torch.maximum(lower, (1.0 + 1e-6) / cur)  # pixel j stays supercritical
    upper = torch.where(jump, (1.0 + 1e-6) / nxt, s)
    return lower, upper


def _best_scale(kappa: Tensor, pixel_scale: float, target: Tensor, lo: float, hi: float) -> Tensor:
    """Of the bracketing factors, the one whose map (in kappa's dtype) has θ̂_E closest to
    ``target`` within [lo, hi] (closest overall if neither is inside)."""
    from lensml.physics.pixelated_lensing import einstein_radius_from_kappa

    k, cum = _sorted_mass(kappa, pixel_scale)
    if bool((k[:, 0] <= 0).any()):
        raise ValueError("rescale_kappa: a kappa map is <= 0 everywhere")
    t = target.to(_F64)
    lower, upper = _bracket(k, cum, math.pi * t * t)
    cands = torch.stack([lower, upper], dim=1)
    theta = torch.stack(
        [
            einstein_radius_from_kappa(kappa * c.to(kappa.dtype).reshape(-1, 1, 1, 1), pixel_scale)
            for c in cands.unbind(1)
        ],
        dim=1,
    ).to(_F64)
    score = (theta - t[:, None]).abs() + 1e3 * ((theta < lo) | (theta > hi))
    return torch.gather(cands, 1, score.argmin(dim=1, keepdim=True))[:, 0]


def rescale_kappa(
    kappa: Tensor,
    pixel_scale: float,
    rng: torch.Generator,
    config: KappaMapConfig | None = None,
    target: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Rescale maps so that θ̂_E lies in ``theta_e_range`` (§3.2.2; module docstring).

    Parameters
    ----------
    kappa : Tensor
        ``(B, 1, N, N)`` maps, not identically zero.
    pixel_scale : float
        Arcsec per pixel.
    rng : torch.Generator
        Draws the targets (uniform mode, unless ``target`` is given) or the grid choice.
    config : KappaMapConfig, optional
        ``rescale``, ``theta_e_range``, ``grid_factors``, ``grid_span``.
    target : Tensor, optional
        ``(B,)`` targets in arcsec (uniform mode); default U(theta_e_range).

    Returns
    -------
    tuple of Tensor
        The rescaled maps (dtype of ``kappa``) and the factors ``(B,)`` float64.
    """
    c = config or KappaMapConfig()
    bsz = kappa.shape[0]
    lo, hi = c.theta_e_range
    if c.rescale == "grid":
        u = torch.linspace(-1.0, 1.0, int(c.grid_factors), dtype=_F64)
        factors = (c.grid_span**u)[None, :].expand(bsz, -1)
        theta = einstein_radius_curve(kappa, pixel_scale, factors)
        ok = (theta >= lo) & (theta <= hi)
        # uniform choice among the admissible factors (random keys, arg-max over ok ones)
        keys = torch.rand(factors.shape, generator=rng, dtype=_F64)
        pick = torch.where(ok, keys, -1.0).argmax(dim=1)
        s = torch.gather(factors, 1, pick[:, None])[:, 0]
        fallback = ~ok.any(dim=1)
        tgt = _uniform(bsz, lo, hi, rng)
        if bool(fallback.any()):
            s = torch.where(fallback, _best_scale(kappa, pixel_scale, tgt, lo, hi), s)
    else:
        tgt = _uniform(bsz, lo, hi, rng) if target is None else target.to(_F64)
        s = _best_scale(kappa, pixel_scale, tgt, lo, hi)
    return kappa * s.to(kappa.dtype).reshape(-1, 1, 1, 1), s


# ---------------------------------------------------------------------- top level
def draw_kappa_maps(
    n: int,
    rng: torch.Generator,
    n_pix: int,
    fov: float,
    config: KappaMapConfig | None = None,
    family: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Draw ``n`` convergence maps of the realistic / SIE mixture (or one ``family``).

    Parameters
    ----------
    n : int
        Number of maps, >= 1.
    rng : torch.Generator
        The only source of randomness.
    n_pix : int
        Pixels per side of the image grid.
    fov : float
        Field of view of the image grid, arcsec (paper: 7.69).
    config : KappaMapConfig, optional
        Defaults documented in :class:`KappaMapConfig`.
    family : {"realistic", "sie"}, optional
        Force one family; default draws ``realistic`` with probability
        ``config.realistic_fraction``.
    dtype : torch.dtype
        Of the maps (float32 default; float64 works).

    Returns
    -------
    dict of Tensor
        ``kappa`` ``(n, 1, n_pix, n_pix)`` (dtype), ``theta_e`` (n,) the κ > 1 estimate of the
        final map (arcsec, float64), ``theta_e_param`` (n,) the SIE θ_E or the realistic
        rescaling target (arcsec), ``family`` (n,) int64 index into :data:`FAMILIES`,
        ``scale`` (n,) the rescaling factor (1 for SIEs).
    """
    from lensml.physics.pixelated_lensing import einstein_radius_from_kappa

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"draw_kappa_maps: 'n' must be an integer >= 1; got {n!r}")
    if family is not None and family not in FAMILIES:
        raise ValueError(f"draw_kappa_maps: 'family' must be one of {FAMILIES}; got {family!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"draw_kappa_maps: 'dtype' must be float32 or float64; got {dtype}")
    c = config or KappaMapConfig()
    grid = _grid(n_pix, fov)
    if family is None:
        real = torch.rand(n, generator=rng, dtype=_F64) < c.realistic_fraction
    else:
        real = torch.full((n,), family == "realistic", dtype=torch.bool)
    kappa = torch.zeros(n, 1, n_pix, n_pix, dtype=dtype)
    param = torch.zeros(n, dtype=_F64)
    scale = torch.ones(n, dtype=_F64)
    ir = torch.nonzero(real).flatten()
    isie = torch.nonzero(~real).flatten()
    if len(ir):
        p = draw_realistic_params(len(ir), rng, c)
        raw = render_realistic(p, n_pix, fov, c, dtype)
        kappa[ir], scale[ir] = rescale_kappa(raw, grid.pixel_scale, rng, c, p["target"])
        param[ir] = p["target"]
    if len(isie):
        p = draw_sie_params(len(isie), rng, c)
        kappa[isie] = render_sie(p, n_pix, fov, c, dtype)
        param[isie] = p["theta_e"]
    theta = einstein_radius_from_kappa(kappa, grid.pixel_scale).to(_F64)
    return {
        "kappa": kappa,
        "theta_e": theta,
        "theta_e_param": param,
        "family": (~real).long(),
        "scale": scale,
    }
