"""Composable, seeded augmentations of (image, labels) with per-label transformation rules.

Geometry follows lensml's convention: ``image[..., i, j]`` sits at
``(x_j, y_i)``, x to the right with the column, y up with the row, pixel centres
on the grid points, the rotation/rescaling centre at the image centre
(``((W-1)/2, (H-1)/2)`` in pixels). Rotations are counter-clockwise from +x.

Label kinds (:class:`LabelRules`)
---------------------------------
``"scalar"``
    Unchanged (magnitudes, Sérsic index, masses, ...).
``"spin2"``
    Pairs such as (e1, e2) or (g1, g2), listed in order (first = component 1).
    A rotation by θ multiplies ``g1 + i g2`` by ``exp(2iθ)``; a mirror (x → −x
    or y → −y) flips the sign of component 2 (GalSim convention: g1 > 0
    stretches along x). Rescaling leaves them unchanged.
``"angle"``
    Position angle φ (radians, counter-clockwise from +x, defined modulo
    ``angle_period``, π for an ellipse): rotation φ → φ + θ; mirror x → −x:
    φ → π − φ; mirror y → −y: φ → −φ; all modulo the period.
``"angle_deg"``
    The same in degrees (period ``degrees(angle_period)``, 180° for an ellipse).
``"position"``
    Pairs (x0, y0) relative to the image centre in label units of
    ``position_scale`` per pixel (e.g. arcsec with the pixel scale): they rotate,
    mirror, shift and scale with the image.
``"size"``
    Lengths (effective radii, widths): multiplied by the rescaling factor.
``"flux"``
    Total fluxes: multiplied by the square of the rescaling factor (rescaling
    keeps the surface brightness per pixel, so the total grows as the area).
    Magnitudes are not supported as ``"flux"`` (add −5 log10 s yourself).

Transforms
----------
Functional forms (:func:`flip`, :func:`rot90`, :func:`shift`, :func:`rescale`)
take the parameters explicitly (a number or one value per item); the random
transforms (:class:`RandomFlip`, :class:`RandomRot90`, :class:`RandomShift`,
:class:`RandomRescale`, chained by :class:`Compose`) draw them from a
``torch.Generator`` given at construction or at call time — never from global
random state. Images are ``(C, H, W)`` or ``(B, C, H, W)``; labels ``(L,)`` or
``(B, L)``; each item of a batch gets its own draw.

Shifts are done in Fourier space (periodic boundary: what leaves one side enters
the other, which keeps noise statistics; exact for integer shifts, which use
:func:`torch.roll`). Rescaling interpolates bicubically about the centre with
zeros outside the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "KINDS",
    "Compose",
    "LabelRules",
    "RandomFlip",
    "RandomRescale",
    "RandomRot90",
    "RandomShift",
    "flip",
    "rescale",
    "rot90",
    "shift",
]

KINDS = ("scalar", "spin2", "angle", "angle_deg", "position", "size", "flux")


@dataclass(frozen=True)
class LabelRules:
    """How each label column transforms.

    Parameters
    ----------
    names : sequence of str
        Label columns, in order.
    kinds : mapping of str to str
        Kind of each label (see module docstring); unlisted labels are scalars.
        ``"spin2"`` and ``"position"`` labels pair up in the order of ``names``.
    position_scale : float
        Label units per pixel for ``"position"`` labels (e.g. arcsec / pixel),
        > 0; default 1 (positions in pixels).
    angle_period : float
        Period of ``"angle"`` labels in radians (default π).
    """

    names: tuple[str, ...]
    kinds: Mapping[str, str] = field(default_factory=dict)
    position_scale: float = 1.0
    angle_period: float = math.pi

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        unknown = [k for k in self.kinds if k not in self.names]
        if unknown:
            raise ValueError(
                f"LabelRules: kinds given for unknown labels {unknown}; names {self.names}"
            )
        bad = {k: v for k, v in self.kinds.items() if v not in KINDS}
        if bad:
            raise ValueError(f"LabelRules: unknown kind(s) {bad}; expected one of {KINDS}")
        for kind in ("spin2", "position"):
            if len(self.indices(kind)) % 2:
                raise ValueError(
                    f"LabelRules: {kind!r} labels must come in pairs, got {self.names_of(kind)}"
                )
        if not (self.position_scale > 0 and math.isfinite(self.position_scale)):
            raise ValueError(f"LabelRules: position_scale must be > 0, got {self.position_scale}")
        if not self.angle_period > 0:
            raise ValueError(f"LabelRules: angle_period must be > 0, got {self.angle_period}")

    def names_of(self, kind: str) -> list[str]:
        return [n for n in self.names if self.kinds.get(n, "scalar") == kind]

    def indices(self, kind: str) -> list[int]:
        return [i for i, n in enumerate(self.names) if self.kinds.get(n, "scalar") == kind]

    def pairs(self, kind: str) -> list[tuple[int, int]]:
        idx = self.indices(kind)
        return list(zip(idx[0::2], idx[1::2], strict=True))

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> LabelRules:
        """Rules of the ``"labels"`` target of a store manifest."""
        return cls(
            tuple(manifest["label_names"].get("labels", [])),
            dict(manifest.get("label_kinds", {})),
            position_scale=float(manifest.get("pixel_scale") or 1.0),
        )


# --------------------------------------------------------------------------- helpers


def _batch(image: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None, bool]:
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim == 3:
        image = image[None]
        labels = labels[None] if labels is not None else None
        single = True
    elif image.ndim == 4:
        single = False
    else:
        raise ValueError(f"image must be (C, H, W) or (B, C, H, W), got shape {tuple(image.shape)}")
    if labels is not None and (labels.ndim != 2 or labels.shape[0] != image.shape[0]):
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match image {tuple(image.shape)}"
        )
    return image, labels, single


def _unbatch(image: Tensor, labels: Tensor | None, single: bool) -> tuple[Tensor, Tensor | None]:
    if single:
        return image[0], (labels[0] if labels is not None else None)
    return image, labels


def _per_item(value: Any, b: int, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    t = torch.as_tensor(value, dtype=dtype or like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise ValueError(
            f"parameter must be a number or a ({b},) tensor, got shape {tuple(t.shape)}"
        )
    return t


def _check_labels(labels: Tensor | None, rules: LabelRules | None) -> None:
    if labels is None:
        return
    if rules is None:
        raise ValueError("labels given without LabelRules: say how each label transforms")
    if labels.shape[-1] != len(rules.names):
        raise ValueError(f"labels have {labels.shape[-1]} columns, rules name {len(rules.names)}")


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(mask.view(-1, *([1] * (a.ndim - 1))), a, b)


# --------------------------------------------------------------------------- functional


def flip(
    image: Tensor,
    labels: Tensor | None,
    rules: LabelRules | None,
    axis: Literal["x", "y"],
    mask: Tensor | bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Mirror x → −x (``axis="x"``, reverses columns) or y → −y (reverses rows).

    ``mask`` (bool or (B,) bool tensor) selects the items to flip.
    """
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    _check_labels(labels, rules)
    image, labels, single = _batch(image, labels)
    if isinstance(mask, bool) and not mask:  # nothing to flip (copies, as in every case)
        return _unbatch(image.clone(), None if labels is None else labels.clone(), single)
    m = _per_item(mask, image.shape[0], image, torch.bool)
    flipped = image.flip(-1 if axis == "x" else -2)
    # one choice for the whole batch (a plain bool): no per-item select
    image = flipped if isinstance(mask, bool) else _where(m, flipped, image)
    if labels is not None:
        new = labels.clone()
        for _, b in rules.pairs("spin2"):
            new[:, b] = -labels[:, b]
        for i in rules.indices("angle"):
            phi = (math.pi - labels[:, i]) if axis == "x" else -labels[:, i]
            new[:, i] = torch.remainder(phi, rules.angle_period)
        for i in rules.indices("angle_deg"):
            phi = (180.0 - labels[:, i]) if axis == "x" else -labels[:, i]
            new[:, i] = torch.remainder(phi, math.degrees(rules.angle_period))
        for a, b in rules.pairs("position"):
            c = a if axis == "x" else b
            new[:, c] = -labels[:, c]
        labels = _where(m, new, labels)
    return _unbatch(image, labels, single)


