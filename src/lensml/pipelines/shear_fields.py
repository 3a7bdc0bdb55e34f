"""Smoothed shear fields from a source catalogue: maps, bootstrap errors, scatter, plots, FITS.

Paper: the CNN shear estimator paper (``shared/papers/cnn-shear-estimator-clash.txt``), §6,
eqs. 18–23.

Smoothed field (eqs. 18–20)
---------------------------
From sources ``j = 1..N`` at positions θ_j = (x_j, y_j) with shear estimates ĝ_i^(j)
(``i = 1, 2``) the field at θ is the Gaussian kernel regression

    g_i,λ(θ) = Σ_j w_j S_λ(θ − θ_j) ĝ_i^(j) / Σ_j w_j S_λ(θ − θ_j),
    S_λ(θ) ∝ exp(−|θ|² / 2λ²),

with optional per-source weights ``w_j`` (default 1). Eq. 18 as printed is the bare sum
Σ_j ĝ^(j) δ(θ − θ_j) ∗ S_λ; it only has the units and scale of a shear once divided by the
same sum over the sources (Σ_j S_λ(θ − θ_j)), which is what the paper's title for §6.1
("smooth field regression") and its released analysis code do. With the division, eq. 19's
prefactor 1/(√(2π) λ) cancels. λ and all positions share one unit — arcsec, or pixels of the
image the catalogue refers to — the functions never mix them.

Next to the maps come

* ``n_eff = (Σ_j w_j S_j)² / Σ_j (w_j S_j)²`` (S_j = S_λ(θ − θ_j)), the Kish effective
  number of sources: for independent estimates of equal variance σ², Var(g_λ) = σ² / n_eff;
* ``density = Σ_j w_j exp(−|θ − θ_j|² / 2λ²) / (2πλ²)``, the smoothed (weighted) number of
  sources per unit area (arcsec⁻² or pixel⁻²).

Grid points with ``n_eff < min_n_eff`` (or no source within reach of the kernel) are NaN.

Errors and scatter decomposition (eqs. 21–23)
---------------------------------------------
:func:`bootstrap_field_errors` resamples the sources with replacement ``n_boot`` times
(the paper uses 100) and returns the per-pixel standard deviation of the replicate fields.
:func:`scatter_decomposition` splits each cluster's sources at random into a hold-out set
S_k (a fraction ``holdout``, the paper's 50 %) and its complement, builds the field
g^{S_k}_λ from the complement and evaluates, per component i,

    σ²_field-source = E_k E_{j∈S_k} (g^{S_k}_λ(θ_j) − ĝ^(j))²        (eq. 21)
    σ²_field        = E_k E_{j∈S_k} Var_boot(g^{S_k}_λ(θ_j))           (eq. 22)
    σ²_source       = σ²_field-source − σ²_field                      (eq. 23)

σ²_source is the per-source statistical error (shape noise plus measurement noise).

Public API: :func:`smooth_shear_field`, :func:`smooth_shear_at`, :func:`field_grid`,
:func:`bootstrap_field_errors`, :func:`scatter_decomposition`, :func:`whisker_segments`,
:func:`plot_whiskers`, :func:`write_field_fits`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from astropy.wcs import WCS

__all__ = [
    "ScatterDecomposition",
    "ShearField",
    "bootstrap_field_errors",
    "field_grid",
    "plot_whiskers",
    "scatter_decomposition",
    "smooth_shear_at",
    "smooth_shear_field",
    "whisker_segments",
    "write_field_fits",
]

#: Number of float64 kernel entries evaluated at once (32 MiB); the grid is chunked to fit.
_KERNEL_BUDGET = 1 << 22


@dataclass(frozen=True)
class ShearField:
    """A smoothed shear field on a grid: maps ``(H, W)``, pixel ``[i, j]`` at ``(x[j], y[i])``.

    Attributes
    ----------
    g1, g2 : numpy.ndarray
        Smoothed reduced-shear components (NaN where ``n_eff < min_n_eff``).
    n_eff : numpy.ndarray
        Effective number of sources per grid point, (Σ wS)² / Σ (wS)².
    density : numpy.ndarray
        Smoothed source density (weighted sources per unit area of the position unit).
    x, y : numpy.ndarray
        Grid axes, (W,) and (H,), in the unit of the source positions.
    scale : float
        Smoothing length λ, same unit.
    n_sources : int
        Number of sources used.
    sigma_g1, sigma_g2 : numpy.ndarray or None
        Bootstrap standard errors (:func:`bootstrap_field_errors`), when attached.
    n_boot : int
        Number of bootstrap replicates behind ``sigma_*`` (0 when absent).
    """

    g1: np.ndarray
    g2: np.ndarray
    n_eff: np.ndarray
    density: np.ndarray
    x: np.ndarray
    y: np.ndarray
    scale: float
    n_sources: int
    sigma_g1: np.ndarray | None = None
    sigma_g2: np.ndarray | None = None
    n_boot: int = 0

    def with_errors(self, sigma_g1: np.ndarray, sigma_g2: np.ndarray, n_boot: int) -> ShearField:
        """A copy carrying bootstrap error maps (shape ``(H, W)`` each)."""
        for name, s in (("sigma_g1", sigma_g1), ("sigma_g2", sigma_g2)):
            if np.shape(s) != self.g1.shape:
                raise ValueError(
                    f"{name} must have the map shape {self.g1.shape}, got {np.shape(s)}"
                )
        return replace(self, sigma_g1=np.asarray(sigma_g1), sigma_g2=np.asarray(sigma_g2),
                       n_boot=int(n_boot))  # fmt: skip


# ----------------------------------------------------------------------------- validation
def _vector(name: str, value: Any, n: int | None = None) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name!r} must be numeric, got {type(value).__name__}") from None
    if a.ndim != 1:
        raise ValueError(f"{name!r} must be 1-d, got shape {a.shape}")
    if n is not None and a.size != n:
        raise ValueError(f"{name!r} must have {n} entries like 'x', got {a.size}")
    bad = ~np.isfinite(a)
    if bad.any():
        raise ValueError(f"{name!r} has {int(bad.sum())} NaN/inf values; drop those sources first")
    return a


def _catalogue(x: Any, y: Any, g1: Any, g2: Any, weights: Any) -> tuple[np.ndarray, ...]:
    xs = _vector("x", x)
    if xs.size == 0:
        raise ValueError("'x' is empty: a shear field needs at least one source")
    n = xs.size
    ys, a1, a2 = (_vector(k, v, n) for k, v in (("y", y), ("g1", g1), ("g2", g2)))
    w = np.ones(n) if weights is None else _vector("weights", weights, n)
    if (w < 0).any() or not (w > 0).any():
        raise ValueError("'weights' must be >= 0 with at least one > 0")
    return xs, ys, a1, a2, w


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"{name!r} must be a finite number > 0, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name!r} must be a finite number > 0, got {value!r}")
    return float(value)


def _generator(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"'rng' must be a numpy.random.Generator (np.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )
    return rng


# ----------------------------------------------------------------------------- kernel sums
def _kernel_sums(
    xs: np.ndarray,
    ys: np.ndarray,
    columns: np.ndarray,
    xe: np.ndarray,
    ye: np.ndarray,
    scale: float,
    columns_sq: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Kernel sums at the points ``(xe, ye)`` for every column of ``columns`` (N, C).

    Returns ``(K @ columns, K² @ columns_sq, shift)`` (the second None without
    ``columns_sq``) with ``K = exp(−(d² − d²_min) / 2λ²)``: each point's kernel is divided
    by its value at the nearest source (``exp(−shift)``), so ratios stay finite far from
    every source; multiply by ``exp(−shift)`` to undo.
    """
    m, n = xe.size, xs.size
    out1 = np.empty((m, columns.shape[1]))
    out2 = None if columns_sq is None else np.empty((m, columns_sq.shape[1]))
    shift = np.empty(m)
    step = max(1, _KERNEL_BUDGET // max(n, 1))
    inv = 0.5 / (scale * scale)
    for a in range(0, m, step):
        b = min(m, a + step)
        d2 = (xe[a:b, None] - xs[None, :]) ** 2
        d2 += (ye[a:b, None] - ys[None, :]) ** 2
        d2 *= inv
        low = d2.min(axis=1)
        d2 -= low[:, None]
        np.exp(-d2, out=d2)
        shift[a:b] = low
        out1[a:b] = d2 @ columns
        if out2 is not None:
            d2 *= d2
            out2[a:b] = d2 @ columns_sq
    return out1, out2, shift


def _field_from_sums(
    s: np.ndarray, min_n_eff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """g1, g2, n_eff, rows-with-support from sums over columns (w, w g1, w g2, w²)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        g1 = s[0] / s[1]
        g2 = s[2] / s[1]
        n_eff = np.where(s[1] > 0, s[1] ** 2 / s[3], 0.0)
    ok = (s[1] > 0) & (n_eff >= min_n_eff)
    return np.where(ok, g1, np.nan), np.where(ok, g2, np.nan), n_eff, ok


def _smooth_points(
    xs: np.ndarray,
    ys: np.ndarray,
    a1: np.ndarray,
    a2: np.ndarray,
    w: np.ndarray,
    xe: np.ndarray,
    ye: np.ndarray,
    scale: float,
    min_n_eff: float,
) -> tuple[np.ndarray, ...]:
    cols = np.stack([w * a1, w, w * a2], axis=1)
    k1, k2, shift = _kernel_sums(xs, ys, cols, xe, ye, scale, (w * w)[:, None])
    s = np.stack([k1[:, 0], k1[:, 1], k1[:, 2], k2[:, 0]])
    g1, g2, n_eff, _ = _field_from_sums(s, min_n_eff)
    density = k1[:, 1] * np.exp(-shift) / (2.0 * math.pi * scale * scale)
    return g1, g2, n_eff, density


def _bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(N, B) multiplicity of each source in each replicate (N draws with replacement)."""
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n)
    return counts.reshape(n_boot, n).T.astype(np.float64)


def _bootstrap_points(
    xs: np.ndarray,
    ys: np.ndarray,
    a1: np.ndarray,
    a2: np.ndarray,
    w: np.ndarray,
    counts: np.ndarray,
    xe: np.ndarray,
    ye: np.ndarray,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Replicate fields (B, M) of both components for the multiplicities ``counts`` (N, B)."""
    n_boot = counts.shape[1]
    cw = counts * w[:, None]
    cols = np.concatenate([cw, cw * a1[:, None], cw * a2[:, None]], axis=1)
    k, _, _ = _kernel_sums(xs, ys, cols, xe, ye, scale)
    den, num1, num2 = k[:, :n_boot], k[:, n_boot : 2 * n_boot], k[:, 2 * n_boot :]
    with np.errstate(invalid="ignore", divide="ignore"):
        r1 = np.where(den > 0, num1 / den, np.nan)
        r2 = np.where(den > 0, num2 / den, np.nan)
    return r1.T, r2.T


def _bootstrap_std(
    xs: np.ndarray,
    ys: np.ndarray,
    a1: np.ndarray,
    a2: np.ndarray,
    w: np.ndarray,
    counts: np.ndarray,
    xe: np.ndarray,
    ye: np.ndarray,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap standard deviations (M,) of both components, chunked over the points."""
    s1, s2 = np.empty(xe.size), np.empty(xe.size)
    step = max(1, _KERNEL_BUDGET // (3 * counts.shape[1]))  # bounds the (points, 3B) sums
    for a in range(0, xe.size, step):
        b = min(xe.size, a + step)
        r1, r2 = _bootstrap_points(xs, ys, a1, a2, w, counts, xe[a:b], ye[a:b], scale)
        s1[a:b], s2[a:b] = _replicate_std(r1), _replicate_std(r2)
    return s1, s2


def _replicate_std(r: np.ndarray) -> np.ndarray:
    """Standard deviation over replicates (axis 0, ddof = 1), NaN-aware, NaN below 2 values."""
    good = np.isfinite(r)
    k = good.sum(axis=0)
    z = np.where(good, r, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = z.sum(axis=0) / k
        var = np.where(good, (z - mean) ** 2, 0.0).sum(axis=0) / (k - 1)
    return np.where(k >= 2, np.sqrt(var), np.nan)


def _axis(name: str, value: Any) -> np.ndarray:
    a = _vector(name, value)
    if a.size == 0:
        raise ValueError(f"{name!r} must have at least one grid point")
    return a


# ----------------------------------------------------------------------------- public maps
def field_grid(
    extent: tuple[float, float, float, float], spacing: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres of a regular grid covering ``extent = (x_min, x_max, y_min, y_max)``.

    Each axis gets ``ceil((max − min) / spacing)`` (at least 1) cells of side ``spacing``
    starting at ``min``; the centres are ``min + (k + ½) spacing``. For an image of ``W × H``
    pixels and 0-based pixel positions use ``extent = (−0.5, W − 0.5, −0.5, H − 0.5)``.

    Returns
    -------
    grid_x, grid_y : numpy.ndarray
        (W,) and (H,) axes in the unit of ``extent``.
    """
    spacing = _positive("spacing", spacing)
    if len(extent) != 4 or not all(math.isfinite(float(v)) for v in extent):
        raise ValueError(
            f"'extent' must be 4 finite numbers (x_min, x_max, y_min, y_max), got {extent!r}"
        )
    x0, x1, y0, y1 = (float(v) for v in extent)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"'extent' must have x_max > x_min and y_max > y_min, got {extent!r}")
    nx = max(1, math.ceil((x1 - x0) / spacing - 1e-9))
    ny = max(1, math.ceil((y1 - y0) / spacing - 1e-9))
    return x0 + (np.arange(nx) + 0.5) * spacing, y0 + (np.arange(ny) + 0.5) * spacing


def smooth_shear_at(
    x: Any,
    y: Any,
    g1: Any,
    g2: Any,
    x_eval: Any,
    y_eval: Any,
    scale: float,
    weights: Any = None,
    *,
    min_n_eff: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smoothed field (eqs. 18–19, normalised; see module docstring) at arbitrary points.

    Parameters
    ----------
    x, y : array-like (N,)
        Source positions (arcsec or pixels; the unit of ``scale``).
    g1, g2 : array-like (N,)
        Per-source reduced-shear estimates.
    x_eval, y_eval : array-like (M,)
        Evaluation points, same unit.
    scale : float
        Smoothing length λ > 0.
    weights : array-like (N,), optional
        Per-source weights >= 0 (e.g. inverse variance); default 1.
    min_n_eff : float
        Points with fewer effective sources are NaN (default 0: only points no source
        reaches).

    Returns
    -------
    g1, g2, n_eff : numpy.ndarray (M,)
    """
    xs, ys, a1, a2, w = _catalogue(x, y, g1, g2, weights)
    xe = _vector("x_eval", x_eval)
    ye = _vector("y_eval", y_eval, xe.size)
    scale = _positive("scale", scale)
    f1, f2, n_eff, _ = _smooth_points(xs, ys, a1, a2, w, xe, ye, scale, float(min_n_eff))
    return f1, f2, n_eff


def smooth_shear_field(
    x: Any,
    y: Any,
    g1: Any,
    g2: Any,
    grid_x: Any,
    grid_y: Any,
    scale: float,
    weights: Any = None,
    *,
    min_n_eff: float = 0.0,
) -> ShearField:
    """Gaussian-smoothed shear maps g_i,λ on a grid (eqs. 18–19, normalised) with n_eff.

    Parameters
    ----------
    x, y : array-like (N,)
        Source positions, in arcsec or in image pixels (0-based); ``grid_*`` and ``scale``
        use the same unit.
    g1, g2 : array-like (N,)
        Per-source reduced-shear estimates (GalSim signs: g1 > 0 stretches along x).
    grid_x, grid_y : array-like (W,), (H,)
        Grid axes; map pixel ``[i, j]`` is at ``(grid_x[j], grid_y[i])`` (y up).
    scale : float
        Smoothing length λ > 0 (the Gaussian σ of eq. 19). The paper uses λ = 19.5″.
    weights : array-like (N,), optional
        Per-source weights >= 0; default 1 (the paper's unweighted sum).
    min_n_eff : float
        Grid points with ``n_eff < min_n_eff`` are NaN (default 0).

    Returns
    -------
    ShearField
        ``g1, g2, n_eff, density`` maps ``(H, W)``. Cost O(N · H · W), chunked over the grid
        so at most ~4 M kernel values (32 MiB) are held at once.
    """
    xs, ys, a1, a2, w = _catalogue(x, y, g1, g2, weights)
    gx, gy = _axis("grid_x", grid_x), _axis("grid_y", grid_y)
    scale = _positive("scale", scale)
    xe, ye = np.meshgrid(gx, gy)
    f1, f2, n_eff, density = _smooth_points(
        xs, ys, a1, a2, w, xe.ravel(), ye.ravel(), scale, float(min_n_eff)
    )
    shape = (gy.size, gx.size)
    return ShearField(
        g1=f1.reshape(shape), g2=f2.reshape(shape), n_eff=n_eff.reshape(shape),
        density=density.reshape(shape), x=gx, y=gy, scale=scale, n_sources=xs.size,
    )  # fmt: skip


def bootstrap_field_errors(
    x: Any,
    y: Any,
    g1: Any,
    g2: Any,
    grid_x: Any,
    grid_y: Any,
    scale: float,
    *,
    n_boot: int = 100,
    rng: np.random.Generator,
    weights: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel bootstrap standard errors of the smoothed maps (the paper's §6.1, 100 draws).

    Each replicate resamples the N sources with replacement (their positions, shears and
    weights together) and re-smooths; the error is the standard deviation (ddof = 1) of the
    replicates at each grid point. For N independent estimates of variance σ² the result
    approaches σ / √n_eff.

    Parameters
    ----------
    x, y, g1, g2, grid_x, grid_y, scale, weights
        As in :func:`smooth_shear_field`.
    n_boot : int
        Number of bootstrap replicates, >= 2.
    rng : numpy.random.Generator
        Source of the resampling (seeded by the caller).

    Returns
    -------
    sigma_g1, sigma_g2 : numpy.ndarray (H, W)
        NaN where fewer than two replicates reach the point.
    """
    xs, ys, a1, a2, w = _catalogue(x, y, g1, g2, weights)
    gx, gy = _axis("grid_x", grid_x), _axis("grid_y", grid_y)
    scale = _positive("scale", scale)
    n_boot = _n_boot(n_boot)
    rng = _generator(rng)
    xe, ye = np.meshgrid(gx, gy)
    shape = (gy.size, gx.size)
    counts = _bootstrap_counts(xs.size, n_boot, rng)
    s1, s2 = _bootstrap_std(xs, ys, a1, a2, w, counts, xe.ravel(), ye.ravel(), scale)
    return s1.reshape(shape), s2.reshape(shape)


def _n_boot(n_boot: Any) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 2:
        raise ValueError(f"'n_boot' must be an integer >= 2, got {n_boot!r}")
    return int(n_boot)


# ----------------------------------------------------------------------------- eqs. 21-23
@dataclass(frozen=True)
class ScatterDecomposition:
    """Field–source scatter decomposition (eqs. 21–23); every array is ``(2,)`` = (g1, g2).

    Attributes
    ----------
    field_source : numpy.ndarray
        σ²_field-source, eq. 21: mean squared difference between the held-in field at each
        held-out source and that source's estimate.
    field : numpy.ndarray
        σ²_field, eq. 22: mean bootstrap variance of the held-in field at the held-out
        positions.
    source : numpy.ndarray
        σ²_source = σ²_field-source − σ²_field, eq. 23: per-source variance (shape noise +
        measurement noise). ``field + source`` equals ``field_source`` by definition.
    total : numpy.ndarray
        Variance of the held-out estimates about their mean (ddof = 1): the whole scatter of
        the catalogue, signal included.
    signal : numpy.ndarray
        Variance of the held-in field across the held-out positions minus its noise σ²_field:
        the variance of the (smoothed) shear signal itself. ``signal + source`` should equal
        ``total`` within the statistical errors (an independent closure check), lower by the
        signal power the smoothing removes.
    field_source_err : numpy.ndarray
        Standard error of ``field_source`` (scatter of the squared differences / √n).
    n_holdout, n_holdin : int
        Held-out and held-in sources over all groups.
    n_dropped : int
        Held-out sources left out because the field was undefined there (n_eff < min_n_eff).
    n_groups : int
        Number of clusters (groups) k averaged over.
    scale : float
        Smoothing length λ.
    n_boot : int
        Bootstrap replicates per group.
    """

    field_source: np.ndarray
    field: np.ndarray
    source: np.ndarray
    total: np.ndarray
    signal: np.ndarray
    field_source_err: np.ndarray
    n_holdout: int
    n_holdin: int
    n_dropped: int
    n_groups: int
    scale: float
    n_boot: int

    @property
    def sigma_source(self) -> np.ndarray:
        """√σ²_source per component (the paper's per-source RMS error, e.g. 0.227 for the CNN)."""
        return np.sqrt(np.clip(self.source, 0.0, None))


def scatter_decomposition(
    x: Any,
    y: Any,
    g1: Any,
    g2: Any,
    scale: float,
    rng: np.random.Generator,
    holdout: float = 0.5,
    *,
    n_boot: int = 100,
    weights: Any = None,
    groups: Any = None,
    min_n_eff: float = 0.0,
) -> ScatterDecomposition:
    """Split field noise from per-source noise with a random hold-out (eqs. 21–23).

    For each group k (a cluster; one group when ``groups`` is None) a random
    ``round(holdout · n_k)`` of its sources form the hold-out set S_k; the field smoothed
    at λ = ``scale`` from the rest is compared with the held-out estimates (eq. 21) and
    bootstrapped ``n_boot`` times over the held-in sources (eq. 22); eq. 23 subtracts the
    two. Per-group means are averaged with equal weight over groups (the paper's E_k).

    Parameters
    ----------
    x, y, g1, g2, scale, weights
        As in :func:`smooth_shear_field` (positions and λ in one unit).
    rng : numpy.random.Generator
        Draws the hold-out split and the bootstrap replicates.
    holdout : float
        Fraction held out, in (0, 1); the paper uses 0.5.
    n_boot : int
        Bootstrap replicates (>= 2; the paper uses 100).
    groups : array-like (N,), optional
        Cluster label of each source; the split and the fields are per cluster.
    min_n_eff : float
        Held-out sources where the held-in field has fewer effective sources are dropped.

    Returns
    -------
    ScatterDecomposition

    Raises
    ------
    ValueError
        For bad inputs, or a group too small to split (needs >= 1 source on each side).
    """
    xs, ys, a1, a2, w = _catalogue(x, y, g1, g2, weights)
    scale = _positive("scale", scale)
    rng = _generator(rng)
    n_boot = _n_boot(n_boot)
    if not (isinstance(holdout, int | float) and 0.0 < float(holdout) < 1.0):
        raise ValueError(f"'holdout' must be a fraction in (0, 1), got {holdout!r}")
    if groups is None:
        labels, inverse = np.zeros(1), np.zeros(xs.size, dtype=np.int64)
    else:
        g = np.asarray(groups)
        if g.shape != (xs.size,):
            raise ValueError(f"'groups' must have one label per source ({xs.size}), got {g.shape}")
        labels, inverse = np.unique(g, return_inverse=True)
    keys = ("field_source", "fs_err2", "field", "total", "signal")
    per: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    n_out_all = n_in_all = dropped = 0
    for k, label in enumerate(labels.tolist()):
        members = np.flatnonzero(inverse == k)
        n_out = round(float(holdout) * members.size)
        if not 1 <= n_out <= members.size - 1:
            raise ValueError(
                f"group {label!r} has {members.size} sources: holdout={holdout} leaves "
                f"{n_out} held out and {members.size - n_out} held in (need >= 1 each)"
            )
        perm = rng.permutation(members)
        out, inn = perm[:n_out], perm[n_out:]
        src = (xs[inn], ys[inn], a1[inn], a2[inn], w[inn])
        f1, f2, _, _ = _smooth_points(*src, xs[out], ys[out], scale, float(min_n_eff))
        counts = _bootstrap_counts(inn.size, n_boot, rng)
        s1, s2 = _bootstrap_std(*src, counts, xs[out], ys[out], scale)
        ok = np.isfinite(f1) & np.isfinite(s1) & np.isfinite(s2)
        dropped += int((~ok).sum())
        if ok.sum() < 2:
            raise ValueError(
                f"group {label!r}: fewer than 2 held-out sources have a defined field "
                f"(scale={scale}, min_n_eff={min_n_eff})"
            )
        field = np.stack([f1[ok], f2[ok]])
        est = np.stack([a1[out][ok], a2[out][ok]])
        var_f = np.stack([s1[ok], s2[ok]]) ** 2
        r2 = (field - est) ** 2
        per["field_source"].append(r2.mean(axis=1))
        per["fs_err2"].append(r2.var(axis=1, ddof=1) / r2.shape[1])
        per["field"].append(var_f.mean(axis=1))
        per["total"].append(est.var(axis=1, ddof=1))
        per["signal"].append(field.var(axis=1, ddof=1) - var_f.mean(axis=1))
        n_out_all += out.size
        n_in_all += inn.size
    mean = {k: np.mean(v, axis=0) for k, v in per.items()}
    return ScatterDecomposition(
        field_source=mean["field_source"],
        field=mean["field"],
        source=mean["field_source"] - mean["field"],
        total=mean["total"],
        signal=mean["signal"],
        field_source_err=np.sqrt(np.sum(per["fs_err2"], axis=0)) / len(labels),
        n_holdout=n_out_all,
        n_holdin=n_in_all,
        n_dropped=dropped,
        n_groups=len(labels),
        scale=scale,
        n_boot=n_boot,
    )


# ----------------------------------------------------------------------------- whisker plots
def whisker_segments(x: Any, y: Any, g1: Any, g2: Any, length_per_shear: float) -> np.ndarray:
    """Stick end points ``(M, 2, 2)`` (``[k, end, (x, y)]``) for a whisker plot of a shear field.

    A stick is centred on its point, has length ``length_per_shear · |g|`` and position
    angle φ = ½ atan2(g2, g1) counter-clockwise from +x (x right, y up): g1 > 0 gives a
    stick along x, g2 > 0 one along the diagonal x = y — the orientation of the image
    stretch (GalSim signs). Points with a non-finite shear are skipped.
    """
    a = [np.asarray(v, dtype=np.float64).ravel() for v in (x, y, g1, g2)]
    if len({v.size for v in a}) != 1:
        raise ValueError(f"x, y, g1, g2 must have equal sizes, got {[v.size for v in a]}")
    length_per_shear = _positive("length_per_shear", length_per_shear)
    px, py, s1, s2 = a
    keep = np.isfinite(s1) & np.isfinite(s2) & np.isfinite(px) & np.isfinite(py)
    px, py, s1, s2 = px[keep], py[keep], s1[keep], s2[keep]
    phi = 0.5 * np.arctan2(s2, s1)
    half = 0.5 * length_per_shear * np.hypot(s1, s2)
    dx, dy = half * np.cos(phi), half * np.sin(phi)
    return np.stack([np.stack([px - dx, py - dy], -1), np.stack([px + dx, py + dy], -1)], 1)


def plot_whiskers(
    field: ShearField,
    path: str | os.PathLike,
    *,
    step: int = 1,
    length_per_shear: float | None = None,
    background: Any = None,
    background_extent: tuple[float, float, float, float] | None = None,
    reference_shear: float = 0.1,
    color: str = "C3",
    cmap: str = "gray_r",
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Whisker plot of a smoothed shear field (the paper's Fig. 17), saved as PNG atomically.

    Parameters
    ----------
    field : ShearField
        From :func:`smooth_shear_field`.
    path : path-like
        Output PNG (its directory is created).
    step : int
        Draw a stick at every ``step``-th grid point along each axis (>= 1).
    length_per_shear : float, optional
        Stick length per unit |g|, in the position unit. Default: the 95th percentile of
        the |g| drawn spans 0.9 grid steps (robust to a diverging centre).
    background : array-like (H', W'), optional
        Image drawn below (``origin="lower"``), e.g. the cluster image.
    background_extent : (x_min, x_max, y_min, y_max), optional
        Where the background's outer pixel edges lie in the position unit. Default
        ``(−0.5, W' − 0.5, −0.5, H' − 0.5)``: positions are 0-based pixels of that image.
    reference_shear : float
        Length of the reference stick drawn in the lower-left corner (|g|, > 0).
    color, cmap, title, dpi
        Matplotlib styling.

    Returns
    -------
    pathlib.Path
    """
    from lensml.plots import _pyplot, save_figure

    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"'step' must be an integer >= 1, got {step!r}")
    reference_shear = _positive("reference_shear", reference_shear)
    xe, ye = np.meshgrid(field.x[::step], field.y[::step])
    s1, s2 = field.g1[::step, ::step], field.g2[::step, ::step]
    spacing = [np.diff(a[::step]).min() for a in (field.x, field.y) if a[::step].size > 1]
    cell = min(spacing) if spacing else 2.0 * field.scale
    if length_per_shear is None:
        mag = np.hypot(s1, s2)
        gmax = np.nanpercentile(mag, 95.0) if np.isfinite(mag).any() else 0.0
        length_per_shear = 0.9 * cell / gmax if gmax > 0 else cell / reference_shear
    seg = whisker_segments(xe, ye, s1, s2, length_per_shear)

    plt = _pyplot()
    from matplotlib.collections import LineCollection

    aspect = np.ptp(field.y) / np.ptp(field.x) if field.x.size > 1 and field.y.size > 1 else 1.0
    fig, ax = plt.subplots(figsize=(6.4, 6.4 * min(3.0, max(0.3, aspect))))
    if background is not None:
        bg = np.asarray(
            background.detach().cpu() if hasattr(background, "detach") else background,
            dtype=np.float64,
        )
        if bg.ndim != 2:
            raise ValueError(f"'background' must be a 2-d image, got shape {bg.shape}")
        ext = background_extent or (-0.5, bg.shape[1] - 0.5, -0.5, bg.shape[0] - 0.5)
        finite = bg[np.isfinite(bg)]
        lo, hi = np.percentile(finite, [1.0, 99.5]) if finite.size else (0.0, 1.0)
        ax.imshow(bg, origin="lower", extent=ext, cmap=cmap, vmin=lo, vmax=hi)
    ax.add_collection(LineCollection(seg, colors=color, linewidths=1.5))
    ref_len = reference_shear * length_per_shear
    x0 = field.x.min() - 0.5 * cell
    y0 = field.y.min() - 0.5 * cell
    ax.plot([x0, x0 + ref_len], [y0, y0], color="k", lw=2.5)
    ax.text(x0 + ref_len + 0.2 * cell, y0, f"|g| = {reference_shear:g}", fontsize=8, va="center")
    pad = 0.6 * cell
    ax.set_xlim(field.x.min() - pad, max(field.x.max(), x0 + ref_len) + pad)
    ax.set_ylim(field.y.min() - pad - 0.5 * cell, field.y.max() + pad)
    ax.set_aspect("equal")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title or f"smoothed shear, λ = {field.scale:g}, {field.n_sources} sources")
    return save_figure(fig, path, dpi=dpi)


# ----------------------------------------------------------------------------- FITS output
def _regular(name: str, a: np.ndarray) -> float:
    if a.size == 1:
        return 1.0
    d = np.diff(a)
    if not (d > 0).all() or np.ptp(d) > 1e-6 * abs(d.mean()):
        raise ValueError(f"field axis {name!r} must be evenly spaced and increasing to get a WCS")
    return float(d.mean())


def _field_wcs_cards(field: ShearField, wcs: WCS | None, center_radec: Any) -> dict[str, Any]:
    """Celestial WCS of the field maps plus a linear alternate WCS 'A' with the grid coordinates."""
    dx, dy = _regular("x", field.x), _regular("y", field.y)
    x0, y0 = float(field.x[0]), float(field.y[0])
    cards: dict[str, Any] = {}
    if wcs is None:
        ra, dec = (
            (0.0, 0.0) if center_radec is None else (float(center_radec[0]), float(center_radec[1]))
        )
        cards.update({
            "WCSAXES": 2, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
            "CRPIX1": (1.0 - x0 / dx, "map pixel (1-based) of x = 0"),
            "CRPIX2": (1.0 - y0 / dy, "map pixel (1-based) of y = 0"),
            "CRVAL1": (ra, "[deg]"), "CRVAL2": (dec, "[deg]"),
            "CDELT1": (-dx / 3600.0, "[deg] x grows to the right, RA to the left"),
            "CDELT2": (dy / 3600.0, "[deg]"),
            "CUNIT1": "deg", "CUNIT2": "deg", "RADESYS": "ICRS",
        })  # fmt: skip
        unit = "arcsec"
    else:
        # map pixel q (1-based) is image pixel (0-based) x0 + dx (q - 1): scale and shift
        # the linear part of the image WCS (SIP / lookup-table distortions are not carried)
        w = wcs.celestial.deepcopy() if hasattr(wcs, "celestial") else wcs.deepcopy()
        w.sip = None
        core = w.wcs
        crpix = np.array(core.crpix, dtype=np.float64)
        crpix[0] = (crpix[0] - x0 - 1.0) / dx + 1.0
        crpix[1] = (crpix[1] - y0 - 1.0) / dy + 1.0
        core.crpix = crpix
        if core.has_cd():
            cd = np.array(core.cd, dtype=np.float64)
            core.cd = cd * np.array([dx, dy])[None, :]
        else:
            cdelt = np.array(core.cdelt, dtype=np.float64)
            pc = np.array(core.get_pc(), dtype=np.float64)
            core.pc = pc * np.array([dx, dy])[None, :]
            core.cdelt = cdelt
        for card in w.to_header(relax=False).cards:
            cards[card.keyword] = card.value
        unit = "pixel"
    cards.update({
        "WCSNAMEA": "GRID", "CTYPE1A": "X", "CTYPE2A": "Y",
        "CRPIX1A": 1.0, "CRPIX2A": 1.0, "CRVAL1A": x0, "CRVAL2A": y0,
        "CDELT1A": dx, "CDELT2A": dy,
    })  # fmt: skip
    cards["GRIDUNIT"] = (unit, "unit of WCS A: arcsec or 0-based pixel")
    return cards


def write_field_fits(
    path: str | os.PathLike,
    field: ShearField,
    *,
    wcs: WCS | None = None,
    center_radec: tuple[float, float] | None = None,
    header: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write the field maps as FITS image extensions with a WCS, atomically.

    Extensions ``G1``, ``G2``, ``N_EFF``, ``DENSITY`` and, when the field carries bootstrap
    errors, ``SIGMA_G1``, ``SIGMA_G2`` (NaN where the field is undefined). The primary HDU
    holds ``LAMBDA`` (smoothing length), ``NSOURCE``, ``NBOOT``, ``GRIDUNIT`` and ``header``.

    Each extension gets a celestial WCS and, as alternate WCS ``A``, the grid coordinates:

    * ``wcs=None``: the positions are arcsec in a local tangent frame (x right = −RA,
      y up = +Dec) about ``center_radec`` (degrees, default (0, 0)); a TAN WCS.
    * ``wcs`` given (``astropy.wcs.WCS`` of the image): the positions are 0-based pixels of
      that image and the maps get its linear WCS, shifted and scaled to the grid (SIP
      distortion terms are dropped).

    Raises
    ------
    ValueError
        Grid axes not evenly spaced; :class:`lensml.data.fits_io.FitsError` for an existing
        file with ``overwrite=False`` or a missing directory.
    """
    from astropy.io import fits

    from lensml import __version__
    from lensml.data.fits_io import write_hdulist_atomic

    if not isinstance(field, ShearField):
        raise ValueError(f"'field' must be a ShearField, got {type(field).__name__}")
    cards = _field_wcs_cards(field, wcs, center_radec)
    primary = fits.PrimaryHDU()
    primary.header["LENSMLV"] = (__version__, "lensml version that wrote this file")
    primary.header["LAMBDA"] = (field.scale, f"[{cards['GRIDUNIT'][0]}] smoothing length")
    primary.header["NSOURCE"] = (field.n_sources, "sources in the field")
    primary.header["NBOOT"] = (field.n_boot, "bootstrap replicates behind SIGMA_*")
    primary.header["GRIDUNIT"] = cards["GRIDUNIT"]
    for key, value in (header or {}).items():
        primary.header[key] = value
    maps = {"G1": field.g1, "G2": field.g2, "N_EFF": field.n_eff, "DENSITY": field.density}
    if field.sigma_g1 is not None and field.sigma_g2 is not None:
        maps.update({"SIGMA_G1": field.sigma_g1, "SIGMA_G2": field.sigma_g2})
    hdus = [primary]
    for name, data in maps.items():
        hdu = fits.ImageHDU(np.asarray(data, dtype=np.float32), name=name)
        for key, card in cards.items():
            hdu.header[key] = card
        hdus.append(hdu)
    return write_hdulist_atomic(fits.HDUList(hdus), Path(path), overwrite)
