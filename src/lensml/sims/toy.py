"""Toy generator ``"toy"``: noisy circular Gaussian blobs with (amplitude, width) labels.

It is cheap (about a microsecond per 16×16 stamp), so it serves the tests of the
store and runner and the documentation examples; it is not a physical model.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from lensml.config import ConfigModel
from lensml.registry import GENERATORS
from lensml.sims.base import SampleGenerator


@GENERATORS.register("toy")
class ToyBlobs(SampleGenerator):
    """Circular Gaussian blobs centred on the stamp plus white Gaussian noise.

    Item ``k``: ``image[k, 0, i, j] = A exp(-r² / (2 w²)) + σ ε`` with
    ``r² = x_j² + y_i²`` (arcsec, pixel centres on the grid, stamp centred),
    ``A ~ U(amplitude_min, amplitude_max)``, ``w ~ U(width_min, width_max)`` and
    ``ε ~ N(0, 1)``.

    Outputs: ``"image"`` ``(n, 1, size, size)`` float32, ``"labels"`` ``(n, 2)``
    float32 with columns ``amplitude`` (flux / pixel) and ``width`` (arcsec),
    metadata ``"flux"`` ``(n,)`` float32 (noise-free total flux, flux units).
    """

    name = "toy"

    class Config(ConfigModel):
        """Settings of the toy generator."""

        size: int = Field(16, ge=4, le=512, description="stamp side, pixels")
        pixel_scale: float = Field(0.2, gt=0, description="arcsec / pixel")
        amplitude_min: float = Field(1.0, gt=0, description="lowest peak value, flux / pixel")
        amplitude_max: float = Field(10.0, gt=0, description="highest peak value, flux / pixel")
        width_min: float = Field(0.2, gt=0, description="smallest Gaussian sigma, arcsec")
        width_max: float = Field(0.6, gt=0, description="largest Gaussian sigma, arcsec")
        noise_sigma: float = Field(0.1, ge=0, description="white-noise sigma, flux / pixel")

        @model_validator(mode="after")
        def _ordered(self) -> ToyBlobs.Config:
            if self.amplitude_max < self.amplitude_min:
                raise ValueError("amplitude_max must be >= amplitude_min")
            if self.width_max < self.width_min:
                raise ValueError("width_max must be >= width_min")
            return self

    def label_names(self, config: BaseModel) -> list[str]:
        return ["amplitude", "width"]

    def label_kinds(self, config: BaseModel) -> dict[str, str]:
        return {"amplitude": "scalar", "width": "size"}

    def pixel_scale(self, config: BaseModel) -> float:
        return float(config.pixel_scale)

    def generate(self, n: int, rng: Any, config: BaseModel) -> dict[str, Any]:
        import torch

        c = config
        amp = c.amplitude_min + (c.amplitude_max - c.amplitude_min) * torch.rand(n, generator=rng)
        width = c.width_min + (c.width_max - c.width_min) * torch.rand(n, generator=rng)
        coords = (torch.arange(c.size, dtype=torch.float32) - (c.size - 1) / 2) * c.pixel_scale
        r2 = coords[None, :] ** 2 + coords[:, None] ** 2
        blob = amp[:, None, None] * torch.exp(-r2 / (2 * width[:, None, None] ** 2))
        noise = torch.randn(n, c.size, c.size, generator=rng) * c.noise_sigma
        image = (blob + noise).unsqueeze(1).to(torch.float32)
        flux = amp * 2 * torch.pi * (width / c.pixel_scale) ** 2
        return {
            "image": image,
            "labels": torch.stack([amp, width], dim=1).to(torch.float32),
            "flux": flux.to(torch.float32),
        }
