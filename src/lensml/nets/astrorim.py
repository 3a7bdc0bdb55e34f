"""AstroRIM's LensParameterEncoder: observation → nine bounded lens parameters.

Walsh et al., "AstroRIM" §3.1.2, eqs. 6–15. The encoder maps an observed lens-plane image
``y_obs`` (B, 1, H, W) to

    Θ(y_obs) = {b, q, φ, x0, y0, γ, γ_φ, κ_s, r_s}

which condition the forward operator (:mod:`lensml.nets.astrorim_forward`). Architecture
(eqs. 7–13): four stages Conv3×3 → GroupNorm(8) → ReLU → MaxPool 2×2 with 32, 64, 96 and 128
channels, adaptive average pooling to 8×8, FC 8192 → 128 → 64 (ReLU), then one ``Linear(64, 1)``
head per parameter with a bounding activation (eqs. 14–15):

* ranges symmetric about 0 (φ, γ_φ, x0, y0): ``hi · tanh(raw)``;
* other ranges [lo, hi]: ``lo + (hi − lo) · sigmoid(raw)``.

Units and ranges (:data:`PAPER_RANGES`, the paper's list after eq. 6): lengths are in
**normalised image coordinates**, the field of view spanning [−1, 1] (``grid_sample``'s
convention, ``align_corners=False``), i.e. a length ``ℓ`` in arcsec is ``ℓ / L`` with the
half-field ``L = H · pixel_scale / 2`` (1.92″ for 96 pixels of 0.04″).

=========  =================  ==========================================================
name       paper range        meaning
=========  =================  ==========================================================
b          [0.01, 0.30]       SIE Einstein radius / L (lenstronomy's θ_E convention)
q          [0.2, 1.0]         SIE axis ratio
phi        [−π, π]            SIE major-axis angle, rad CCW from +x (π-periodic)
x0, y0     [−0.2, 0.2]        lens centre / L
gamma      [0.0, 0.2]         external shear modulus
gamma_phi  [−π, π]            external shear angle, rad (π-periodic)
kappa_s    [0.005, 0.5]       NFW convergence scale κ_s = ρ_s r_s / Σ_crit
r_s        [0.05, 0.5]        NFW scale radius / L
=========  =================  ==========================================================

:func:`labels_to_params` / :func:`params_to_labels` convert to and from the ``strong``
generator's labels (arcsec). The paper's ranges do not cover that generator's whole prior
(θ_E up to ~3″ is b up to ~1.6, its NFW r_s of 10–30″ is 5–15): pass ``ranges`` to widen them.

Initial values: each head's pre-activation gets a fixed offset (a buffer, so it survives
:func:`lensml.train.init.seeded_init`) that maps a zero head output to the paper's "mild"
start (§3.3.1: b ≈ 0.08, q ≈ 0.7) and the prior centres of eqs. 48–49 (γ 0.05, κ_s 0.05,
r_s 0.2; angles and centre 0) — :data:`PAPER_INIT`.

Parameter count: the architecture of eqs. 7–15 has 1,243,113 parameters (the FC 8192 → 128
alone holds 1,048,704), not the ~350 k of the paper's text, which cannot be reached with
eq. 12's layer; the equations are implemented as written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lensml.nets.blocks import check_int, check_int_list, check_map_input

__all__ = [
    "DIHEDRAL",
    "PAPER_INIT",
    "PAPER_RANGES",
    "PARAM_KINDS",
    "PARAM_NAMES",
    "LensParameterEncoder",
    "dihedral_copies",
    "dihedral_mean",
    "dihedral_params",
    "labels_to_params",
    "params_to_labels",
    "params_to_tensor",
    "symmetrised_params",
    "tensor_to_params",
]

#: Order of the nine parameters (the ``strong`` generator's label order).
PARAM_NAMES = ("b", "q", "phi", "x0", "y0", "gamma", "gamma_phi", "kappa_s", "r_s")
#: The paper's bounds (after eq. 6), normalised units (module docstring).
PAPER_RANGES: dict[str, tuple[float, float]] = {
    "b": (0.01, 0.30),
    "q": (0.2, 1.0),
    "phi": (-math.pi, math.pi),
    "x0": (-0.2, 0.2),
    "y0": (-0.2, 0.2),
    "gamma": (0.0, 0.2),
    "gamma_phi": (-math.pi, math.pi),
    "kappa_s": (0.005, 0.5),
    "r_s": (0.05, 0.5),
}
#: Values of the heads at zero output (§3.3.1 start, eqs. 48–49 prior centres).
PAPER_INIT: dict[str, float] = {
    "b": 0.08,
    "q": 0.7,
    "phi": 0.0,
    "x0": 0.0,
    "y0": 0.0,
    "gamma": 0.05,
    "gamma_phi": 0.0,
    "kappa_s": 0.05,
    "r_s": 0.2,
}
#: Parameters that are lengths (scaled by the half-field L between arcsec and normalised units).
_LENGTHS = ("b", "x0", "y0", "r_s")


def _symmetric(lo: float, hi: float) -> bool:
    return math.isclose(lo, -hi, rel_tol=1e-12, abs_tol=1e-15)


def _check_ranges(value: Any, owner: str) -> dict[str, tuple[float, float]]:
    """Paper ranges updated by ``value`` (mapping name → [lo, hi]); ValueError otherwise."""
    out = dict(PAPER_RANGES)
    if value is None:
        return out
    if not isinstance(value, Mapping):
        raise ValueError(f"{owner}: ranges must be a mapping name -> [lo, hi], got {value!r}")
    for name, pair in value.items():
        if name not in PAPER_RANGES:
            raise ValueError(f"{owner}: ranges: unknown parameter {name!r}; known {PARAM_NAMES}")
        ok = isinstance(pair, Sequence) and len(pair) == 2
        lo, hi = (float(pair[0]), float(pair[1])) if ok else (math.nan, math.nan)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(
                f"{owner}: ranges[{name!r}] must be [lo, hi] with lo < hi, got {pair!r}"
            )
        out[name] = (lo, hi)
    if out["q"][0] <= 0 or out["q"][1] > 1.0:
        raise ValueError(f"{owner}: ranges['q'] must lie in (0, 1], got {out['q']}")
    if out["r_s"][0] <= 0:
        raise ValueError(f"{owner}: ranges['r_s'] must be > 0, got {out['r_s']}")
    if out["b"][0] < 0 or out["gamma"][0] < 0 or out["kappa_s"][0] < 0:
        raise ValueError(f"{owner}: ranges of b, gamma and kappa_s must be >= 0")
    return out


def _inverse_activation(value: float, lo: float, hi: float) -> float:
    """Pre-activation giving ``value`` (clamped 1e-3 inside the range)."""
    eps = 1e-3 * (hi - lo)
    v = min(max(value, lo + eps), hi - eps)
    if _symmetric(lo, hi):
        return math.atanh(v / hi)
    t = (v - lo) / (hi - lo)
    return math.log(t / (1.0 - t))


class LensParameterEncoder(nn.Module):
    """CNN from an observation to the nine bounded lens parameters (eqs. 7–15).

    Parameters
    ----------
    in_channels : int
        Input channels (1: one band).
    channels : list of int
        Output channels of the Conv–GN–ReLU–MaxPool stages (paper: 32, 64, 96, 128); each must
        be divisible by ``groups``.
    groups : int
        GroupNorm groups (paper: 8).
    pool_size : int
        Side of the adaptive average pool (paper: 8).
    fc : list of int
        Hidden FC widths after flattening (paper: 128, 64), each followed by ReLU.
    ranges : mapping, optional
        Overrides of :data:`PAPER_RANGES` (normalised units), name → [lo, hi].
    init : mapping, optional
        Overrides of :data:`PAPER_INIT`: parameter values at zero head output.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 96, 128),
        groups: int = 8,
        pool_size: int = 8,
        fc: Sequence[int] = (128, 64),
        ranges: Mapping[str, Sequence[float]] | None = None,
        init: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        name = "LensParameterEncoder"
        self.in_channels = check_int(name, "in_channels", in_channels)
        chans = check_int_list(name, "channels", list(channels))
        groups = check_int(name, "groups", groups)
        if not chans or any(c % groups for c in chans):
            raise ValueError(f"{name}: channels {chans} must be non-empty multiples of {groups}")
        self.pool_size = check_int(name, "pool_size", pool_size)
        widths = check_int_list(name, "fc", list(fc))
        if not widths:
            raise ValueError(f"{name}: fc must list at least one hidden width")
        self.ranges = _check_ranges(ranges, name)
        start = dict(PAPER_INIT)
        for key, value in dict(init or {}).items():
            if key not in PAPER_INIT or not isinstance(value, int | float):
                raise ValueError(f"{name}: init must map parameter names to numbers, got {init!r}")
            start[key] = float(value)
        self.min_size = 2 ** len(chans)
        stages: list[nn.Module] = []
        c_in = self.in_channels
        for c in chans:
            stages += [
                nn.Conv2d(c_in, c, 3, padding=1),
                nn.GroupNorm(groups, c),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c_in = c
        self.features = nn.Sequential(*stages)
        layers: list[nn.Module] = []
        width = c_in * self.pool_size**2
        for h in widths:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.mlp = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({p: nn.Linear(width, 1) for p in PARAM_NAMES})
        offsets = [_inverse_activation(start[p], *self.ranges[p]) for p in PARAM_NAMES]
        self.register_buffer("head_offset", torch.tensor(offsets, dtype=torch.float32))

    def raw(self, y: Tensor) -> Tensor:
        """Unbounded head outputs ``(B, 9)`` (offsets included), in :data:`PARAM_NAMES` order."""
        check_map_input(y, "LensParameterEncoder", self.in_channels, min_size=self.min_size)
        h = self.features(y)
        z = F.adaptive_avg_pool2d(h, self.pool_size)
        f = self.mlp(torch.flatten(z, 1))
        out = torch.cat([self.heads[p](f) for p in PARAM_NAMES], dim=1)
        return out + self.head_offset.to(out.dtype)

    def bound(self, raw: Tensor) -> dict[str, Tensor]:
        """Apply each parameter's bounding activation to ``raw`` ``(B, 9)`` → dict of ``(B,)``."""
        out: dict[str, Tensor] = {}
        for i, p in enumerate(PARAM_NAMES):
            lo, hi = self.ranges[p]
            r = raw[:, i]
            out[p] = hi * torch.tanh(r) if _symmetric(lo, hi) else lo + (hi - lo) * torch.sigmoid(r)
        return out

    def forward(self, y: Tensor) -> dict[str, Tensor]:
        """``(B, C, H, W)`` observation → the nine parameters, each ``(B,)`` (normalised units).

        Raises
        ------
        ValueError
            For an input that is not a floating ``(B, in_channels, H, W)`` batch with
            ``H, W >= 2**len(channels)``.
        """
        return self.bound(self.raw(y))


def params_to_tensor(params: Mapping[str, Tensor]) -> Tensor:
    """Dict of nine ``(B,)`` tensors → ``(B, 9)`` in :data:`PARAM_NAMES` order."""
    missing = [p for p in PARAM_NAMES if p not in params]
    if missing:
        raise ValueError(f"params: missing {missing}; expected {PARAM_NAMES}")
    return torch.stack([torch.as_tensor(params[p]).reshape(-1) for p in PARAM_NAMES], dim=1)


def tensor_to_params(values: Tensor) -> dict[str, Tensor]:
    """``(B, 9)`` in :data:`PARAM_NAMES` order → dict of ``(B,)`` tensors."""
    if not isinstance(values, Tensor) or values.ndim != 2 or values.shape[1] != len(PARAM_NAMES):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"params tensor must have shape (B, 9) {PARAM_NAMES}; got {shape}")
    return {p: values[:, i] for i, p in enumerate(PARAM_NAMES)}