def rot90(
    image: Tensor, labels: Tensor | None, rules: LabelRules | None, k: int | Tensor
) -> tuple[Tensor, Tensor | None]:
    """Rotate by ``k`` × 90° counter-clockwise (k a number or one integer per item).

    Needs square images (H == W).
    """
    _check_labels(labels, rules)
    image, labels, single = _batch(image, labels)
    if image.shape[-1] != image.shape[-2]:
        raise ValueError(f"rot90 needs square images, got {tuple(image.shape[-2:])}")
    b = image.shape[0]
    kk = torch.remainder(_per_item(k, b, image, torch.long), 4)
    if isinstance(k, int):  # one rotation for the whole batch: no per-item select
        out = torch.rot90(image, k % 4, dims=(-1, -2)) if k % 4 else image.clone()
    else:
        out = image
        for r in (1, 2, 3):
            out = _where(kk == r, torch.rot90(image, r, dims=(-1, -2)), out)
    if labels is not None:
        lab = labels
        cos_t = torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=lab.dtype, device=lab.device)[kk]
        sin_t = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=lab.dtype, device=lab.device)[kk]
        cos_2t = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=lab.dtype, device=lab.device)[kk]
        new = lab.clone()
        for a, c in rules.pairs("spin2"):
            new[:, a] = cos_2t * lab[:, a]
            new[:, c] = cos_2t * lab[:, c]
        for i in rules.indices("angle"):
            new[:, i] = torch.remainder(
                lab[:, i] + kk.to(lab.dtype) * (math.pi / 2), rules.angle_period
            )
        for i in rules.indices("angle_deg"):
            new[:, i] = torch.remainder(
                lab[:, i] + kk.to(lab.dtype) * 90.0, math.degrees(rules.angle_period)
            )
        for a, c in rules.pairs("position"):
            new[:, a] = cos_t * lab[:, a] - sin_t * lab[:, c]
            new[:, c] = sin_t * lab[:, a] + cos_t * lab[:, c]
        labels = new
    return _unbatch(out, labels, single)


