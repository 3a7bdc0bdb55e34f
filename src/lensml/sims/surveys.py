"""Weak-lensing survey presets and the training-time shape-noise transform.

Shape noise per pixel is Gaussian with σ = σ_e / sqrt(n_g A_pix) (Giocoli et al. 2010; cluster
paper eq. 13), added independently to g1 and g2, so one noiseless training set serves every
noise level (:class:`ShapeNoise`).

Presets (:data:`SURVEYS`), effective source density n_g in arcmin⁻² and intrinsic
ellipticity dispersion σ_e per component:

``euclid``
    n_g = 30, σ_e = 0.3 — Euclid wide survey requirement (Laureijs et al. 2011), the
    cluster paper's fiducial values.
``lsst``
    n_g = 27, σ_e = 0.26 — Rubin/LSST year 10 (LSST DESC Science Requirements Document,
    Mandelbaum et al. 2018).
``lsst-y1``
    n_g = 10, σ_e = 0.26 — Rubin/LSST year 1 (same source).
``roman``
    n_g = 51, σ_e = 0.26 — Roman High Latitude Survey (Eifler et al. 2021, MNRAS 507, 1514).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["SURVEYS", "ShapeNoise", "Survey", "get_survey"]


@dataclass(frozen=True)
class Survey:
    """A weak-lensing survey's source density and shape noise.

    Attributes
    ----------
    name : str
    n_gal : float
        Effective source density, arcmin⁻², > 0.
    sigma_e : float
        Intrinsic ellipticity dispersion per component, >= 0.
    reference : str
        Where the numbers come from.
    """

    name: str
    n_gal: float
    sigma_e: float
    reference: str = ""

    def pixel_sigma(self, pixel_scale: float) -> float:
        """Per-pixel, per-component noise σ_e / sqrt(n_g A_pix) for a pixel side in arcsec."""
        if not pixel_scale > 0:
            raise ValueError(f"pixel_scale must be > 0 arcsec, got {pixel_scale}")
        return self.sigma_e / (self.n_gal * (pixel_scale / 60.0) ** 2) ** 0.5


SURVEYS: dict[str, Survey] = {
    "euclid": Survey("euclid", 30.0, 0.3, "Euclid wide (Laureijs et al. 2011); cluster paper"),
    "lsst": Survey("lsst", 27.0, 0.26, "LSST DESC SRD Y10 (Mandelbaum et al. 2018)"),
    "lsst-y1": Survey("lsst-y1", 10.0, 0.26, "LSST DESC SRD Y1 (Mandelbaum et al. 2018)"),
    "roman": Survey("roman", 51.0, 0.26, "Roman HLS (Eifler et al. 2021)"),
}


def get_survey(name: str) -> Survey:
    """The preset ``name`` (case-insensitive); ValueError listing the presets otherwise."""
    key = str(name).lower()
    if key not in SURVEYS:
        raise ValueError(f"survey must be one of {sorted(SURVEYS)}, got {name!r}")
    return SURVEYS[key]


class ShapeNoise:
    """Seeded Gaussian shape noise on reduced-shear maps, for the training data pipeline.

    Parameters
    ----------
    pixel_scale : float
        Pixel side of the maps in arcsec, > 0.
    survey : str, optional
        A preset of :data:`SURVEYS` (default ``"euclid"`` when neither n_gal nor sigma_e is
        given); ``n_gal`` / ``sigma_e`` override its values.
    n_gal : float, optional
        Source density in arcmin⁻², > 0.
    sigma_e : float, optional
        Ellipticity dispersion per component, >= 0.
    channels : tuple of int
        The (g1, g2) channels of the image (default (0, 1)).
    generator : torch.Generator, optional
        Default source of randomness; a generator passed at call time wins.

    Examples
    --------
    >>> import torch
    >>> noise = ShapeNoise(pixel_scale=2.0, survey="euclid")
    >>> round(noise.sigma, 3)
    1.643
    >>> img = torch.zeros(1, 2, 8, 8)
    >>> out, _ = noise(img, generator=torch.Generator().manual_seed(0))
    """

    def __init__(
        self,
        pixel_scale: float,
        survey: str | None = None,
        n_gal: float | None = None,
        sigma_e: float | None = None,
        channels: tuple[int, int] = (0, 1),
        generator: Any = None,
    ) -> None:
        base = get_survey(survey or "euclid")
        n = base.n_gal if n_gal is None else float(n_gal)
        s = base.sigma_e if sigma_e is None else float(sigma_e)
        if not n > 0:
            raise ValueError(f"ShapeNoise: 'n_gal' must be > 0 arcmin^-2, got {n_gal}")
        if not s >= 0:
            raise ValueError(f"ShapeNoise: 'sigma_e' must be >= 0, got {sigma_e}")
        if not (isinstance(pixel_scale, int | float) and pixel_scale > 0):
            raise ValueError(f"ShapeNoise: 'pixel_scale' must be > 0 arcsec, got {pixel_scale}")
        self.survey = Survey(base.name if survey else "custom", n, s, base.reference)
        self.pixel_scale = float(pixel_scale)
        self.sigma = self.survey.pixel_sigma(self.pixel_scale)
        self.channels = tuple(channels)
        self.generator = generator

    def __repr__(self) -> str:
        return (
            f"ShapeNoise(n_gal={self.survey.n_gal}, sigma_e={self.survey.sigma_e}, "
            f"pixel_scale={self.pixel_scale}, sigma={self.sigma:.4g})"
        )

    def __call__(self, image: Any, labels: Any = None, generator: Any = None) -> tuple[Any, Any]:
        """Return ``(image + noise on the shear channels, labels)``; image (C,H,W) or (B,C,H,W)."""
        import torch

        from lensml.physics.noise import add_shape_noise

        g = generator if generator is not None else self.generator
        if g is None:
            raise ValueError("ShapeNoise needs a torch.Generator (at construction or call time)")
        if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
            raise ValueError("ShapeNoise: image must be a (C, H, W) or (B, C, H, W) tensor")
        i1, i2 = self.channels
        if max(i1, i2) >= image.shape[-3]:
            raise ValueError(
                f"ShapeNoise: channels {self.channels} outside an image with "
                f"{image.shape[-3]} channels"
            )
        n1, n2 = add_shape_noise(
            image[..., i1, :, :], image[..., i2, :, :], self.sigma, generator=g
        )
        out = image.clone()
        out[..., i1, :, :] = n1
        out[..., i2, :, :] = n2
        return out, labels

    def for_samples(
        self, image_key: str = "image"
    ) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
        """A ``transform(sample, generator)`` for :mod:`lensml.data.datasets`."""

        def apply(sample: dict[str, Any], generator: Any) -> dict[str, Any]:
            out = dict(sample)
            out[image_key] = self(sample[image_key], None, generator)[0]
            return out

        return apply