def _half_field(half_field: float | Tensor, like: Tensor) -> Tensor:
    lf = torch.as_tensor(half_field, dtype=like.dtype, device=like.device).reshape(-1)
    if not bool(torch.isfinite(lf).all()) or bool((lf <= 0).any()):
        raise ValueError(f"half_field must be finite and > 0 arcsec; got {half_field!r}")
    return lf


def labels_to_params(labels: Tensor, half_field: float | Tensor) -> dict[str, Tensor]:
    """``strong`` generator labels (arcsec) → encoder parameters (normalised units).

    Parameters
    ----------
    labels : Tensor
        ``(B, 9)``: b = θ_E (arcsec), q, phi (rad), x0, y0 (arcsec), gamma, gamma_phi (rad),
        kappa_s, r_s (arcsec; 0 without a halo).
    half_field : float or Tensor
        Half the image side ``L = H · pixel_scale / 2`` in arcsec, a number or ``(B,)``.

    Returns
    -------
    dict of Tensor
        Lengths (b, x0, y0, r_s) divided by L; the rest unchanged.
    """
    p = tensor_to_params(labels)
    lf = _half_field(half_field, labels)
    return {k: (v / lf if k in _LENGTHS else v) for k, v in p.items()}


def params_to_labels(params: Mapping[str, Tensor], half_field: float | Tensor) -> Tensor:
    """Inverse of :func:`labels_to_params`: ``(B, 9)`` labels in arcsec / rad."""
    t = params_to_tensor(params)
    lf = _half_field(half_field, t)
    cols = [t[:, i] * lf if p in _LENGTHS else t[:, i] for i, p in enumerate(PARAM_NAMES)]
    return torch.stack(cols, dim=1)


