"""Training-time augmentation of shear stamps (CNN shear paper §4.2) and per-stamp normalisation.

The paper enlarges its training set with (ii) a uniform rescaling of the stamps by up to ±15 %,
(iii) a uniform shift of the post-shear centroid by up to ±7 pixels in x and y, and (iv) a
mirror with probability 1/2 and a rotation by a uniform angle θ ∈ [0, 2π]; the labels follow
the true shear's transformation rules — a rotation by θ multiplies g1 + i g2 by exp(2iθ), a
mirror flips the sign of g2, and rescaling or shifting leaves g unchanged (§4.3). Every stamp
is then normalised by subtracting its mean and dividing by its standard deviation.

:class:`ShearAugment` does the same with :mod:`lensml.data.augment` (its :func:`rescale`,
:func:`shift`, :func:`flip`, :func:`rot90` and their spin-2 label rules) and
:func:`normalise_stamps`; :class:`ShearAugmentDataset` wraps a training set with a
per-item generator seeded from (seed, epoch, index), like
:class:`lensml.pipelines.clusters.ClusterMapDataset` (call :meth:`set_epoch` every epoch).

Choices (and why)
-----------------
* **Rotation**: the paper rotates by arbitrary angles. By default (``rotation="rot90"``) the
  rotation is by a uniform multiple of 90°, which is exact (no interpolation) and together
  with the mirror spans the eight symmetries used by the paper's eq. 14; the ``shear``
  generator already draws every galaxy at a uniformly random orientation, so the only thing
  continuous rotation adds is the rotation of the label square [−0.2, 0.2]² into a disk.
  ``rotation="continuous"`` does the paper's θ ~ U(0, 2π) by bicubic interpolation of the
  noiseless stamp.
* **Noise** (``mode="split"``, used whenever the sample holds the noiseless ``"clean"``
  stamp, as the ``shear`` generator's do): the geometric transforms act on the noiseless stamp
  and the original noise realisation ``image − clean`` is added back untouched, as in the
  paper, whose augmentations were applied before the background noise was added. The noise
  therefore keeps exactly its simulated correlation and level; rescaling changes the galaxy's
  flux by s² at constant surface brightness, so its S/N changes by s. In ``mode="stamp"``
  (no clean stamp available) the noisy stamp is transformed as a whole, as a periodic image:
  rescaling then also magnifies the noise texture (its correlation length scales by s), the
  shift is periodic (galaxy light leaving one side re-enters on the other), and a continuous
  rotation interpolates the noise and leaves zeros in the corners — use split mode for
  training.
* **Scale** is uniform in [1 − scale_range, 1 + scale_range] as in the paper (not
  log-uniform), applied by band-limited interpolation (:func:`rescale_fourier`) rather than
  :func:`lensml.data.augment.rescale`'s bicubic one, whose kernel shrinks the second moments
  of these ~2-pixel-PSF stamps by a few per cent (an ellipticity change at fixed label).
  Rescaling the PSF-convolved stamp also dilates its PSF by s: an optional ``"psf"`` in the
  sample is rescaled (and renormalised to unit sum), mirrored and rotated along with the
  galaxy, never shifted.
* **Shift** in split mode is non-periodic: the noiseless stamp is zero-padded, shifted
  (integer part exactly, fractional part by a Fourier phase ramp) and cropped, so light leaving
  the stamp is lost and zeros enter (galaxies are truncated by the stamp edge anyway).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from lensml.data import augment as aug

__all__ = [
    "SHEAR_RULES",
    "ShearAugment",
    "ShearAugmentDataset",
    "normalise_stamps",
    "rescale_fourier",
    "rotate",
]

#: Label rules of (g1, g2): a spin-2 pair.
SHEAR_RULES = aug.LabelRules(("g1", "g2"), {"g1": "spin2", "g2": "spin2"})


def normalise_stamps(stamps: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-stamp normalisation: subtract each stamp's mean, divide by its standard deviation.

    Parameters
    ----------
    stamps : Tensor
        ``(B, C, H, W)`` (statistics over C, H, W of each item) or a single ``(C, H, W)``.
    eps : float
        Floor of the standard deviation (a constant stamp becomes all zeros).

    Returns
    -------
    Tensor
        Same shape and dtype (population standard deviation, ``unbiased=False``).

    Raises
    ------
    ValueError
        For another number of dimensions or non-finite pixels (naming the items).
    """
    if not isinstance(stamps, Tensor) or stamps.ndim not in (3, 4):
        shape = tuple(stamps.shape) if isinstance(stamps, Tensor) else type(stamps).__name__
        raise ValueError(f"normalise_stamps: stamps must be (B, C, H, W) or (C, H, W), got {shape}")
    x = stamps if stamps.ndim == 4 else stamps[None]
    finite = torch.isfinite(x).flatten(1).all(1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()[:10].tolist()
        raise ValueError(f"normalise_stamps: non-finite pixels in stamp(s) {bad}")
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False).clamp_min(eps)
    out = (x - mean) / std
    return out if stamps.ndim == 4 else out[0]


