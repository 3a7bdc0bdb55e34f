"""Parameter priors of the ``sersic`` generator: GaLNet's Table 1 and a COSMOS-seeded one.

Table 1 of Li et al. (2022, GaLNet), every distribution truncated to the table's range by
inverse-CDF sampling (exact, no rejection; ``u ~ U(0, 1)`` from the caller's generator):

=========  ==================================================  ==========================
label      distribution                                        range
=========  ==================================================  ==========================
x, y       normal(0, 0.15″)                                    −0.4″ … 0.4″
mag        exponential, density ∝ exp(mag_rate · mag)          17 … 22
r_eff      log10 r_eff ~ normal(−0.1, 0.4)                     0.2″ … 4″
q          uniform                                             0.2 … 1
pa         uniform (degrees, CCW from +x)                      0° … 180°
n          F distribution (d1 = 30, d2 = 5)                    0.1 … 8
=========  ==================================================  ==========================

Magnitudes: Table 1 says "exponential (s = 1)" without a direction.  ``mag_rate = +1 /
mag`` (the default) makes faint galaxies more common, as galaxy number counts do
(d log10 N / dm ≈ 0.35–0.45 at r = 17–22, i.e. a rate of 0.8–1.0 per mag; e.g. Yasuda et
al. 2001, AJ 122, 1104), and as the paper's aim to "mimic the observed parameter
distributions" requires; the S/N > 50 selection then removes the faintest extended
galaxies.  ``mag_rate = 0`` gives a uniform distribution, a negative rate favours bright
galaxies.

COSMOS prior (``prior="cosmos"``): (n, q, r_eff) are resampled jointly from the single-Sérsic
fits of real HST/ACS COSMOS galaxies (GalSim's ``real_galaxy_catalog_23.5_example_fits``,
column ``sersicfit``, whose order GalSim's ``COSMOSCatalog._buildParametric`` documents as
[I_e, r_eff along the major axis in 0.03″ pixels, n, q, boxiness, x0, y0, φ]; the file's
``hlr[:, 0]`` equals ``sersicfit[1] × 0.03″ × √q``, the circularised radius, which the
tests check).  Only rows with ``viable_sersic = 1`` are used.  A Gaussian kernel-density
estimate in (ln n, ln r_eff, logit q) with the data covariance times ``bandwidth²``
(default Scott's factor N^(−1/7), as :class:`scipy.stats.gaussian_kde`) jitters the 100
real galaxies into a continuous prior that keeps their n–q–size correlations;
``r_eff`` is multiplied by ``cosmos_reff_scale`` (default 1: these COSMOS galaxies have
F814W = 17–22.5, the magnitudes of the Table-1 targets, so their angular sizes apply
as they are; r-band sizes are a few per cent larger than i-band ones) and draws
outside the Table-1 ranges of n, q and r_eff are redrawn.  Positions, magnitudes and
position angles keep the Table-1 priors.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "COSMOS_PIXEL_SCALE",
    "DEFAULT_COSMOS_CATALOGS",
    "LABELS",
    "cosmos_shapes",
    "draw_priors",
    "load_cosmos_fits",
    "resolve_cosmos_catalog",
    "truncated_exponential",
    "truncated_f",
    "truncated_normal",
    "uniform",
]

#: Label columns, in order: arcsec, arcsec, AB mag, arcsec (semi-major), -, degrees, -.
LABELS = ("x", "y", "mag", "r_eff", "q", "pa", "n")
#: Pixel scale of the COSMOS fits' radii, arcsec.
COSMOS_PIXEL_SCALE = 0.03
_COSMOS_NAME = "real_galaxy_catalog_23.5_example_fits.fits"
#: Where the COSMOS fits are looked for when ``cosmos_catalog`` is not set: the copy shipped
#: with lensml (or ``LENSML_COSMOS_DIR``), see :func:`lensml.resources.cosmos_dir`.
DEFAULT_COSMOS_CATALOGS = (
    Path(__file__).resolve().parents[1] / "resources" / "cosmos" / _COSMOS_NAME,
)
_F64 = torch.float64


def uniform(n: int, rng: torch.Generator, lo: float, hi: float) -> Tensor:
    """``n`` draws of U(lo, hi), float64."""
    return lo + (hi - lo) * torch.rand(n, generator=rng, dtype=_F64)


def truncated_normal(
    n: int, rng: torch.Generator, mean: float, sigma: float, lo: float, hi: float
) -> Tensor:
    """Normal(mean, sigma) truncated to [lo, hi] by inverse CDF, float64 (n,)."""
    a = torch.tensor((lo - mean) / sigma, dtype=_F64)
    b = torch.tensor((hi - mean) / sigma, dtype=_F64)
    pa, pb = torch.special.ndtr(a), torch.special.ndtr(b)
    p = pa + (pb - pa) * torch.rand(n, generator=rng, dtype=_F64)
    return (mean + sigma * torch.special.ndtri(p)).clamp(lo, hi)


def truncated_exponential(
    n: int, rng: torch.Generator, rate: float, lo: float, hi: float
) -> Tensor:
    """Density ∝ exp(rate · v) on [lo, hi] (rate in 1/unit, any sign; 0 = uniform)."""
    u = torch.rand(n, generator=rng, dtype=_F64)
    if abs(rate) * (hi - lo) < 1e-12:
        return lo + (hi - lo) * u
    span = math.expm1(rate * (hi - lo))
    return (lo + torch.log1p(u * span) / rate).clamp(lo, hi)


def truncated_f(
    n: int, rng: torch.Generator, dfn: float, dfd: float, lo: float, hi: float
) -> Tensor:
    """F(dfn, dfd) truncated to [lo, hi] by inverse CDF (scipy ``fdtr`` / ``fdtri``)."""
    from scipy.special import fdtr, fdtri

    plo, phi = float(fdtr(dfn, dfd, lo)), float(fdtr(dfn, dfd, hi))
    u = torch.rand(n, generator=rng, dtype=_F64).numpy()
    p = np.clip(plo + (phi - plo) * u, plo, phi)
    return torch.from_numpy(np.clip(fdtri(dfn, dfd, p), lo, hi))


def draw_priors(n: int, rng: torch.Generator, cfg: Any) -> dict[str, Tensor]:
    """Draw ``n`` target galaxies from the configured prior (before any S/N selection).

    Parameters
    ----------
    n : int
        Number of draws, >= 0.
    rng : torch.Generator
        CPU generator; the only source of randomness.
    cfg : SersicGenerator.Config
        Uses the prior fields (``prior``, ``x_sigma``, ``x_max``, ``mag_*``, ``log_reff_*``,
        ``reff_*``, ``q_*``, ``n_*``, ``cosmos_*``).

    Returns
    -------
    dict of str to Tensor
        float64 ``(n,)`` tensors keyed by :data:`LABELS`: x, y (arcsec from the stamp centre,
        x right, y up), mag (AB), r_eff (semi-major, arcsec), q, pa (degrees in [0, 180),
        counter-clockwise from +x), n.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"draw_priors: 'n' must be an integer >= 0, got {n!r}")
    out = {
        "x": truncated_normal(n, rng, 0.0, cfg.x_sigma, -cfg.x_max, cfg.x_max),
        "y": truncated_normal(n, rng, 0.0, cfg.x_sigma, -cfg.x_max, cfg.x_max),
        "mag": truncated_exponential(n, rng, cfg.mag_rate, cfg.mag_min, cfg.mag_max),
    }
    if cfg.prior == "cosmos":
        sers_n, q, r_eff = cosmos_shapes(n, rng, cfg)
    else:
        log_re = truncated_normal(
            n,
            rng,
            cfg.log_reff_mean,
            cfg.log_reff_sigma,
            math.log10(cfg.reff_min),
            math.log10(cfg.reff_max),
        )
        r_eff = torch.pow(10.0, log_re).clamp(cfg.reff_min, cfg.reff_max)
        q = uniform(n, rng, cfg.q_min, cfg.q_max)
        sers_n = truncated_f(n, rng, cfg.n_dfn, cfg.n_dfd, cfg.n_min, cfg.n_max)
    out["r_eff"], out["q"] = r_eff, q
    out["pa"] = torch.remainder(uniform(n, rng, 0.0, 180.0), 180.0)
    out["n"] = sers_n
    return {k: out[k] for k in LABELS}