def shift(
    image: Tensor,
    labels: Tensor | None,
    rules: LabelRules | None,
    dx: float | Tensor,
    dy: float | Tensor,
) -> tuple[Tensor, Tensor | None]:
    """Translate by (dx, dy) pixels (+x right, +y up = increasing row), periodically.

    Integer shifts are exact (:func:`torch.roll`); others use a Fourier phase
    ramp (exact for band-limited images).
    """
    _check_labels(labels, rules)
    image, labels, single = _batch(image, labels)
    b, _, h, w = image.shape
    sx = _per_item(dx, b, image, torch.float64)
    sy = _per_item(dy, b, image, torch.float64)
    if bool((sx == sx.round()).all() and (sy == sy.round()).all()):
        out = torch.stack(
            [torch.roll(image[i], (int(sy[i]), int(sx[i])), dims=(-2, -1)) for i in range(b)]
        )
    else:
        fy = torch.fft.fftfreq(h, dtype=torch.float64, device=image.device)
        fx = torch.fft.fftfreq(w, dtype=torch.float64, device=image.device)
        phase = (
            -2
            * math.pi
            * (sy[:, None, None] * fy[None, :, None] + sx[:, None, None] * fx[None, None, :])
        )
        ramp = torch.polar(torch.ones_like(phase), phase)[:, None]
        spec = torch.fft.fft2(
            image.to(torch.float64 if image.dtype == torch.float64 else torch.float32)
        )
        out = torch.fft.ifft2(spec * ramp.to(spec.dtype)).real.to(image.dtype)
    if labels is not None:
        new = labels.clone()
        for a, c in rules.pairs("position"):
            new[:, a] = labels[:, a] + (sx * rules.position_scale).to(labels.dtype)
            new[:, c] = labels[:, c] + (sy * rules.position_scale).to(labels.dtype)
        labels = new
    return _unbatch(out, labels, single)


