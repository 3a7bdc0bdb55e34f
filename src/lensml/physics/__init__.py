"""Differentiable, batched lensing and light physics in PyTorch.

Submodules (imported on first attribute access, so ``import lensml.physics`` is cheap):

``grids``        pixel grids, supersampling, block-mean downsampling
``params``       parameter declarations (unit, range) and validation
``mass``         analytic mass profiles (SIS, truncated SIS, SIE, shear, NFW, eNFW, Hernquist)
``pixelated``    deflection of a pixelated κ map by FFT convolution
``pixelated_lensing``  forward model of the pixelated-RIM paper (pixelated κ and source)
``fft_lensing``  κ → ψ, α, γ by FFT and the Kaiser–Squires inverse
``light``        Sérsic, Gaussian clumps, bulge + disk
``psf``          Gaussian, Moffat, double Moffat and Airy kernels
``convolve``     direct or FFT convolution chosen by kernel size
``stamps``       fast PSF-convolved Sérsic stamps
``raytrace``     lens equation, rendering of analytic and pixelated sources, warp adjoint
``cosmology``    distances, Σcrit, θ_E ↔ σ_v, NFW lensing parameters (astropy)
``noise``        shape noise, Poisson + read noise, correlated noise, sky, cosmic rays, PRNU

See ``docs/architecture.md`` for the conventions every function follows.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_SUBMODULES = (
    "grids",
    "params",
    "mass",
    "pixelated",
    "pixelated_lensing",
    "fft_lensing",
    "light",
    "psf",
    "convolve",
    "stamps",
    "raytrace",
    "cosmology",
    "lens_conversions",
    "noise",
)

__all__ = list(_SUBMODULES)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
