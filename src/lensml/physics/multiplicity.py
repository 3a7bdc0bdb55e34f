"""Image multiplicity: find the images of point sources behind a lens, batched.

Method (triangle mapping + Newton polishing)
--------------------------------------------
1. A square of half-size ``half_size`` around ``center`` is cut into ``n_cells²`` cells of side
   ``h``, each split into two triangles. The lens equation ``β = θ − α(θ)`` maps the cell
   vertices to the source plane. Where the map is continuous, every image of a source at
   ``β_s`` lies in an image-plane triangle whose mapped triangle contains ``β_s`` (barycentric
   test, edges inclusive) — whatever the magnification, so faint, strongly demagnified and
   highly magnified images are all found (Schneider, Ehlers & Falco 1992, §11.3 / the "triangle
   mapping" of lens-equation solvers).
2. Each hit is polished by damped Newton steps on ``β(θ) = β_s`` with a central-difference
   Jacobian (steps capped at ``h``). A hit whose Newton residual does not fall below ``tol`` is
   discarded: this removes the spurious hit of a triangle that straddles a singular centre
   (SIS / SIE), whose mapped triangle spans the whole cut but which contains no solution.
3. Solutions closer than ``h`` to an earlier one are duplicates (an image on a cell edge is hit
   by both neighbouring triangles). The signed magnification is ``μ = 1 / det A`` at the
   polished position; images with ``|μ| < min_magnification`` are not counted.

Resolution limit: two images closer than ``~h`` (a source within ``~h²/θ_E`` of a fold caustic)
merge into one, and an image within ``~h`` of a critical curve may fail to converge and be
dropped. Central images of singular lenses have ``μ → 0`` and are found only at ``|θ| >~
h``; set ``min_magnification`` (e.g. 1e-3) to count only observable images.

Deflections are callables ``(x, y) -> (alpha_x, alpha_y)`` (arcsec) as in
:mod:`lensml.physics.raytrace`, or a sequence of them (summed); they are called with ``(H, W)``
and ``(B, 1, P)`` coordinates. Work is in float64 by default (the Jacobian is a finite difference).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lensml.physics.grids import PixelGrid

__all__ = ["LensImages", "count_images", "find_images", "is_multiply_imaged"]

Deflector = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
_OWNER = "find_images"


@dataclass(frozen=True)
class LensImages:
    """Images of ``S`` point sources behind each of ``B`` lenses.

    Attributes
    ----------
    x, y : Tensor
        ``(B, S, K)`` image positions in arcsec (NaN in unused slots), K the largest count.
    magnification : Tensor
        ``(B, S, K)`` signed magnification ``1 / det(∂β/∂θ)`` (NaN in unused slots).
    count : Tensor
        ``(B, S)`` int64 number of images with ``|μ| >= min_magnification``.
    """

    x: Tensor
    y: Tensor
    magnification: Tensor
    count: Tensor


def _deflect_sum(deflect: Deflector | Sequence[Deflector]) -> Deflector:
    items = [deflect] if callable(deflect) else list(deflect)
    if not items or not all(callable(d) for d in items):
        raise ValueError(f"{_OWNER}: 'deflect' must be a callable (x, y) -> (ax, ay) or a list")

    def total(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        ax = ay = None
        for d in items:
            dx, dy = d(x, y)
            ax, ay = (dx, dy) if ax is None else (ax + dx, ay + dy)
        return ax, ay

    return total


def _sources(beta_x, beta_y, dtype) -> tuple[Tensor, Tensor]:
    bx = torch.as_tensor(beta_x, dtype=dtype)
    by = torch.as_tensor(beta_y, dtype=dtype)
    if bx.shape != by.shape or bx.ndim > 2:
        raise ValueError(
            f"{_OWNER}: 'beta_x' and 'beta_y' must be numbers, (B,) or (B, S) of equal shape; "
            f"got {tuple(bx.shape)} and {tuple(by.shape)}"
        )
    if not bool(torch.isfinite(bx).all() and torch.isfinite(by).all()):
        raise ValueError(f"{_OWNER}: source positions contain NaN or inf")
    while bx.ndim < 2:
        bx, by = bx.unsqueeze(-1), by.unsqueeze(-1)
    return bx, by


def _inside(px, py, ax, ay, bx, by, cx, cy) -> Tensor:
    """Point p inside (or on an edge of) the triangle a, b, c (any orientation)."""
    d1 = (px - bx) * (ay - by) - (ax - bx) * (py - by)
    d2 = (px - cx) * (by - cy) - (bx - cx) * (py - cy)
    d3 = (px - ax) * (cy - ay) - (cx - ax) * (py - ay)
    neg = (d1 < 0) | (d2 < 0) | (d3 < 0)
    pos = (d1 > 0) | (d2 > 0) | (d3 > 0)
    return ~(neg & pos)


def _hits(bvx: Tensor, bvy: Tensor, sx: Tensor, sy: Tensor, chunk: int) -> Tensor:
    """Indices ``(M, 4)`` = (batch, source, row, col) of cells with a triangle containing β_s."""
    b = sx.shape[0]
    v00x, v00y = bvx[:, None, :-1, :-1], bvy[:, None, :-1, :-1]
    v01x, v01y = bvx[:, None, :-1, 1:], bvy[:, None, :-1, 1:]
    v10x, v10y = bvx[:, None, 1:, :-1], bvy[:, None, 1:, :-1]
    v11x, v11y = bvx[:, None, 1:, 1:], bvy[:, None, 1:, 1:]
    out = []
    for s0 in range(0, sx.shape[1], chunk):
        px = sx[:, s0 : s0 + chunk, None, None]
        py = sy[:, s0 : s0 + chunk, None, None]
        t1 = _inside(px, py, v00x, v00y, v01x, v01y, v11x, v11y)
        t2 = _inside(px, py, v00x, v00y, v11x, v11y, v10x, v10y)
        idx = torch.nonzero((t1 | t2).expand(b, -1, -1, -1))
        idx[:, 1] += s0
        out.append(idx)
    return torch.cat(out)


def _padded(batch: Tensor, n_batch: int) -> tuple[Tensor, int]:
    """Slot of every hit inside its batch item, and the number of slots."""
    counts = torch.bincount(batch, minlength=n_batch)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(batch.numel(), device=batch.device) - start[batch]
    return slot, int(counts.max()) if batch.numel() else 0


def _newton(deflect, theta, target, batch, n_batch, h, steps, delta):
    """Damped Newton on β(θ) = target for M points; returns θ, residual, det A."""
    slot, width = _padded(batch, n_batch)
    dtype = theta.dtype
    pad_val = theta.new_tensor(0.0)

    def beta_and_jac(th: Tensor) -> tuple[Tensor, Tensor]:
        offsets = th.new_tensor([[0, 0], [delta, 0], [-delta, 0], [0, delta], [0, -delta]])
        pts = th[:, None, :] + offsets[None]  # (M, 5, 2)
        grid = torch.full((n_batch, 5 * width, 2), float(pad_val), dtype=dtype)
        pts = pts.to(dtype)
        grid = grid.index_put((batch[:, None], slot[:, None] * 5 + torch.arange(5)), pts)
        x, y = grid[..., 0][:, None, :], grid[..., 1][:, None, :]
        ax, ay = deflect(x, y)
        ax = ax.expand(n_batch, 1, 5 * width)[:, 0]
        ay = ay.expand(n_batch, 1, 5 * width)[:, 0]
        idx = slot[:, None] * 5 + torch.arange(5)
        bx = x[:, 0].expand(n_batch, -1)[batch[:, None], idx] - ax[batch[:, None], idx]
        by = y[:, 0].expand(n_batch, -1)[batch[:, None], idx] - ay[batch[:, None], idx]
        beta = torch.stack([bx[:, 0], by[:, 0]], dim=-1)
        jac = torch.stack(
            [
                torch.stack([bx[:, 1] - bx[:, 2], bx[:, 3] - bx[:, 4]], dim=-1),
                torch.stack([by[:, 1] - by[:, 2], by[:, 3] - by[:, 4]], dim=-1),
            ],
            dim=-2,
        ) / (2 * delta)
        return beta, jac

    for _ in range(steps):
        beta, jac = beta_and_jac(theta)
        r = target - beta
        det = jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
        safe = torch.where(det.abs() > 1e-12, det, torch.full_like(det, 1e-12))
        dx = (jac[:, 1, 1] * r[:, 0] - jac[:, 0, 1] * r[:, 1]) / safe
        dy = (-jac[:, 1, 0] * r[:, 0] + jac[:, 0, 0] * r[:, 1]) / safe
        step = torch.stack([dx, dy], dim=-1)
        norm = step.norm(dim=-1, keepdim=True)
        theta = theta + step * torch.clamp(h / torch.clamp(norm, min=1e-300), max=1.0)
    beta, jac = beta_and_jac(theta)
    det = jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
    return theta, (target - beta).norm(dim=-1), det


def find_images(
    deflect: Deflector | Sequence[Deflector],
    beta_x: float | Tensor,
    beta_y: float | Tensor,
    *,
    half_size: float,
    n_cells: int = 256,
    center: tuple[float, float] = (0.0, 0.0),
    min_magnification: float = 0.0,
    newton_steps: int = 12,
    tol: float | None = None,
    dtype: torch.dtype = torch.float64,
    source_chunk: int = 8,
) -> LensImages:
    """All images of point sources at ``(beta_x, beta_y)`` inside a square region.

    Parameters
    ----------
    deflect : callable or sequence of callables
        Deflection field(s) ``(x, y) -> (alpha_x, alpha_y)`` in arcsec, with per-lens
        parameters of batch size B (or 1).
    beta_x, beta_y : float or Tensor
        Source positions in arcsec: a number, ``(B,)`` or ``(B, S)`` (S sources per lens).
    half_size : float
        Half side of the searched square in arcsec, > 0 (images outside are not found).
    n_cells : int
        Cells per side, >= 8; ``h = 2 half_size / n_cells`` is the resolution limit.
    center : (float, float)
        Centre of the square in arcsec.
    min_magnification : float
        >= 0; images with ``|μ|`` below it are dropped from the result and the count.
    newton_steps : int
        >= 1 Newton iterations per hit.
    tol : float, optional
        Largest accepted ``|β(θ) − β_s|`` in arcsec after polishing; default ``1e-6 h``.
    dtype : torch.dtype
        Working precision (float64 recommended).
    source_chunk : int
        Sources tested at once (memory ``B × chunk × n_cells²``).

    Returns
    -------
    LensImages
        Positions, magnifications and counts, ``(B, S, K)`` / ``(B, S)``.
    """
    if not (isinstance(half_size, (int, float)) and math.isfinite(half_size) and half_size > 0):
        raise ValueError(f"{_OWNER}: 'half_size' must be a finite number > 0 arcsec")
    if isinstance(n_cells, bool) or not isinstance(n_cells, int) or n_cells < 8:
        raise ValueError(f"{_OWNER}: 'n_cells' must be an integer >= 8; got {n_cells!r}")
    if not (math.isfinite(min_magnification) and min_magnification >= 0):
        raise ValueError(f"{_OWNER}: 'min_magnification' must be a finite number >= 0")
    if isinstance(newton_steps, bool) or not isinstance(newton_steps, int) or newton_steps < 1:
        raise ValueError(f"{_OWNER}: 'newton_steps' must be an integer >= 1")
    total = _deflect_sum(deflect)
    sx, sy = _sources(beta_x, beta_y, dtype)
    h = 2.0 * half_size / n_cells
    tol = 1e-6 * h if tol is None else float(tol)
    # vertices: a PixelGrid of n_cells + 1 points per side centred on `center`
    vgrid = PixelGrid.square(n_cells + 1, h, center=(float(center[0]), float(center[1])))
    vx, vy = vgrid.coordinates(dtype=dtype)
    ax, ay = total(vx, vy)
    bvx, bvy = vx - ax, vy - ay
    if bvx.ndim == 2:
        bvx, bvy = bvx.unsqueeze(0), bvy.unsqueeze(0)
    n_batch = max(bvx.shape[0], sx.shape[0])
    if {bvx.shape[0], sx.shape[0]} - {1, n_batch}:
        raise ValueError(
            f"{_OWNER}: lens batch {bvx.shape[0]} and source batch {sx.shape[0]} differ"
        )
    bvx, bvy = bvx.expand(n_batch, -1, -1), bvy.expand(n_batch, -1, -1)
    sx, sy = sx.expand(n_batch, -1), sy.expand(n_batch, -1)
    n_src = sx.shape[1]
    idx = _hits(bvx, bvy, sx, sy, max(1, int(source_chunk)))
    if idx.shape[0] == 0:  # no image of any source inside the square
        empty = torch.zeros(n_batch, n_src, 0, dtype=dtype)
        return LensImages(empty, empty.clone(), empty.clone(), torch.zeros(n_batch, n_src).long())
    b_i, s_i, r_i, c_i = idx.unbind(-1)
    theta = torch.stack([c_i, r_i], dim=-1).to(dtype) * h + (0.5 * h)
    theta = theta + torch.stack([vx[0, 0], vy[0, 0]])
    target = torch.stack([sx[b_i, s_i], sy[b_i, s_i]], dim=-1)
    delta = 1e-4 * h
    theta, resid, det = _newton(total, theta, target, b_i, n_batch, h, newton_steps, delta)
    mu = 1.0 / torch.where(det == 0, torch.full_like(det, 1e-300), det)
    ok = (resid < tol) & torch.isfinite(theta).all(dim=-1)
    ok = ok & (mu.abs() >= min_magnification)
    # duplicates: an earlier accepted hit of the same (lens, source) within h
    group = b_i * n_src + s_i
    keep = ok.clone()
    m = theta.shape[0]
    if m:
        same = group[:, None] == group[None, :]
        close = (theta[:, None, :] - theta[None, :, :]).norm(dim=-1) < h
        earlier = torch.ones(m, m, dtype=torch.bool).tril(-1)
        keep = ok & ~(same & close & earlier & ok[None, :]).any(dim=1)
    count = torch.zeros(n_batch * n_src, dtype=torch.int64)
    count.index_add_(0, group[keep], torch.ones_like(group[keep]))
    count = count.reshape(n_batch, n_src)
    k_max = int(count.max()) if count.numel() else 0
    xs = torch.full((n_batch, n_src, k_max), math.nan, dtype=dtype)
    ys, mus = xs.clone(), xs.clone()
    if k_max:
        g = group[keep]
        slot, _ = _padded(g.sort().values, n_batch * n_src)
        order = torch.argsort(g, stable=True)
        sel_theta, sel_mu = theta[keep][order], mu[keep][order]
        gb, gs = g[order] // n_src, g[order] % n_src
        xs[gb, gs, slot] = sel_theta[:, 0]
        ys[gb, gs, slot] = sel_theta[:, 1]
        mus[gb, gs, slot] = sel_mu
    return LensImages(xs, ys, mus, count)


def count_images(deflect: Deflector | Sequence[Deflector], beta_x, beta_y, **kwargs) -> Tensor:
    """Number of images ``(B, S)`` (int64) of each source; see :func:`find_images`."""
    return find_images(deflect, beta_x, beta_y, **kwargs).count


def is_multiply_imaged(
    deflect: Deflector | Sequence[Deflector], beta_x, beta_y, **kwargs
) -> Tensor:
    """``(B,)`` bool: does any of the lens's trial sources have more than one image?"""
    return (count_images(deflect, beta_x, beta_y, **kwargs) > 1).any(dim=-1)
