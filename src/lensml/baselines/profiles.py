"""Azimuthally averaged tangential and cross shear profiles of batches of shear maps.

For a pixel at position angle φ (counter-clockwise from +x) around the centre,

    g_t = −(g1 cos 2φ + g2 sin 2φ),        g_× = g1 sin 2φ − g2 cos 2φ,

with GalSim's sign convention (g1 > 0 stretches along x), so that g_t > 0 around a mass
concentration (an NFW halo has g1 = −g_t cos 2φ, g2 = −g_t sin 2φ;
see :func:`lensml.physics.mass.nfw.shear`) and g_× = 0 for an axisymmetric lens.

Pixels whose centres lie at r_min <= R < r_max from the centre are grouped into radial bins
(log-spaced by default); a precomputed bin index per pixel turns the azimuthal average of a
whole batch into one ``index_add`` per sum (g_t, g_t², g_×, g_×²), so a batch of hundreds
of maps takes tens of milliseconds on a CPU.

Default radial range
--------------------
The cluster paper (Sect. 5.4) excludes an inner strong-lensing region whose size was lost
in the text conversion (a few hundred kpc is usual for MOKA / Euclid cluster fits, e.g.
Giocoli et al. 2014 use R > 0.1–0.3 Mpc/h). Without a redshift the profile only knows
arcsec, so the default inner radius is a fixed fraction of the field,
``r_min = 0.1 × (half the smaller map side)`` (for a 2–4 Mpc field this is 100–200 kpc,
outside the Einstein radius of all but the most massive halos), and the default outer
radius is the inscribed circle, ``r_max = half the smaller map side``. Both are configurable
in arcsec; :func:`radial_bins` checks that every bin holds pixels and (unless
``partial_annuli=True``) that every annulus lies inside the map.

Model averaging
---------------
Besides the per-bin mean radius, :func:`radial_bins` stores, for every bin, ``K`` radial
*nodes* with weights: the pixels of the bin sorted by radius are split into ``K``
equal-count groups and each node is the mean radius of its group (weight = group size /
bin count). The average of a smooth 1-d model over the pixels of a bin is then
``Σ_k w_k f(r_k)``, accurate to second order in the group width; fitting against it
removes the bias of evaluating a curved profile at the bin centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["RadialBins", "ShearProfile", "radial_bins", "tangential_profile"]

Spacing = Literal["log", "linear"]


@dataclass(frozen=True)
class RadialBins:
    """A precomputed assignment of map pixels to radial bins.

    Attributes
    ----------
    shape : tuple of int
        Map shape ``(H, W)``.
    pixel_scale : float
        Pixel side in arcsec.
    edges : Tensor
        ``(n_bins + 1,)`` bin edges in arcsec, increasing.
    index : Tensor
        ``(C, H*W)`` int64 bin of each pixel (``n_bins`` for pixels outside
        ``[r_min, r_max)``); ``C = 1`` for a shared centre, ``B`` for one centre per map.
    counts : Tensor
        ``(C, n_bins)`` number of pixels per bin.
    radius : Tensor
        ``(C, n_bins)`` mean pixel radius of each bin in arcsec.
    nodes, node_weights : Tensor
        ``(C, n_bins, K)`` radial nodes (arcsec) and weights (summing to 1 over K) whose
        weighted sum of a 1-d function is its average over the pixels of the bin.
    cos2phi, sin2phi : Tensor
        ``(C, H*W)`` cos 2φ and sin 2φ of each pixel around its map's centre.
    center : Tensor
        ``(C, 2)`` centre (x, y) in arcsec relative to the map centre.
    """

    shape: tuple[int, int]
    pixel_scale: float
    edges: Tensor
    index: Tensor
    counts: Tensor
    radius: Tensor
    nodes: Tensor
    node_weights: Tensor
    cos2phi: Tensor
    sin2phi: Tensor
    center: Tensor

    @property
    def n_bins(self) -> int:
        """Number of radial bins."""
        return int(self.edges.numel()) - 1


@dataclass(frozen=True)
class ShearProfile:
    """Azimuthally averaged shear profiles of a batch of maps.

    Attributes
    ----------
    bins : RadialBins
        The binning used (edges, nodes, centres).
    radius : Tensor
        ``(B, n_bins)`` mean pixel radius per bin, arcsec.
    counts : Tensor
        ``(B, n_bins)`` pixels per bin.
    g_t, g_x : Tensor
        ``(B, n_bins)`` mean reduced tangential and cross shear per bin.
    g_t_err, g_x_err : Tensor
        ``(B, n_bins)`` standard error of each bin mean: ``σ / sqrt(N)`` for a given
        per-pixel σ, else the empirical scatter ``std / sqrt(N)`` (``error="empirical"``).
    error : str
        ``"sigma"`` or ``"empirical"``: how the errors were computed.
    """

    bins: RadialBins
    radius: Tensor
    counts: Tensor
    g_t: Tensor
    g_x: Tensor
    g_t_err: Tensor
    g_x_err: Tensor
    error: str


# --------------------------------------------------------------------------------------
# validation helpers
def _check_positive(value: float, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{owner}: {name!r} must be a finite number > 0; got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: {name!r} must be a finite number > 0; got {value!r}")
    return float(value)


def _check_shape(shape, owner: str) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: 'shape' must be (H, W); got {shape!r}") from None
    if h < 2 or w < 2:
        raise ValueError(f"{owner}: 'shape' must be (H, W) with H, W >= 2; got {shape!r}")
    return h, w


def _centers(center, owner: str, dtype: torch.dtype, device) -> Tensor:
    """Centre offsets as a ``(C, 2)`` tensor (arcsec, relative to the map centre)."""
    if center is None:
        return torch.zeros(1, 2, dtype=dtype, device=device)
    c = torch.as_tensor(center, dtype=dtype, device=device)
    if c.ndim == 1:
        c = c.unsqueeze(0)
    if c.ndim != 2 or c.shape[-1] != 2 or c.shape[0] < 1:
        raise ValueError(
            f"{owner}: 'center' must be (x, y) or a (B, 2) tensor in arcsec; got shape "
            f"{tuple(c.shape)}"
        )
    if not bool(torch.isfinite(c).all()):
        raise ValueError(f"{owner}: 'center' contains NaN or inf")
    return c


# --------------------------------------------------------------------------------------
def radial_bins(
    shape: tuple[int, int],
    pixel_scale: float,
    n_bins: int = 12,
    r_min: float | None = None,
    r_max: float | None = None,
    spacing: Spacing = "log",
    center=None,
    nodes_per_bin: int = 8,
    partial_annuli: bool = False,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> RadialBins:
    """Assign the pixels of an ``(H, W)`` map to radial bins around one or B centres.

    Parameters
    ----------
    shape : (int, int)
        Map shape ``(H, W)``, both >= 2.
    pixel_scale : float
        Pixel side in arcsec, > 0.
    n_bins : int
        Number of bins, >= 1 (default 12).
    r_min : float, optional
        Inner radius in arcsec (>= 0; > 0 for log bins). Default: 0.1 × half the smaller
        map side (see the module docstring for why).
    r_max : float, optional
        Outer radius in arcsec, > r_min. Default: half the smaller map side.
    spacing : {"log", "linear"}
        Bin spacing (default log).
    center : (x, y) or Tensor (B, 2), optional
        Centre in arcsec relative to the map centre, shared or one per map; default the
        map centre. (Pixel centres sit at ``(j − (n−1)/2) × pixel_scale``.)
    nodes_per_bin : int
        Radial nodes per bin for pixel-averaged models (>= 1, default 8).
    partial_annuli : bool
        Allow annuli that cross the map edge (default False: ``r_max`` must fit inside
        the map around every centre).
    dtype, device
        Of the returned tensors (default float64, CPU).

    Returns
    -------
    RadialBins

    Raises
    ------
    ValueError
        For a bad shape or pixel scale, r_min >= r_max, non-positive r_min with log bins,
        annuli outside the map, or a bin without pixels.
    """
    owner = "radial_bins"
    h, w = _check_shape(shape, owner)
    scale = _check_positive(pixel_scale, "pixel_scale", owner)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"{owner}: 'n_bins' must be an integer >= 1; got {n_bins!r}")
    if isinstance(nodes_per_bin, bool) or not isinstance(nodes_per_bin, int) or nodes_per_bin < 1:
        raise ValueError(f"{owner}: 'nodes_per_bin' must be an integer >= 1; got {nodes_per_bin!r}")
    if spacing not in ("log", "linear"):
        raise ValueError(f"{owner}: 'spacing' must be 'log' or 'linear'; got {spacing!r}")
    half = 0.5 * min(h, w) * scale
    r_lo = 0.1 * half if r_min is None else r_min
    r_hi = half if r_max is None else r_max
    for name, v in (("r_min", r_lo), ("r_max", r_hi)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{owner}: {name!r} must be a finite number (arcsec); got {v!r}")
    r_lo, r_hi = float(r_lo), float(r_hi)
    if r_lo < 0 or (spacing == "log" and r_lo <= 0):
        raise ValueError(
            f"{owner}: 'r_min' must be > 0 arcsec for log bins (>= 0 for linear); got {r_lo}"
        )
    if r_lo >= r_hi:
        raise ValueError(f"{owner}: need r_min < r_max; got r_min={r_lo}, r_max={r_hi} arcsec")

    cen = _centers(center, owner, dtype, device)
    half_x, half_y = 0.5 * w * scale, 0.5 * h * scale
    if not partial_annuli:
        room = torch.minimum(half_x - cen[:, 0].abs(), half_y - cen[:, 1].abs())
        worst = float(room.min())
        if r_hi > worst * (1 + 1e-9):
            raise ValueError(
                f"{owner}: bins outside the map: r_max={r_hi:g} arcsec but the map edge is "
                f"{worst:g} arcsec from the (farthest off-centre) centre; lower 'r_max' or "
                "pass partial_annuli=True"
            )
    if spacing == "log":
        edges = torch.logspace(
            math.log10(r_lo), math.log10(r_hi), n_bins + 1, dtype=dtype, device=device
        )
    else:
        edges = torch.linspace(r_lo, r_hi, n_bins + 1, dtype=dtype, device=device)

    xs = (torch.arange(w, dtype=dtype, device=device) - (w - 1) / 2) * scale
    ys = (torch.arange(h, dtype=dtype, device=device) - (h - 1) / 2) * scale
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    dx = xx.reshape(1, -1) - cen[:, :1]
    dy = yy.reshape(1, -1) - cen[:, 1:]
    r2 = dx * dx + dy * dy
    r = torch.sqrt(r2)
    safe = torch.where(r2 > 0, r2, torch.ones_like(r2))
    cos2 = torch.where(r2 > 0, (dx * dx - dy * dy) / safe, torch.zeros_like(r2))
    sin2 = torch.where(r2 > 0, 2 * dx * dy / safe, torch.zeros_like(r2))
    idx = torch.bucketize(r, edges, right=True) - 1  # edges[i] <= r < edges[i+1] → i
    idx = torch.where((idx < 0) | (idx >= n_bins), torch.full_like(idx, n_bins), idx)

    c = cen.shape[0]
    nb1 = n_bins + 1
    offs = (torch.arange(c, device=device) * nb1).unsqueeze(1)
    flat = (idx + offs).reshape(-1)
    counts = torch.zeros(c * nb1, dtype=dtype, device=device)
    counts.index_add_(0, flat, torch.ones_like(r).reshape(-1))
    rsum = torch.zeros_like(counts).index_add_(0, flat, r.reshape(-1))
    counts = counts.view(c, nb1)[:, :n_bins]
    rsum = rsum.view(c, nb1)[:, :n_bins]
    if bool((counts == 0).any()):
        bad = int((counts == 0).any(0).nonzero()[0])
        raise ValueError(
            f"{owner}: radial bin {bad} [{float(edges[bad]):g}, {float(edges[bad + 1]):g}) "
            "arcsec contains no pixel centre (bins narrower than a pixel or outside the map); "
            "use fewer bins, a larger 'r_min' or a smaller 'r_max'"
        )
    radius = rsum / counts

    # radial nodes: pixels of each bin sorted by radius, split into K equal-count groups
    k = nodes_per_bin
    order = torch.argsort(r, dim=1)
    r_sorted = torch.gather(r, 1, order)
    idx_sorted = torch.gather(idx, 1, order)
    inside = idx_sorted < n_bins
    starts = torch.cumsum(counts, dim=1) - counts  # (C, nb) first sorted position per bin
    first_in = (r_sorted < edges[0]).sum(1, keepdim=True).to(dtype)  # pixels before bin 0
    pos = torch.arange(r.shape[1], dtype=dtype, device=device).unsqueeze(0)
    clamped = idx_sorted.clamp(max=n_bins - 1)
    rank = pos - first_in - torch.gather(starts, 1, clamped)
    n_in = torch.gather(counts, 1, clamped)
    group = torch.clamp(torch.floor(rank * k / n_in), 0, k - 1).long()
    gid = torch.where(inside, clamped * k + group, torch.full_like(group, n_bins * k))
    nk1 = n_bins * k + 1
    gflat = (gid + torch.arange(c, device=device).unsqueeze(1) * nk1).reshape(-1)
    gcount = torch.zeros(c * nk1, dtype=dtype, device=device)
    gcount.index_add_(0, gflat, torch.ones_like(r_sorted).reshape(-1))
    gsum = torch.zeros_like(gcount).index_add_(0, gflat, r_sorted.reshape(-1))
    gcount = gcount.view(c, nk1)[:, : n_bins * k].view(c, n_bins, k)
    gsum = gsum.view(c, nk1)[:, : n_bins * k].view(c, n_bins, k)
    nodes = torch.where(gcount > 0, gsum / gcount.clamp(min=1), radius.unsqueeze(-1))
    weights = gcount / counts.unsqueeze(-1)
    return RadialBins(
        shape=(h, w),
        pixel_scale=scale,
        edges=edges,
        index=idx,
        counts=counts,
        radius=radius,
        nodes=nodes,
        node_weights=weights,
        cos2phi=cos2,
        sin2phi=sin2,
        center=cen,
    )


def _check_maps(g: Tensor, owner: str) -> Tensor:
    if not isinstance(g, Tensor) or not g.is_floating_point():
        raise ValueError(f"{owner}: 'g' must be a floating-point tensor of shape (B, 2, H, W)")
    if g.ndim == 3 and g.shape[0] == 2:
        g = g.unsqueeze(0)
    if g.ndim != 4 or g.shape[1] != 2 or g.shape[0] < 1 or min(g.shape[-2:]) < 2:
        raise ValueError(
            f"{owner}: 'g' must have shape (B, 2, H, W) (channels g1, g2) or (2, H, W); "
            f"got {tuple(g.shape)}"
        )
    if not bool(torch.isfinite(g).all()):
        n_bad = int((~torch.isfinite(g)).sum())
        raise ValueError(
            f"{owner}: 'g' contains {n_bad} NaN or inf pixel values; expected finite shear "
            "maps (fill masked pixels before extracting profiles)"
        )
    return g


def tangential_profile(
    g: Tensor,
    pixel_scale: float | None = None,
    *,
    bins: RadialBins | None = None,
    sigma: float | Tensor | None = None,
    n_bins: int = 12,
    r_min: float | None = None,
    r_max: float | None = None,
    spacing: Spacing = "log",
    center=None,
    nodes_per_bin: int = 8,
    partial_annuli: bool = False,
) -> ShearProfile:
    """Azimuthally averaged reduced tangential and cross shear of a batch of maps.

    Parameters
    ----------
    g : Tensor
        ``(B, 2, H, W)`` reduced shear maps (channels g1, g2; ``(2, H, W)`` is one map),
        finite.
    pixel_scale : float, optional
        Pixel side in arcsec; required unless ``bins`` is given.
    bins : RadialBins, optional
        Precomputed binning (from :func:`radial_bins`) for maps of this shape; its centre
        count must be 1 or B. When given, the binning keywords below are ignored.
    sigma : float or Tensor, optional
        Per-pixel noise σ of each shear component (a number or ``(B,)``, >= 0), e.g. from
        :func:`lensml.physics.noise.shape_noise_sigma`; the bin error is σ/√N. Default
        None: the empirical scatter of the pixels in the bin, std/√N.
    n_bins, r_min, r_max, spacing, center, nodes_per_bin, partial_annuli
        Passed to :func:`radial_bins` (r_min, r_max in arcsec).

    Returns
    -------
    ShearProfile
        float64 profiles on the device of ``g``.
    """
    owner = "tangential_profile"
    g = _check_maps(g, owner)
    b, _, h, w = g.shape
    dev = g.device
    if bins is None:
        if pixel_scale is None:
            raise ValueError(f"{owner}: 'pixel_scale' (arcsec) is required when 'bins' is None")
        bins = radial_bins(
            (h, w),
            pixel_scale,
            n_bins=n_bins,
            r_min=r_min,
            r_max=r_max,
            spacing=spacing,
            center=center,
            nodes_per_bin=nodes_per_bin,
            partial_annuli=partial_annuli,
            device=dev,
        )
    elif not isinstance(bins, RadialBins):
        raise ValueError(f"{owner}: 'bins' must be a RadialBins from radial_bins()")
    if bins.shape != (h, w):
        raise ValueError(f"{owner}: 'bins' were made for maps {bins.shape}; 'g' maps are {(h, w)}")
    c = bins.index.shape[0]
    if c not in (1, b):
        raise ValueError(f"{owner}: 'bins' have {c} centres; expected 1 or B={b}")
    nb = bins.n_bins
    dtype = bins.edges.dtype
    if c == 1:
        # shared centre: the bin sums are linear in (g1, g2) (and in g1², g2², g1 g2 for the
        # scatter), so they are one matmul of the flattened maps with a sparse-in-spirit
        # (HW, nb) one-hot matrix weighted by cos 2φ, sin 2φ (zero rows outside the bins);
        # the maps are never rotated or copied pixel by pixel.
        mdt = g.dtype
        onehot = torch.nn.functional.one_hot(bins.index[0], nb + 1)[:, :nb].to(mdt)
        cc = bins.cos2phi[0].to(mdt).unsqueeze(1) * onehot
        ss = bins.sin2phi[0].to(mdt).unsqueeze(1) * onehot
        lin = torch.cat([torch.cat([-cc, ss], 1), torch.cat([-ss, -cc], 1)], 0)
        first = (g.reshape(b, 2 * h * w) @ lin).to(dtype)  # (B, 2 nb): Σ g_t, Σ g_×
        sum_t, sum_x = first[:, :nb], first[:, nb:]
        if sigma is None:
            g1 = g[:, 0].reshape(b, -1)
            g2 = g[:, 1].reshape(b, -1)
            quad = torch.cat([g1 * g1, g2 * g2, 2 * g1 * g2], 1)
            c2, s2, cs = cc * cc, ss * ss, cc * ss  # one-hot² = one-hot
            mat = torch.cat(
                [torch.cat([c2, s2], 1), torch.cat([s2, c2], 1), torch.cat([cs, -cs], 1)]
            )
            second = (quad @ mat).to(dtype)  # Σ g_t², Σ g_×²
            sq_t, sq_x = second[:, :nb], second[:, nb:]
        else:
            sq_t = sq_x = torch.zeros_like(sum_t)
        sums = torch.stack([sum_t, sq_t, sum_x, sq_x], dim=-1)
    else:
        # one centre per map: one bincount per sum over a per-map bin index
        g1 = g[:, 0].reshape(b, -1).to(dtype)
        g2 = g[:, 1].reshape(b, -1).to(dtype)
        gt = -(g1 * bins.cos2phi + g2 * bins.sin2phi)
        gx = g1 * bins.sin2phi - g2 * bins.cos2phi
        flat = (bins.index + (torch.arange(b, device=dev) * (nb + 1)).unsqueeze(1)).reshape(-1)
        n_out = b * (nb + 1)
        sums = torch.stack(
            [
                torch.bincount(flat, weights=v.reshape(-1), minlength=n_out)
                for v in (gt, gt * gt, gx, gx * gx)
            ],
            dim=-1,
        ).to(dtype)
        sums = sums.view(b, nb + 1, 4)[:, :nb]
    counts = bins.counts.expand(b, -1)
    mean_t = sums[..., 0] / counts
    mean_x = sums[..., 2] / counts
    if sigma is None:
        dof = (counts - 1).clamp(min=1)
        var_t = ((sums[..., 1] - counts * mean_t**2) / dof).clamp(min=0)
        var_x = ((sums[..., 3] - counts * mean_x**2) / dof).clamp(min=0)
        err_t = torch.sqrt(var_t / counts)
        err_x = torch.sqrt(var_x / counts)
        kind = "empirical"
    else:
        s = torch.as_tensor(sigma, dtype=dtype, device=dev)
        if s.ndim == 0:
            s = s.reshape(1)
        if s.ndim != 1 or s.shape[0] not in (1, b):
            raise ValueError(
                f"{owner}: 'sigma' must be a number or a (B,) tensor with B={b}; got shape "
                f"{tuple(s.shape)}"
            )
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
            raise ValueError(f"{owner}: 'sigma' must be finite and >= 0 (per-pixel shear noise)")
        err_t = s.unsqueeze(1) / torch.sqrt(counts)
        err_x = err_t
        kind = "sigma"
    return ShearProfile(
        bins=bins,
        radius=bins.radius.expand(b, -1),
        counts=counts,
        g_t=mean_t,
        g_x=mean_x,
        g_t_err=err_t,
        g_x_err=err_x,
        error=kind,
    )