def rescale(
    image: Tensor, labels: Tensor | None, rules: LabelRules | None, factor: float | Tensor
) -> tuple[Tensor, Tensor | None]:
    """Magnify by ``factor`` (> 0) about the image centre: new(p) = old(p / factor).

    Bicubic interpolation, zeros outside the image; surface brightness per pixel
    is kept, so ``"flux"`` labels scale by factor², ``"size"`` and ``"position"``
    labels by factor.
    """
    import torch.nn.functional as F

    _check_labels(labels, rules)
    image, labels, single = _batch(image, labels)
    b = image.shape[0]
    s = _per_item(factor, b, image)
    if not bool((s > 0).all()):
        raise ValueError(f"rescale factor must be > 0, got {s.tolist()}")
    theta = torch.zeros(b, 2, 3, dtype=image.dtype, device=image.device)
    theta[:, 0, 0] = 1 / s
    theta[:, 1, 1] = 1 / s
    grid = F.affine_grid(theta, list(image.shape), align_corners=True)
    out = F.grid_sample(image, grid, mode="bicubic", padding_mode="zeros", align_corners=True)
    if labels is not None:
        new = labels.clone()
        sl = s.to(labels.dtype)
        for i in rules.indices("size") + [j for p in rules.pairs("position") for j in p]:
            new[:, i] = labels[:, i] * sl
        for i in rules.indices("flux"):
            new[:, i] = labels[:, i] * sl**2
        labels = new
    return _unbatch(out, labels, single)


# --------------------------------------------------------------------------- random transforms