# --------------------------------------------------------------------------- COSMOS


def resolve_cosmos_catalog(path: str | Path | None) -> Path:
    """The COSMOS fits file to use: ``path`` if given, else the first existing default.

    Raises
    ------
    ValueError
        If ``path`` does not exist, or no default exists when ``path`` is None.
    """
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"cosmos_catalog: file '{p}' does not exist")
        return p
    for cand in DEFAULT_COSMOS_CATALOGS:
        if cand.is_file():
            return cand
    tried = ", ".join(f"'{c}'" for c in DEFAULT_COSMOS_CATALOGS)
    raise ValueError(
        f"prior='cosmos' needs the COSMOS Sérsic fits ({_COSMOS_NAME}, GalSim example data): "
        f"set cosmos_catalog; none of the defaults exists ({tried})"
    )


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime: float, size: int) -> dict[str, np.ndarray]:
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            table = next((h for h in hdul if getattr(h, "columns", None) is not None), None)
            if table is None:
                raise ValueError("no binary table")
            names = [c.lower() for c in table.columns.names]
            if "sersicfit" not in names:
                raise ValueError(f"no 'sersicfit' column (columns: {table.columns.names})")
            data = table.data
            fit = np.asarray(data["sersicfit"], dtype=np.float64)
            viable = (
                np.asarray(data["viable_sersic"]).astype(bool)
                if "viable_sersic" in names
                else np.ones(len(fit), dtype=bool)
            )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"cosmos_catalog '{path}': cannot read COSMOS Sérsic fits: {err}"
        ) from None
    if fit.ndim != 2 or fit.shape[1] < 4:
        raise ValueError(
            f"cosmos_catalog '{path}': 'sersicfit' must have >= 4 columns per row "
            f"[I_e, r_eff/pixel, n, q, ...], got shape {fit.shape}"
        )
    r_eff = fit[:, 1] * COSMOS_PIXEL_SCALE
    n, q = fit[:, 2], fit[:, 3]
    ok = viable & np.isfinite(fit[:, :4]).all(axis=1) & (r_eff > 0) & (n > 0) & (q > 0) & (q < 1)
    if ok.sum() < 5:
        raise ValueError(
            f"cosmos_catalog '{path}': only {int(ok.sum())} viable Sérsic fits, need >= 5"
        )
    return {"n": n[ok], "q": q[ok], "r_eff": r_eff[ok]}


