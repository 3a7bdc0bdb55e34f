"""MOKA-like population of a galaxy-cluster halo: the random ingredients, batched in torch.

Every function is pure, draws its random numbers from the ``torch.Generator`` it is given and
works on ``(B,)`` tensors (one value per cluster) or flat subhalo tensors. Masses are in
M_sun / h unless stated (the unit of the c–M and subhalo relations), lengths in units of the
host virial radius R_vir unless stated. The recipes follow MOKA (Giocoli et al. 2012, MNRAS
421, 3343) with documented substitutions where MOKA's ingredient is not analytic:

* **Concentration** — Duffy et al. (2008, MNRAS 390, L64), full sample, z = 0–2, virial
  masses: c_vir = 7.85 (M / 2×10¹² M_sun/h)^−0.081 (1 + z)^−0.71, with log-normal scatter
  σ_lnc = 0.25 (:func:`concentration_duffy08`, :func:`draw_concentration`). MOKA uses Zhao
  et al. (2009), which needs the halo's mass-accretion history (a numerical integration
  over the power spectrum); Duffy's analytic power law is used instead because it is exact
  to reproduce, is available in colossus for a peer test (model ``duffy08``) and agrees
  with Zhao et al. to ~10 % for cluster masses at z ≲ 0.5.
* **Triaxiality** — Jing & Suto (2002, ApJ 574, 538): the minor-to-major ratio s = a/c is
  Gaussian in s̃ = s (M / M*)^{0.07 Ω_m(z)^0.7} with mean 0.54 and σ = 0.113; the
  intermediate ratio a/b given a/c has p(a/b | a/c) = 3 / (2 (1 − r)) [1 − ((2 a/b − 1 − r)
  / (1 − r))²] for r = max(a/c, 0.5) ≤ a/b ≤ 1 (:func:`draw_axis_ratios`). A random
  orientation is projected exactly (:func:`project_ellipsoid`): a density constant on
  ellipsoids ζ² = xᵀ A x projects onto ellipses ξ² = uᵀ S u where S is the Schur complement
  of A's line-of-sight element.
* **BCG** — stellar mass from the Moster, Naab & White (2013, MNRAS 428, 3121) stellar-to-
  halo mass relation with 0.15 dex scatter (:func:`bcg_stellar_mass`), Hernquist scale
  radius a = R_e / 1.8153 with the early-type size–mass relation of Shen et al. (2003,
  MNRAS 343, 978), R_e = 2.88×10⁻⁶ kpc (M*/M_sun)^0.56 (:func:`bcg_scale_radius_kpc`).
* **Subhalos** — Giocoli et al. (2010, MNRAS 404, 502) mass function
  dN / d ln m = (1 + z)^½ A (m / M)^α exp(−β (m / M)³) with A = 9.33×10⁻³, α = −0.9,
  β = 12.2715 (the paper quotes α ≈ −0.9; A and β are Giocoli et al.'s values), between
  m_min (MOKA: 10¹⁰ M_sun/h) and M (:func:`subhalo_mean_number`, :func:`draw_subhalo_masses`);
  3-d distances from the cumulative radial distribution of the cluster paper's eq. 5
  (Gao et al. 2004; Giocoli et al. 2012), N(<x) / N_v = (1 + a c) x^β / (1 + a c x^α) with
  x = r / R_vir ≤ 1, a = 0.244, α = 2, β = 2.75 (:func:`draw_subhalo_radii`), isotropic
  directions (:func:`isotropic_directions`).
* **Truncation** — each subhalo is a truncated SIS (Keeton 2003; paper eq. 7) of total
  mass m = π σ_v² r_t / G. Its truncation radius is the tidal (Jacobi) radius in the host's
  NFW potential, r_t = d (m / (3 M_host(<d)))^⅓ at 3-d distance d, capped at the radius
  (2/π) r_Δ(m) that an isolated SIS of mass m inside its own virial radius r_Δ(m) would
  have (:func:`subhalo_truncation_radius`); σ_v then follows from m and r_t.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "DUFFY08_VIR",
    "GAO04_RADIAL",
    "GIOCOLI10",
    "bcg_scale_radius_kpc",
    "bcg_stellar_mass",
    "concentration_duffy08",
    "draw_axis_ratios",
    "draw_concentration",
    "draw_subhalo_masses",
    "draw_subhalo_radii",
    "isotropic_directions",
    "nfw_mass_fraction",
    "project_ellipsoid",
    "random_rotations",
    "subhalo_mean_number",
    "subhalo_radial_cdf",
    "subhalo_truncation_radius",
]

#: Duffy et al. (2008) full-sample fit for virial masses: (A, B, C, M_pivot [M_sun/h]).
DUFFY08_VIR = (7.85, -0.081, -0.71, 2e12)
#: Giocoli et al. (2010) subhalo mass function: (A, alpha, beta).
GIOCOLI10 = (9.33e-3, -0.9, 12.2715)
#: Gao et al. (2004) / Giocoli et al. (2012) radial distribution: (a, alpha, beta).
GAO04_RADIAL = (0.244, 2.0, 2.75)


def _check_positive(t: Tensor, name: str, owner: str) -> None:
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError(f"{owner}: {name!r} must be finite and > 0")


# ------------------------------------------------------------------ concentration
def concentration_duffy08(mass: Tensor, z: float | Tensor) -> Tensor:
    """Mean virial concentration of Duffy et al. (2008), full sample (see module docstring).

    Parameters
    ----------
    mass : Tensor
        Virial mass in M_sun / h, > 0; any shape.
    z : float or Tensor
        Redshift, >= 0 (broadcast against ``mass``).

    Returns
    -------
    Tensor
        c_vir = r_vir / r_s, same shape as ``mass``.
    """
    _check_positive(mass, "mass", "concentration_duffy08")
    a, b, c, pivot = DUFFY08_VIR
    return a * (mass / pivot) ** b * (1.0 + torch.as_tensor(z, dtype=mass.dtype)) ** c


def draw_concentration(
    mass: Tensor, z: float | Tensor, sigma_lnc: float, generator: torch.Generator
) -> Tensor:
    """Concentrations ln c ~ N(ln c_Duffy(M, z), σ_lnc²) (the median is Duffy's relation)."""
    mean = concentration_duffy08(mass, z)
    if sigma_lnc < 0:
        raise ValueError(f"draw_concentration: 'sigma_lnc' must be >= 0, got {sigma_lnc}")
    eps = torch.randn(mass.shape, generator=generator, dtype=mass.dtype)
    return mean * torch.exp(sigma_lnc * eps)


def nfw_mass_fraction(x: Tensor) -> Tensor:
    """μ(x) = ln(1 + x) − x / (1 + x): NFW 3-d mass inside x r_s in units of 4π ρ_s r_s³."""
    return torch.log1p(x) - x / (1.0 + x)


# ------------------------------------------------------------------ triaxiality
def draw_axis_ratios(
    mass: Tensor,
    omega_m_z: float,
    m_star: float,
    generator: torch.Generator,
    s_mean: float = 0.54,
    s_sigma: float = 0.113,
) -> tuple[Tensor, Tensor]:
    """Axis ratios (a/c, b/c) of triaxial halos after Jing & Suto (2002).

    Parameters
    ----------
    mass : Tensor
        (B,) virial masses, M_sun / h.
    omega_m_z : float
        Ω_m at the halo's redshift.
    m_star : float
        Characteristic non-linear mass M*(z) in M_sun / h (σ(M*) = δ_c).
    generator : torch.Generator
    s_mean, s_sigma : float
        Mean and σ of the rescaled minor-to-major ratio s̃ (0.54, 0.113 in JS02).

    Returns
    -------
    tuple of Tensor
        ``(a_over_c, b_over_c)`` with 0 < a/c <= b/c <= 1, each (B,). Draws of a/c are
        clipped to [0.1, 1].
    """
    _check_positive(mass, "mass", "draw_axis_ratios")
    scale = (mass / m_star) ** (0.07 * omega_m_z**0.7)
    s_tilde = s_mean + s_sigma * torch.randn(mass.shape, generator=generator, dtype=mass.dtype)
    a_c = (s_tilde / scale).clamp(0.1, 1.0)
    r = torch.clamp(a_c, min=0.5)
    # p(t) ∝ 1 − t² on t ∈ [−1, 1] with t = (2 a/b − 1 − r)/(1 − r): draw t by the
    # inverse CDF F(t) = (2 + 3t − t³)/4 (closed-form root of the cubic).
    u = torch.rand(mass.shape, generator=generator, dtype=mass.dtype)
    t = 2.0 * torch.cos((torch.acos(1.0 - 2.0 * u) + 4.0 * math.pi) / 3.0)
    a_b = ((1.0 - r) * t + 1.0 + r) / 2.0
    a_b = torch.maximum(a_b, a_c).clamp(max=1.0)
    b_c = (a_c / a_b).clamp(max=1.0)
    return a_c, b_c


def random_rotations(b: int, generator: torch.Generator, dtype=torch.float64) -> Tensor:
    """(b, 3, 3) rotation matrices uniform on SO(3) (QR of Gaussian matrices, sign-fixed)."""
    g = torch.randn(b, 3, 3, generator=generator, dtype=dtype)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    det = torch.linalg.det(q)
    q[:, :, 0] = q[:, :, 0] * det.sign().unsqueeze(-1)
    return q


def project_ellipsoid(a_over_c: Tensor, b_over_c: Tensor, rotation: Tensor) -> tuple[Tensor, ...]:
    """Projected ellipse of a triaxial halo seen along the z axis after ``rotation``.

    The halo's density is constant on ζ² = x² / a² + y² / b² + z² / c² in its principal
    frame; in the observer frame ζ² = xᵀ A x with A = R diag(a⁻², b⁻², c⁻²) Rᵀ. Integrating
    along z gives a function of ξ² = uᵀ S u with S = A_⊥ − A_⊥z A_z⊥ / A_zz (u = (x, y)); the
    eigen-decomposition of S gives the axis ratio and position angle.

    Parameters
    ----------
    a_over_c, b_over_c : Tensor
        (B,) axis ratios, 0 < a/c <= b/c <= 1 (c = 1).
    rotation : Tensor
        (B, 3, 3) rotations from the principal to the observer frame.

    Returns
    -------
    tuple of Tensor
        ``(q, phi)``: projected minor-to-major axis ratio in (0, 1] and position angle of the
        major axis in radians counter-clockwise from +x, in [0, π), each (B,).
    """
    d = torch.stack(
        [a_over_c.to(rotation.dtype) ** -2, b_over_c.to(rotation.dtype) ** -2,
         torch.ones_like(a_over_c, dtype=rotation.dtype)],
        dim=-1,
    )  # fmt: skip
    a = rotation @ torch.diag_embed(d) @ rotation.transpose(-1, -2)
    s = a[:, :2, :2] - a[:, :2, 2:3] @ a[:, 2:3, :2] / a[:, 2:3, 2:3]
    s = 0.5 * (s + s.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(s)  # ascending: first = smallest curvature = major axis
    q = torch.sqrt(evals[:, 0] / evals[:, 1]).clamp(max=1.0)
    major = evecs[:, :, 0]
    phi = torch.remainder(torch.atan2(major[:, 1], major[:, 0]), math.pi)
    return q, phi


# ------------------------------------------------------------------ BCG
def bcg_stellar_mass(
    halo_mass_msun: Tensor, z: float | Tensor, scatter_dex: float, generator: torch.Generator
) -> Tensor:
    """BCG stellar mass (M_sun) from the Moster, Naab & White (2013) relation.

    m*/M = 2 N [(M/M1)^−β + (M/M1)^γ]^−1 with log M1 = 11.590 + 1.195 z/(1+z),
    N = 0.0351 − 0.0247 z/(1+z), β = 1.376 − 0.826 z/(1+z), γ = 0.608 + 0.329 z/(1+z)
    (M in M_sun; their M_200c, applied here to M_vir — a <10 % difference in halo mass that
    is well inside the relation's scatter), times a log-normal scatter of ``scatter_dex``.

    Parameters
    ----------
    halo_mass_msun : Tensor
        (B,) halo masses in M_sun (no h), > 0.
    z : float or Tensor
        Redshift, a number or (B,).
    scatter_dex : float
        σ of log10 m* about the mean relation (0.15 typical), >= 0.
    generator : torch.Generator
    """
    _check_positive(halo_mass_msun, "halo_mass_msun", "bcg_stellar_mass")
    a = z / (1.0 + z)
    m1 = 10.0 ** (11.590 + 1.195 * a)
    norm = 0.0351 - 0.0247 * a
    beta = 1.376 - 0.826 * a
    gamma = 0.608 + 0.329 * a
    x = halo_mass_msun / m1
    ms = 2.0 * norm * halo_mass_msun / (x ** (-beta) + x**gamma)
    eps = torch.randn(halo_mass_msun.shape, generator=generator, dtype=halo_mass_msun.dtype)
    return ms * 10.0 ** (scatter_dex * eps)


def bcg_scale_radius_kpc(stellar_mass_msun: Tensor) -> Tensor:
    """Hernquist scale radius a = R_e / 1.8153 in physical kpc; R_e from Shen et al. (2003)."""
    _check_positive(stellar_mass_msun, "stellar_mass_msun", "bcg_scale_radius_kpc")
    r_e = 2.88e-6 * stellar_mass_msun**0.56
    return r_e / 1.8153


# ------------------------------------------------------------------ subhalos
def _shmf_integrand(x: Tensor, alpha: float, beta: float) -> Tensor:
    return x**alpha * torch.exp(-beta * x**3)


def subhalo_mean_number(
    host_mass: Tensor,
    m_min: float,
    z: float | Tensor,
    amplitude: float = GIOCOLI10[0],
    alpha: float = GIOCOLI10[1],
    beta: float = GIOCOLI10[2],
    n_grid: int = 2048,
) -> Tensor:
    """Expected number of subhalos with m_min <= m <= M: ∫ dN/d ln m d ln m.

    Parameters
    ----------
    host_mass : Tensor
        (B,) host virial masses, M_sun / h (same unit as ``m_min``).
    m_min : float
        Smallest subhalo mass, > 0.
    z : float or Tensor
        Redshift, a number or (B,) (the mass function scales as (1 + z)^½).
    amplitude, alpha, beta : float
        Mass-function parameters (Giocoli et al. 2010 by default).
    n_grid : int
        Trapezoid nodes in ln(m/M).

    Returns
    -------
    Tensor
        (B,) float64 expected counts (0 where M <= m_min).
    """
    _check_positive(host_mass, "host_mass", "subhalo_mean_number")
    m = host_mass.to(torch.float64)
    lo = torch.log(torch.as_tensor(m_min, dtype=torch.float64) / m).clamp(max=0.0)
    t = torch.linspace(0.0, 1.0, n_grid, dtype=torch.float64)
    lnx = lo[:, None] * (1.0 - t[None, :])  # from lo to 0
    f = _shmf_integrand(torch.exp(lnx), alpha, beta)
    integral = torch.trapezoid(f, lnx, dim=1)
    zz = torch.as_tensor(z, dtype=torch.float64)
    return amplitude * torch.sqrt(1.0 + zz) * integral


def draw_subhalo_masses(
    host_mass: Tensor,
    m_min: float,
    z: float | Tensor,
    generator: torch.Generator,
    amplitude: float = GIOCOLI10[0],
    alpha: float = GIOCOLI10[1],
    beta: float = GIOCOLI10[2],
    max_per_halo: int = 20000,
) -> tuple[Tensor, Tensor]:
    """Poisson-sample subhalo masses from the Giocoli et al. (2010) mass function.

    N ~ Poisson(:func:`subhalo_mean_number`); each mass by rejection from the pure power law
    (m/M)^α on [m_min/M, 1] (inverse CDF) accepted with probability exp(−β (m/M)³).

    Returns
    -------
    tuple of Tensor
        ``(masses, owner)``: flat float64 subhalo masses (M_sun / h) and the int64 index of
        the host each belongs to, sorted by host.
    """
    mean = subhalo_mean_number(host_mass, m_min, z, amplitude, alpha, beta)
    counts = torch.poisson(mean, generator=generator).to(torch.int64).clamp(max=max_per_halo)
    owner = torch.repeat_interleave(torch.arange(len(host_mass)), counts)
    total = int(counts.sum())
    xmin = (m_min / host_mass.to(torch.float64)).clamp(max=1.0)[owner]
    out = torch.empty(total, dtype=torch.float64)
    todo = torch.arange(total)
    p = alpha  # power of x in dN/dx ∝ x^(alpha - 1)
    while len(todo):
        u = torch.rand(len(todo), generator=generator, dtype=torch.float64)
        lo = xmin[todo] ** p
        x = (lo + u * (1.0 - lo)) ** (1.0 / p)  # inverse CDF of x^(alpha-1) on [xmin, 1]
        keep = torch.rand(len(todo), generator=generator, dtype=torch.float64) < torch.exp(
            -beta * x**3
        )
        out[todo[keep]] = x[keep]
        todo = todo[~keep]
    return out * host_mass.to(torch.float64)[owner], owner


def subhalo_radial_cdf(x: Tensor, concentration: Tensor) -> Tensor:
    """N(<x) / N_v = (1 + a c) x^β / (1 + a c x^α) (paper eq. 5), x = r / R_vir in [0, 1]."""
    a, al, be = GAO04_RADIAL
    ac = a * concentration
    return (1.0 + ac) * x**be / (1.0 + ac * x**al)


def draw_subhalo_radii(
    concentration: Tensor, generator: torch.Generator, iterations: int = 48
) -> Tensor:
    """3-d distances x = r / R_vir in (0, 1] from eq. 5, one per entry of ``concentration``.

    The CDF is increasing in x on [0, 1]; it is inverted by bisection (``iterations`` halvings,
    2⁻⁴⁸ precision).
    """
    c = concentration.to(torch.float64)
    u = torch.rand(c.shape, generator=generator, dtype=torch.float64)
    lo = torch.zeros_like(u)
    hi = torch.ones_like(u)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = subhalo_radial_cdf(mid, c) < u
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def isotropic_directions(n: int, generator: torch.Generator) -> Tensor:
    """(n, 3) unit vectors uniform on the sphere (float64)."""
    v = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True).clamp(min=1e-300)


def subhalo_truncation_radius(
    sub_mass: Tensor,
    distance_rvir: Tensor,
    host_mass: Tensor,
    host_concentration: Tensor,
) -> Tensor:
    """Truncation radius of each subhalo in units of the host R_vir (see module docstring).

    r_t = min(d (m / (3 M_host(<d)))^⅓, (2/π) (m / M)^⅓) with d = r / R_vir and
    M_host(<d) = M μ(c d) / μ(c); the second term is (2/π) r_Δ(m) / R_vir for the same
    overdensity Δ. All inputs are flat tensors of equal length (host values already
    gathered per subhalo); masses in any common unit.
    """
    ratio = sub_mass / host_mass
    d = distance_rvir.clamp(min=1e-4)
    m_in = (
        host_mass
        * nfw_mass_fraction(host_concentration * d)
        / nfw_mass_fraction(host_concentration)
    )
    tidal = d * (sub_mass / (3.0 * m_in)) ** (1.0 / 3.0)
    isolated = (2.0 / math.pi) * ratio ** (1.0 / 3.0)
    return torch.minimum(tidal, isolated)