def rotate(image: Tensor, labels: Tensor | None, theta: Tensor | float) -> tuple[Tensor, Any]:
    """Rotate ``(B, C, H, W)`` images by ``theta`` (rad, counter-clockwise, one per item or a
    number) about the centre, bicubic, zeros outside; spin-2 labels ``(B, 2)`` (g1, g2) are
    rotated by 2θ. ``new(p) = old(R(−θ) p)`` in lensml's y-up pixel frame."""
    b = image.shape[0]
    t = torch.as_tensor(theta, dtype=image.dtype, device=image.device).expand(b)
    c, s = torch.cos(t), torch.sin(t)
    mat = torch.zeros(b, 2, 3, dtype=image.dtype, device=image.device)
    # affine_grid maps output (x, y) to input; columns are x, rows y (y up with the row index).
    mat[:, 0, 0], mat[:, 0, 1], mat[:, 1, 0], mat[:, 1, 1] = c, s, -s, c
    grid = F.affine_grid(mat, list(image.shape), align_corners=True)
    out = F.grid_sample(image, grid, mode="bicubic", padding_mode="zeros", align_corners=True)
    if labels is None:
        return out, None
    c2, s2 = torch.cos(2 * t).to(labels.dtype), torch.sin(2 * t).to(labels.dtype)
    g1, g2 = labels[:, 0], labels[:, 1]
    return out, torch.stack([c2 * g1 - s2 * g2, s2 * g1 + c2 * g2], dim=1)


def _shift_zero(image: Tensor, dx: Tensor, dy: Tensor, pad: int) -> Tensor:
    """Non-periodic shift by (dx, dy) pixels: zero-pad, shift (exact integer roll + Fourier
    fractional part, via :func:`lensml.data.augment.shift`), crop."""
    big = F.pad(image, (pad, pad, pad, pad))
    ix, iy = torch.round(dx), torch.round(dy)
    big = aug.shift(big, None, None, ix, iy)[0]
    fx, fy = dx - ix, dy - iy
    if bool((fx != 0).any() or (fy != 0).any()):
        big = aug.shift(big, None, None, fx, fy)[0]
    return big[..., pad:-pad, pad:-pad]


def _dirichlet(u: Tensor, n: int) -> Tensor:
    """Periodic sinc: the trigonometric interpolation kernel of an n-periodic sequence,
    sin(πu) / (n tan(πu/n)) for even n, sin(πu) / (n sin(πu/n)) for odd n; 1 at u ≡ 0."""
    w = torch.remainder(u + n / 2, float(n)) - n / 2  # in [-n/2, n/2)
    den = n * (torch.tan(math.pi * w / n) if n % 2 == 0 else torch.sin(math.pi * w / n))
    small = w.abs() < 1e-9
    return torch.where(
        small, torch.ones_like(w), torch.sin(math.pi * w) / torch.where(small, 1.0, den)
    )