def load_cosmos_fits(path: str | Path) -> dict[str, np.ndarray]:
    """Viable single-Sérsic fits of a COSMOS catalogue: arrays ``n``, ``q``, ``r_eff``.

    ``r_eff`` is the semi-major effective radius in arcsec (``sersicfit[1] × 0.03″``).
    Cached per (path, modification time, size).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"cosmos_catalog: file '{p}' does not exist")
    st = p.stat()
    return _load_cached(str(p.resolve()), st.st_mtime, st.st_size)


def _kde_space(n: np.ndarray, q: np.ndarray, r_eff: np.ndarray) -> np.ndarray:
    """(N, 3) points (ln n, ln r_eff, logit q) in which the KDE is Gaussian."""
    return np.stack([np.log(n), np.log(r_eff), np.log(q / (1.0 - q))], axis=1)


def cosmos_shapes(n: int, rng: torch.Generator, cfg: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Draw (Sérsic n, q, r_eff) from the COSMOS kernel-density prior (see module docstring).

    Returns float64 ``(n,)`` tensors within the configured n, q and r_eff ranges.

    Raises
    ------
    ValueError
        If the catalogue cannot be read, or if fewer than 1% of the KDE draws fall inside
        the configured ranges (the ranges and the catalogue do not overlap).
    """
    cat = load_cosmos_fits(resolve_cosmos_catalog(cfg.cosmos_catalog))
    pts = _kde_space(cat["n"], cat["q"], cat["r_eff"] * cfg.cosmos_reff_scale)
    npts, dim = pts.shape
    factor = cfg.cosmos_bandwidth
    if factor is None:
        factor = npts ** (-1.0 / (dim + 4))  # Scott's rule, as scipy.stats.gaussian_kde
    cov = np.cov(pts, rowvar=False) * factor**2
    chol = torch.from_numpy(np.linalg.cholesky(cov + 1e-12 * np.eye(dim)))
    base = torch.from_numpy(pts)
    got: list[Tensor] = []
    have, drawn = 0, 0
    while have < n:
        m = max(2 * (n - have), 64)
        idx = torch.randint(npts, (m,), generator=rng)
        z = torch.randn(m, dim, generator=rng, dtype=_F64)
        s = base[idx] + z @ chol.T
        sn, sr = torch.exp(s[:, 0]), torch.exp(s[:, 1])
        sq = torch.sigmoid(s[:, 2])
        ok = (
            (sn >= cfg.n_min) & (sn <= cfg.n_max) & (sq >= cfg.q_min) & (sq <= cfg.q_max)
            & (sr >= cfg.reff_min) & (sr <= cfg.reff_max)
        )  # fmt: skip
        drawn += m
        got.append(torch.stack([sn[ok], sq[ok], sr[ok]], dim=1))
        have += int(ok.sum())
        if drawn >= 2000 and have < 0.01 * drawn:
            raise ValueError(
                f"prior='cosmos': only {have} of {drawn} COSMOS KDE draws fall inside the "
                f"ranges n {cfg.n_min}-{cfg.n_max}, q {cfg.q_min}-{cfg.q_max}, r_eff "
                f'{cfg.reff_min}-{cfg.reff_max}" (cosmos_reff_scale {cfg.cosmos_reff_scale})'
            )
    out = torch.cat(got)[:n] if got else torch.zeros(0, 3, dtype=_F64)
    return out[:, 0], out[:, 1], out[:, 2]
