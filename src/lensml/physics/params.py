"""Parameter declarations and validation shared by every physics function.

A parameter is declared once as a :class:`ParamSpec` (name, unit, valid range,
meaning); the same declaration validates inputs, documents the profile and later
serves label normalisation and priors in the simulators.

Conventions
-----------
A parameter is a Python number or a tensor of shape ``(B,)`` (one value per item
of the batch). :func:`as_param` turns it into a tensor of shape ``(B, 1, 1)`` that
broadcasts against coordinate grids of shape ``(H, W)`` or ``(B, H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Number = float | int
ParamLike = Number | Tensor


@dataclass(frozen=True)
class ParamSpec:
    """Declaration of one physical parameter.

    Parameters
    ----------
    name : str
        Name used in function signatures and configs.
    unit : str
        Physical unit (``"arcsec"``, ``"rad"``, ``"dimensionless"``, ...).
    low, high : float
        Bounds of the valid range.
    low_open, high_open : bool
        Whether the bound itself is excluded.
    doc : str
        One-line meaning, reused in docstrings and error messages.
    """

    name: str
    unit: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    doc: str = ""

    @property
    def range_str(self) -> str:
        """Interval notation of the valid range, e.g. ``(0, 1]``."""
        left = "(" if self.low_open or math.isinf(self.low) else "["
        right = ")" if self.high_open or math.isinf(self.high) else "]"
        return f"{left}{_fmt(self.low)}, {_fmt(self.high)}{right}"

    def describe(self) -> str:
        """Human-readable description: name, meaning, unit and range."""
        meaning = f" ({self.doc})" if self.doc else ""
        return f"{self.name}{meaning} in {self.range_str} {self.unit}"


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:g}"


def _to_tensor(value: ParamLike, name: str, owner: str, like: Tensor | None) -> Tensor:
    dtype = like.dtype if like is not None and like.is_floating_point() else None
    device = like.device if like is not None else None
    if isinstance(value, Tensor):
        t = value
        if dtype is not None and t.dtype != dtype:
            t = t.to(dtype)
        if device is not None and t.device != device:
            t = t.to(device)
        if not t.is_floating_point():
            t = t.to(dtype or torch.get_default_dtype())
        return t
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{owner}: parameter {name!r} must be a number or a (B,) tensor; "
            f"got {type(value).__name__}"
        )
    return torch.tensor(float(value), dtype=dtype or torch.get_default_dtype(), device=device)


def check_value(value: Tensor, spec: ParamSpec, owner: str) -> None:
    """Raise ``ValueError`` if ``value`` is not finite or outside ``spec``'s range."""
    if value.numel() == 0:
        raise ValueError(f"{owner}: parameter {spec.name!r} is empty; expected {spec.describe()}")
    with torch.no_grad():
        v = value.detach()
        if not bool(torch.isfinite(v).all()):
            raise ValueError(
                f"{owner}: parameter {spec.name!r} contains NaN or inf; expected {spec.describe()}"
            )
        lo_bad = (v <= spec.low) if spec.low_open else (v < spec.low)
        hi_bad = (v >= spec.high) if spec.high_open else (v > spec.high)
        bad = lo_bad | hi_bad
        if bool(bad.any()):
            got = v[bad].flatten()[0].item()
            raise ValueError(
                f"{owner}: parameter {spec.name!r} must be in {spec.range_str} {spec.unit}"
                f"{' (' + spec.doc + ')' if spec.doc else ''}; got {got:g}"
            )


def as_param(
    value: ParamLike,
    spec: ParamSpec,
    owner: str,
    like: Tensor | None = None,
    ndim: int = 3,
) -> Tensor:
    """Validate a parameter and shape it for broadcasting against images.

    Parameters
    ----------
    value : float or Tensor
        A number, a 0-d tensor or a ``(B,)`` tensor.
    spec : ParamSpec
        The declaration to check against (finite and inside the range).
    owner : str
        Name of the profile or function, used in the error message.
    like : Tensor, optional
        Tensor whose dtype and device the result takes.
    ndim : int
        Number of dimensions of the result: ``(B, 1, ..., 1)``; 3 broadcasts against
        ``(B, H, W)`` maps, 4 against ``(B, C, H, W)`` images, 1 gives ``(B,)``.

    Returns
    -------
    Tensor
        Shape ``(B,) + (1,) * (ndim - 1)`` (``B = 1`` for a number).

    Raises
    ------
    ValueError
        Naming the parameter and its allowed range, if the value is NaN/inf, out of
        range, or not a scalar or 1-d tensor.
    """
    t = _to_tensor(value, spec.name, owner, like)
    if t.ndim > 1:
        raise ValueError(
            f"{owner}: parameter {spec.name!r} must be a number or a (B,) tensor; "
            f"got shape {tuple(t.shape)}"
        )
    check_value(t, spec, owner)
    return t.reshape((-1,) + (1,) * (ndim - 1))