def rescale_fourier(image: Tensor, factor: Tensor | float, periodic: bool = False) -> Tensor:
    """Magnify ``(B, C, H, W)`` images by ``factor`` about the centre, new(p) = old(p / s),
    by band-limited (trigonometric) interpolation, separably along x and y.

    Unlike bicubic interpolation (PyTorch's kernel, a = −0.75, which shrinks the second
    moments of a 1.5-pixel-σ stamp by ~4 % at s = 1.15 and so changes its ellipticity), this
    preserves the moments of band-limited stamps. ``periodic=False`` zero-pads by half the
    stamp first (zeros enter when shrinking); ``periodic=True`` treats the stamp as periodic
    (a noise field stays stationary). Surface brightness is kept (flux scales by s²).
    """
    b, _, h, w = image.shape
    s = torch.as_tensor(factor, dtype=image.dtype, device=image.device).expand(b)
    pad = 0 if periodic else max(h, w) // 2
    x = F.pad(image, (pad, pad, pad, pad)) if pad else image

    def matrix(n_out: int, n_in: int) -> Tensor:
        pos = torch.arange(n_out, dtype=image.dtype, device=image.device) - (n_out - 1) / 2
        t = pos[None, :] / s[:, None] + (n_out - 1) / 2 + pad  # (B, n_out) input positions
        j = torch.arange(n_in, dtype=image.dtype, device=image.device)
        return _dirichlet(t[:, :, None] - j[None, None, :], n_in)  # (B, n_out, n_in)

    my, mx = matrix(h, h + 2 * pad), matrix(w, w + 2 * pad)
    return torch.einsum("bij,bcjk,blk->bcil", my, x, mx)