#: How each parameter transforms under the image's mirrors and quarter turns
#: (:class:`lensml.data.augment.LabelRules` kinds; b and r_s are invariant lengths).
PARAM_KINDS: dict[str, str] = {
    "phi": "angle",
    "x0": "position",
    "y0": "position",
    "gamma_phi": "angle",
}
#: The eight symmetries of a square image: (mirror x → −x first, then k quarter turns CCW).
DIHEDRAL: tuple[tuple[bool, int], ...] = tuple((m, k) for m in (False, True) for k in range(4))


def _param_rules() -> Any:
    from lensml.data.augment import LabelRules

    return LabelRules(PARAM_NAMES, PARAM_KINDS, position_scale=1.0, angle_period=math.pi)


def dihedral_copies(x: Tensor) -> Tensor:
    """The eight mirrored / turned copies of ``x`` ``(B, C, H, H)``, stacked ``(8 B, C, H, H)``
    in :data:`DIHEDRAL` order (the geometry of :mod:`lensml.data.augment`)."""
    from lensml.data.augment import rot90

    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"dihedral_copies: expected (B, C, H, H), got {tuple(x.shape)}")
    out = []
    for mirror, k in DIHEDRAL:
        t = x.flip(-1) if mirror else x  # x -> -x, as augment.flip(axis="x")
        out.append(rot90(t, None, None, k)[0] if k else t)
    return torch.cat(out)