def as_params(
    values: Mapping[str, ParamLike],
    specs: Sequence[ParamSpec],
    owner: str,
    like: Tensor | None = None,
    ndim: int = 3,
) -> dict[str, Tensor]:
    """Validate several parameters at once and check their batch sizes agree.

    Every spec must have a value in ``values``; the batch sizes must be equal or 1.
    """
    out: dict[str, Tensor] = {}
    for spec in specs:
        if spec.name not in values:
            raise ValueError(f"{owner}: missing parameter {spec.name!r} ({spec.describe()})")
        out[spec.name] = as_param(values[spec.name], spec, owner, like=like, ndim=ndim)
    check_batch(out, owner)
    return out


def check_batch(params: Mapping[str, Tensor], owner: str) -> int:
    """Return the common batch size of ``(B, ...)`` tensors; raise if they disagree."""
    sizes = {name: t.shape[0] for name, t in params.items() if t.shape[0] != 1}
    distinct = set(sizes.values())
    if len(distinct) > 1:
        desc = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise ValueError(f"{owner}: parameters have different batch sizes ({desc})")
    return distinct.pop() if distinct else 1


def check_coords(x: Tensor, y: Tensor, owner: str) -> None:
    """Check that coordinate grids are floating tensors of equal shape with ndim 2 or 3."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{owner}: coordinate {name!r} must be a floating-point tensor")
        if t.ndim not in (2, 3):
            raise ValueError(
                f"{owner}: coordinate {name!r} must have shape (H, W) or (B, H, W); "
                f"got {tuple(t.shape)}"
            )
    if x.shape != y.shape:
        raise ValueError(
            f"{owner}: coordinates x and y must have the same shape; "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )


# Commonly reused declarations -------------------------------------------------------
CENTER_X = ParamSpec("x0", "arcsec", doc="centre, x (right)")
CENTER_Y = ParamSpec("y0", "arcsec", doc="centre, y (up)")
AXIS_RATIO = ParamSpec("q", "dimensionless", 0.0, 1.0, low_open=True, doc="minor/major axis ratio")
ANGLE = ParamSpec("phi", "rad", doc="position angle of the major axis, counter-clockwise from +x")
EINSTEIN_RADIUS = ParamSpec("theta_e", "arcsec", 0.0, math.inf, doc="Einstein radius")


def check_pixel_scale(pixel_scale: float | Tensor, owner: str, unit: str = "arcsec") -> float:
    """Return a pixel scale as a float; raise ``ValueError`` unless it is finite and > 0.

    A one-element tensor is accepted. ``unit`` only enters the message.
    """
    if isinstance(pixel_scale, Tensor) and pixel_scale.numel() == 1:
        pixel_scale = float(pixel_scale)
    if (
        isinstance(pixel_scale, bool)
        or not isinstance(pixel_scale, (int, float))
        or not math.isfinite(pixel_scale)
        or pixel_scale <= 0
    ):
        raise ValueError(
            f"{owner}: 'pixel_scale' must be a finite number in (0, inf) {unit}; "
            f"got {pixel_scale!r}"
        )
    return float(pixel_scale)


def as_maps(value: Tensor, name: str, owner: str, min_size: int = 1) -> Tensor:
    """Check a finite real map of shape ``(H, W)`` or ``(B, H, W)``; return it as ``(B, H, W)``.

    Raises ``ValueError`` naming ``name`` for a non-floating tensor, another rank, a side
    shorter than ``min_size`` pixels, or NaN/inf values.
    """
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise ValueError(
            f"{owner}: {name!r} must be a floating-point tensor of shape (H, W) or (B, H, W)"
        )
    if value.ndim not in (2, 3) or min(value.shape[-2:]) < min_size:
        raise ValueError(
            f"{owner}: {name!r} must have shape (H, W) or (B, H, W) with H, W >= {min_size}; "
            f"got {tuple(value.shape)}"
        )
    if not bool(torch.isfinite(value.detach()).all()):
        raise ValueError(f"{owner}: {name!r} contains NaN or inf; expected finite values")
    return value if value.ndim == 3 else value.unsqueeze(0)