class Transform:
    """Base of the random transforms: draw parameters per item, then apply.

    Parameters
    ----------
    rules : LabelRules, optional
        Needed when labels are passed.
    generator : torch.Generator, optional
        Default source of randomness; a generator passed at call time wins.
    """

    def __init__(
        self, rules: LabelRules | None = None, generator: torch.Generator | None = None
    ) -> None:
        self.rules = rules
        self.generator = generator

    def _gen(self, generator: torch.Generator | None) -> torch.Generator:
        g = generator if generator is not None else self.generator
        if g is None:
            raise ValueError(
                f"{type(self).__name__} needs a torch.Generator (at construction or call time); "
                "lensml never draws from global random state"
            )
        return g

    def __call__(
        self, image: Tensor, labels: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        g = self._gen(generator)
        b = image.shape[0] if image.ndim == 4 else 1
        return self.apply(image, labels, self.draw(b, g))

    def draw(self, b: int, generator: torch.Generator) -> dict[str, Tensor]:
        raise NotImplementedError

    def apply(
        self, image: Tensor, labels: Tensor | None, params: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError


class RandomFlip(Transform):
    """Mirror along ``axis`` ("x": x → −x, "y": y → −y) with probability ``p``."""

    def __init__(self, axis: Literal["x", "y"] = "x", p: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if axis not in ("x", "y") or not 0 <= p <= 1:
            raise ValueError(f"RandomFlip needs axis 'x' or 'y' and 0 <= p <= 1, got {axis!r}, {p}")
        self.axis, self.p = axis, p

    def draw(self, b: int, generator: torch.Generator) -> dict[str, Tensor]:
        return {"mask": torch.rand(b, generator=generator) < self.p}

    def apply(
        self, image: Tensor, labels: Tensor | None, params: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor | None]:
        mask = params["mask"] if image.ndim == 4 else params["mask"][0]
        return flip(image, labels, self.rules, self.axis, mask.to(image.device))


class RandomRot90(Transform):
    """Rotate by k × 90° with k uniform in {0, 1, 2, 3}."""

    def draw(self, b: int, generator: torch.Generator) -> dict[str, Tensor]:
        return {"k": torch.randint(0, 4, (b,), generator=generator)}

    def apply(
        self, image: Tensor, labels: Tensor | None, params: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor | None]:
        k = params["k"] if image.ndim == 4 else params["k"][0]
        return rot90(image, labels, self.rules, k.to(image.device))


class RandomShift(Transform):
    """Shift by (dx, dy) uniform in [−max_shift, max_shift] pixels (integers if ``integer``)."""

    def __init__(self, max_shift: float = 1.0, integer: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not max_shift >= 0:
            raise ValueError(f"RandomShift: max_shift must be >= 0 pixels, got {max_shift}")
        self.max_shift, self.integer = max_shift, integer

    def draw(self, b: int, generator: torch.Generator) -> dict[str, Tensor]:
        if self.integer:
            m = int(self.max_shift)
            d = torch.randint(-m, m + 1, (2, b), generator=generator).to(torch.float64)
        else:
            d = (
                2 * torch.rand(2, b, generator=generator, dtype=torch.float64) - 1
            ) * self.max_shift
        return {"dx": d[0], "dy": d[1]}

    def apply(
        self, image: Tensor, labels: Tensor | None, params: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor | None]:
        dx, dy = params["dx"], params["dy"]
        if image.ndim == 3:
            dx, dy = dx[0], dy[0]
        return shift(image, labels, self.rules, dx, dy)


class RandomRescale(Transform):
    """Magnify by a factor log-uniform in [min_factor, max_factor]."""

    def __init__(self, min_factor: float = 0.9, max_factor: float = 1.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 < min_factor <= max_factor:
            raise ValueError(
                f"RandomRescale needs 0 < min_factor <= max_factor, got {min_factor}, {max_factor}"
            )
        self.min_factor, self.max_factor = min_factor, max_factor

    def draw(self, b: int, generator: torch.Generator) -> dict[str, Tensor]:
        lo, hi = math.log(self.min_factor), math.log(self.max_factor)
        return {
            "factor": torch.exp(
                lo + (hi - lo) * torch.rand(b, generator=generator, dtype=torch.float64)
            )
        }

    def apply(
        self, image: Tensor, labels: Tensor | None, params: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor | None]:
        f = params["factor"] if image.ndim == 4 else params["factor"][0]
        return rescale(image, labels, self.rules, f.to(image.dtype))


class Compose:
    """Apply transforms in order, all drawing from one generator.

    Parameters
    ----------
    transforms : sequence of Transform
        Applied left to right.
    rules : LabelRules, optional
        Given to every transform that has none.
    generator : torch.Generator, optional
        Default generator (a generator passed at call time wins).
    """

    def __init__(
        self,
        transforms: Sequence[Transform],
        rules: LabelRules | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if t.rules is None:
                t.rules = rules
        self.rules = rules
        self.generator = generator

    def __call__(
        self, image: Tensor, labels: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        g = generator if generator is not None else self.generator
        if g is None:
            raise ValueError("Compose needs a torch.Generator (at construction or call time)")
        for t in self.transforms:
            image, labels = t(image, labels, g)
        return image, labels

    def for_samples(
        self, image_key: str = "image", label_key: str = "labels"
    ) -> Callable[[dict[str, Tensor], torch.Generator], dict[str, Tensor]]:
        """A ``transform(sample, generator)`` for :mod:`lensml.data.datasets`."""

        def apply(sample: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
            out = dict(sample)
            image, labels = self(sample[image_key], sample.get(label_key), generator)
            out[image_key] = image
            if labels is not None:
                out[label_key] = labels
            return out

        return apply