def dihedral_mean(copies: Tensor) -> Tensor:
    """Inverse of :func:`dihedral_copies` followed by the mean: ``(8 B, C, H, H)`` maps, each
    block in its copy's frame, → ``(B, C, H, H)`` in the original frame."""
    from lensml.data.augment import rot90

    blocks = copies.reshape(len(DIHEDRAL), -1, *copies.shape[1:])
    acc = torch.zeros_like(blocks[0])
    for (mirror, k), t in zip(DIHEDRAL, blocks, strict=True):
        t = rot90(t, None, None, -k)[0] if k else t
        acc = acc + (t.flip(-1) if mirror else t)
    return acc / len(DIHEDRAL)


def dihedral_params(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Parameters ``(B,)`` of an image → those of its eight :func:`dihedral_copies` ``(8 B,)``."""
    from lensml.data.augment import flip, rot90

    rules, lab = _param_rules(), params_to_tensor(params)
    dummy = lab.new_zeros(lab.shape[0], 1, 1, 1)
    out = []
    for mirror, k in DIHEDRAL:
        t = flip(dummy, lab, rules, "x")[1] if mirror else lab
        out.append(rot90(dummy, t, rules, k)[1] if k else t)
    return tensor_to_params(torch.cat(out))


def _axis_mean(angle: Tensor, weight: Tensor) -> Tensor:
    """Weighted mean of π-periodic axis angles ``(K, B)`` through their doubled-angle vectors."""
    w = weight.clamp_min(1e-12)
    return 0.5 * torch.atan2((w * torch.sin(2 * angle)).sum(0), (w * torch.cos(2 * angle)).sum(0))


def symmetrised_params(encoder: nn.Module, y: Tensor) -> dict[str, Tensor]:
    """The encoder's parameters averaged over the eight mirror/quarter-turn copies of ``y``.

    Lensing commutes with rotations and mirrors about the optical axis, so the parameters of
    a turned or mirrored image are the turned or mirrored parameters (training augments with
    exactly these, §3.3.4). Each copy's estimate is mapped back to the frame of ``y``
    (:mod:`lensml.data.augment` rules: centre and angles turn, the rest are invariant) and
    the eight are combined: geometric mean of b and r_s, arithmetic mean of q, the centre,
    γ and κ_s, and the ellipticity- (shear-) weighted doubled-angle mean of φ (γ_φ). The
    result is exactly equivariant under the eight transforms of ``y`` (up to float rounding)
    and averages out part of a trained encoder's scatter; it costs eight encoder passes
    (one batch of 8 B).

    Parameters
    ----------
    encoder : LensParameterEncoder
        Maps ``(B, C, H, H)`` to the nine parameters (normalised units).
    y : Tensor
        ``(B, C, H, H)`` square observations.

    Returns
    -------
    dict of Tensor
        The nine ``(B,)`` parameters in the frame of ``y``.
    """
    from lensml.data.augment import flip, rot90

    rules, n = _param_rules(), y.shape[0]
    lab = params_to_tensor(encoder(dihedral_copies(y))).reshape(len(DIHEDRAL), n, -1)
    dummy = lab.new_zeros(n, 1, 1, 1)
    back = []
    for (mirror, k), t in zip(DIHEDRAL, lab, strict=True):  # undo the turn, then the mirror
        t = rot90(dummy, t, rules, -k)[1] if k else t
        back.append(flip(dummy, t, rules, "x")[1] if mirror else t)
    c = {name: v.reshape(len(DIHEDRAL), n) for name, v in tensor_to_params(
        torch.cat(back)).items()}  # fmt: skip
    e = (1 - c["q"]) / (1 + c["q"])
    return {
        "b": torch.exp(torch.log(c["b"]).mean(0)),
        "q": c["q"].mean(0),
        "phi": _axis_mean(c["phi"], e),
        "x0": c["x0"].mean(0),
        "y0": c["y0"].mean(0),
        "gamma": c["gamma"].mean(0),
        "gamma_phi": _axis_mean(c["gamma_phi"], c["gamma"]),
        "kappa_s": c["kappa_s"].mean(0),
        "r_s": torch.exp(torch.log(c["r_s"]).mean(0)),
    }