@dataclass
class ShearAugment:
    """The paper's §4.2 augmentation + normalisation as a ``transform(sample, generator)``.

    Parameters
    ----------
    scale_range : float
        Scale factor s ~ U(1 − scale_range, 1 + scale_range), in [0, 0.9] (paper: 0.15).
    max_shift : float
        Centroid shift dx, dy ~ U(−max_shift, max_shift) pixels, >= 0 (paper: 7).
    mirror_p : float
        Probability of the mirror y → −y (g2 → −g2), in [0, 1] (paper: 0.5).
    rotation : {"rot90", "continuous", "none"}
        Rotation by k × 90° with k uniform in {0, 1, 2, 3}, by θ ~ U(0, 2π) (the paper's), or
        none.
    normalise : bool
        Apply :func:`normalise_stamps` to the output image.
    mode : {"auto", "split", "stamp"}
        "split": transform the noiseless ``"clean"`` stamp and add the noise back (requires
        ``"clean"``); "stamp": transform the noisy stamp; "auto": split when ``"clean"`` is
        in the sample. See the module docstring.
    """

    scale_range: float = 0.15
    max_shift: float = 7.0
    mirror_p: float = 0.5
    rotation: Literal["rot90", "continuous", "none"] = "rot90"
    normalise: bool = True
    mode: Literal["auto", "split", "stamp"] = "auto"

    def __post_init__(self) -> None:
        if not 0 <= self.scale_range <= 0.9:
            raise ValueError(
                f"ShearAugment: scale_range must be in [0, 0.9], got {self.scale_range}"
            )
        if not (0 <= self.max_shift < math.inf):
            raise ValueError(f"ShearAugment: max_shift must be >= 0 pixels, got {self.max_shift}")
        if not 0 <= self.mirror_p <= 1:
            raise ValueError(f"ShearAugment: mirror_p must be in [0, 1], got {self.mirror_p}")
        if self.rotation not in ("rot90", "continuous", "none"):
            raise ValueError(
                f"ShearAugment: rotation must be 'rot90', 'continuous' or 'none', got "
                f"{self.rotation!r}"
            )
        if self.mode not in ("auto", "split", "stamp"):
            raise ValueError(
                f"ShearAugment: mode must be 'auto', 'split' or 'stamp', got {self.mode!r}"
            )

    def draw(self, b: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Random parameters of ``b`` items (float64 / int64 / bool tensors of shape (b,))."""
        f64 = torch.float64
        u = torch.rand(6, b, generator=generator, dtype=f64)
        return {
            "scale": 1 + self.scale_range * (2 * u[0] - 1),
            "dx": self.max_shift * (2 * u[1] - 1),
            "dy": self.max_shift * (2 * u[2] - 1),
            "mirror": u[3] < self.mirror_p,
            "k": (torch.floor(4 * u[4]).clamp(max=3).to(torch.int64) if self.rotation == "rot90"
                  else torch.zeros(b, dtype=torch.int64)),
            "theta": (2 * math.pi * u[5] if self.rotation == "continuous"
                      else torch.zeros(b, dtype=f64)),
        }  # fmt: skip

    def apply(
        self, sample: Mapping[str, Tensor], params: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """Transform ``sample`` (``"image"`` (C, H, W) or (B, C, H, W), ``"labels"`` (2,) or
        (B, 2), optional ``"clean"`` and ``"psf"`` like the image) with ``params`` from
        :meth:`draw`. Returns a new dict (other keys passed through)."""
        for key in ("image", "labels"):
            if key not in sample:
                raise ValueError(f"ShearAugment: sample has no {key!r}; keys {sorted(sample)}")
        image, labels = sample["image"], sample["labels"]
        single = image.ndim == 3
        if image.ndim not in (3, 4):
            raise ValueError(f"ShearAugment: image must be (C, H, W) or (B, C, H, W), got "
                             f"{tuple(image.shape)}")  # fmt: skip

        def batch(t: Tensor | None) -> Tensor | None:
            return None if t is None else (t[None] if single else t)

        img, lab = batch(image), batch(labels)
        if lab.shape != (img.shape[0], 2):
            raise ValueError(f"ShearAugment: labels must be (2,) or (B, 2) g1, g2, got "
                             f"{tuple(labels.shape)}")  # fmt: skip
        clean, psf = batch(sample.get("clean")), batch(sample.get("psf"))
        split = self.mode == "split" or (self.mode == "auto" and clean is not None)
        if split and (clean is None or clean.shape != img.shape):
            raise ValueError("ShearAugment: mode 'split' needs a 'clean' stamp shaped like 'image'")
        dtype = img.dtype
        s = params["scale"].to(dtype)
        pad = math.ceil(self.max_shift) + 2
        lab = lab.clone()
        if split:
            noise = img - clean
            x = rescale_fourier(clean, s)
            x = _shift_zero(x, params["dx"], params["dy"], pad)
        else:
            x = rescale_fourier(img, s, periodic=True)
            x = aug.shift(x, None, None, params["dx"], params["dy"])[0]
        x, lab = aug.flip(x, lab, SHEAR_RULES, "y", params["mirror"])
        x, lab = aug.rot90(x, lab, SHEAR_RULES, params["k"])
        if self.rotation == "continuous":
            x, lab = rotate(x, lab, params["theta"].to(dtype))
        out_img = x + noise if split else x
        if self.normalise:
            out_img = normalise_stamps(out_img)
        out = dict(sample)
        out["image"] = out_img[0] if single else out_img
        out["labels"] = lab[0] if single else lab
        if split:
            out["clean"] = x[0] if single else x
        if psf is not None:
            q = rescale_fourier(psf, s)
            q = aug.flip(q, None, None, "y", params["mirror"])[0]
            q = aug.rot90(q, None, None, params["k"])[0]
            if self.rotation == "continuous":
                q = rotate(q, None, params["theta"].to(dtype))[0]
            q = q / q.sum(dim=(-3, -2, -1), keepdim=True)
            out["psf"] = q[0] if single else q
        return out

    def __call__(
        self, sample: Mapping[str, Tensor], generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Draw parameters from ``generator`` and apply them (the dataset-transform form)."""
        if not isinstance(generator, torch.Generator):
            raise ValueError("ShearAugment needs a torch.Generator; lensml never uses global RNG")
        image = sample.get("image")
        b = 1 if image is None or image.ndim == 3 else image.shape[0]
        return self.apply(sample, self.draw(b, generator))


class ShearAugmentDataset(Dataset):
    """Shear stamps with seeded training-time augmentation and normalisation.

    Items are ``{"image": (1, H, W) float32 normalised, "labels": (2,) float32}`` plus
    ``"psf"`` (1, H, W) with ``return_psf``.

    Parameters
    ----------
    source : path, mapping or Dataset
        A ``shear`` store directory (read with :class:`lensml.data.datasets.StoreDataset`,
        using its ``"clean"`` array when present), a mapping of arrays as returned by
        ``ShearGenerator.generate`` (``"image"``, ``"labels"``, optional ``"clean"``,
        ``"psf"``), or a map-style dataset of such per-item dicts.
    augment : ShearAugment or None
        None: no augmentation, only :func:`normalise_stamps` (validation / test sets, the
        paper's matched test set carries no augmentation (i)–(iii)).
    seed : int
        Seed of the per-item generators (:func:`lensml.data.datasets.item_generator`).
    indices : sequence of int, optional
        Items of ``source`` to expose (default all), e.g. a train/validation split.
    fixed_epoch : bool
        Keep the draws of epoch 0 forever; otherwise :meth:`set_epoch` changes them.
    return_psf : bool
        Also return the (transformed) PSF.
    """

    def __init__(
        self,
        source: str | Path | Mapping[str, Any] | Dataset,
        augment: ShearAugment | None = None,
        *,
        seed: int = 0,
        indices: Sequence[int] | None = None,
        fixed_epoch: bool = False,
        return_psf: bool = False,
    ) -> None:
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.fixed_epoch = bool(fixed_epoch)
        self.return_psf = bool(return_psf)
        self._arrays: dict[str, Tensor] | None = None
        self._base: Any = None
        if isinstance(source, str | Path):
            from lensml.data.datasets import StoreDataset
            from lensml.data.store import open_store

            keys = set(open_store(source).keys)
            missing = {"image", "labels"} - keys
            if missing:
                raise ValueError(
                    f"source {source}: store has no {sorted(missing)}; it has {sorted(keys)}"
                )
            want = ["image", "labels"] + [k for k in ("clean",) if k in keys]
            if self.return_psf:
                if "psf" not in keys:
                    raise ValueError(f"source {source}: return_psf needs a 'psf' array")
                want.append("psf")
            self._base = StoreDataset(source, keys=want)
            n = len(self._base)
        elif isinstance(source, Mapping):
            missing = [k for k in ("image", "labels") if k not in source]
            if missing:
                raise ValueError(f"source: mapping has no {missing}; keys {sorted(source)}")
            keys = ["image", "labels", "clean"] + (["psf"] if self.return_psf else [])
            self._arrays = {k: torch.as_tensor(source[k]) for k in keys if k in source}
            if self.return_psf and "psf" not in self._arrays:
                raise ValueError("source: return_psf needs a 'psf' array")
            n = len(self._arrays["image"])
            bad = [k for k, v in self._arrays.items() if len(v) != n]
            if bad or self._arrays["image"].ndim != 4:
                raise ValueError(
                    f"source: 'image' must be (N, C, H, W) and every array have N items; "
                    f"got image {tuple(self._arrays['image'].shape)}, mismatched {bad}"
                )
        else:
            self._base = source
            n = len(source)
        self.indices = list(range(n)) if indices is None else [int(i) for i in indices]
        if any(not 0 <= i < n for i in self.indices):
            raise ValueError(f"indices must lie in [0, {n}), got some outside")

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (ignored with ``fixed_epoch``)."""
        if not self.fixed_epoch:
            self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def _sample(self, index: int) -> dict[str, Tensor]:
        if self._arrays is not None:
            return {k: v[index] for k, v in self._arrays.items()}
        return dict(self._base[index])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        from lensml.data.datasets import item_generator

        index = self.indices[int(i)]
        sample = {k: torch.as_tensor(v).float() for k, v in self._sample(index).items()}
        if not self.return_psf:
            sample.pop("psf", None)
        if self.augment is not None:
            sample = self.augment(sample, item_generator(self.seed, self.epoch, index))
        else:
            sample["image"] = normalise_stamps(sample["image"])
        out = {"image": sample["image"], "labels": sample["labels"]}
        if self.return_psf:
            out["psf"] = sample["psf"]
        return out
