"""Peer-code adapters of ``lensml bench physics``: the scenes' parameter draws and the same
scenes rendered by lenstronomy, caustics, GalSim and numpy, each in its normal configuration
(float64, lenstronomy's ``ImageModel`` built once and called per image, GalSim per stamp,
numpy's FFT one map at a time). A peer that is not importable raises :class:`PeerMissing`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch

from lensml.bench._harness import Setup, _require

__all__ = [
    "FFT_N",
    "FFT_PAD",
    "STAMP_N",
    "STAMP_SCALE",
    "STRONG_N",
    "STRONG_SCALE",
    "draw_stamps",
    "draw_strong",
    "numpy_shear_from_kappa",
    "numpy_shear_from_kappa_rfft",
]

STRONG_N, STRONG_SCALE = 96, 0.04
STAMP_N, STAMP_SCALE = 61, 0.2
FFT_N, FFT_PAD = 512, 2


def draw_strong(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Random SIE + shear + Sérsic parameters (lenstronomy's conventions plus q, phi).

    ``theta_E`` is lenstronomy's SIE Einstein radius, ``R_circ`` the circularised Sérsic
    half-light radius, ``amp`` the surface brightness at it (flux / arcsec²).
    """
    u = rng.uniform
    return {
        "theta_E": u(0.8, 1.6, n),
        "q_l": u(0.5, 0.95, n),
        "phi_l": u(0.0, math.pi, n),
        "x_l": u(-0.05, 0.05, n),
        "y_l": u(-0.05, 0.05, n),
        "gamma1": u(-0.05, 0.05, n),
        "gamma2": u(-0.05, 0.05, n),
        "amp": u(5.0, 20.0, n),
        "R_circ": u(0.1, 0.4, n),
        "n": u(1.0, 4.0, n),
        "q_s": u(0.5, 0.95, n),
        "phi_s": u(0.0, math.pi, n),
        "x_s": u(-0.2, 0.2, n),
        "y_s": u(-0.2, 0.2, n),
    }


def _e1e2(q: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e = (1.0 - q) / (1.0 + q)
    return e * np.cos(2 * phi), e * np.sin(2 * phi)


def _lenstronomy_strong(supersample: int):
    """``(image_model, kwargs_list(params))``: lenstronomy's ImageModel built once."""
    from lenstronomy.Data.pixel_grid import PixelGrid as LtGrid
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    c0 = -(STRONG_N - 1) / 2 * STRONG_SCALE
    grid = LtGrid(
        nx=STRONG_N,
        ny=STRONG_N,
        ra_at_xy_0=c0,
        dec_at_xy_0=c0,
        transform_pix2angle=np.eye(2) * STRONG_SCALE,
    )
    model = ImageModel(
        grid,
        PSF(psf_type="NONE"),
        lens_model_class=LensModel(["SIE", "SHEAR"]),
        source_model_class=LightModel(["SERSIC_ELLIPSE"]),
        kwargs_numerics={"supersampling_factor": supersample},
    )

    def kwargs(p: dict[str, np.ndarray], i: int) -> tuple[list, list]:
        e1, e2 = _e1e2(p["q_l"][i], p["phi_l"][i])
        es1, es2 = _e1e2(p["q_s"][i], p["phi_s"][i])
        lens = [
            {"theta_E": p["theta_E"][i], "e1": e1, "e2": e2, "center_x": p["x_l"][i],
             "center_y": p["y_l"][i]},
            {"gamma1": p["gamma1"][i], "gamma2": p["gamma2"][i], "ra_0": 0.0, "dec_0": 0.0},
        ]  # fmt: skip
        source = [
            {"amp": p["amp"][i], "R_sersic": p["R_circ"][i], "n_sersic": p["n"][i], "e1": es1,
             "e2": es2, "center_x": p["x_s"][i], "center_y": p["y_s"][i]},
        ]  # fmt: skip
        return lens, source

    return model, kwargs


_CAUSTICS_ORDER = ("x0", "y0", "q", "phi", "Rein", "gamma_1", "gamma_2")
_CAUSTICS_ORDER += ("x0", "y0", "q", "phi", "n", "Re", "Ie")


@functools.lru_cache(maxsize=2)
def _caustics_strong(supersample: int):
    """``(simulator, params_matrix(p))``: caustics' LensSource with SIE + shear, float64."""
    import caustics

    cosmo = caustics.FlatLambdaCDM(name="cosmo")
    sie = caustics.SIE(cosmology=cosmo, name="sie")
    shear = caustics.ExternalShear(cosmology=cosmo, x0=0.0, y0=0.0, name="shear")
    lens = caustics.SinglePlane(cosmology=cosmo, lenses=[sie, shear], z_l=0.5, z_s=1.0, name="lens")
    src = caustics.Sersic(name="src")
    sim = caustics.LensSource(
        lens=lens,
        source=src,
        pixelscale=STRONG_SCALE,
        pixels_x=STRONG_N,
        upsample_factor=supersample,
        name="sim",
    )
    sim.to(dtype=torch.float64)
    names = tuple(prm.name for prm in sim.dynamic_params)
    if names != _CAUSTICS_ORDER:
        raise RuntimeError(f"unexpected caustics parameter order {names}")

    def matrix(p: dict[str, np.ndarray]) -> torch.Tensor:
        cols = [p["x_l"], p["y_l"], p["q_l"], p["phi_l"], p["theta_E"], p["gamma1"], p["gamma2"]]
        cols += [p["x_s"], p["y_s"], p["q_s"], p["phi_s"], p["n"], p["R_circ"] / np.sqrt(p["q_s"])]
        cols += [p["amp"]]
        return torch.as_tensor(np.stack(cols, axis=-1), dtype=torch.float64)

    return sim, matrix


def _setup_lenstronomy_strong(ss: int, p: dict[str, np.ndarray], n: int) -> Setup:
    def setup():
        _require("lenstronomy")
        model, kwargs = _lenstronomy_strong(ss)
        kw = [kwargs(p, i) for i in range(n)]

        def run() -> None:  # one image at a time, as lenstronomy users do
            for lens, source in kw:
                model.image(kwargs_lens=lens, kwargs_source=source)

        return run, n, {"code": "lenstronomy", "dtype": "float64"}

    return setup


def _setup_caustics_strong(ss: int, p: dict[str, np.ndarray], n: int, vmap: bool) -> Setup:
    def setup():
        _require("caustics")
        sim, matrix = _caustics_strong(ss)
        rows = matrix(p)[:n]
        if vmap:
            batched = torch.vmap(sim)
            return functools.partial(batched, rows), n, {"code": "caustics", "dtype": "float64",
                                                         "batch": n}  # fmt: skip

        def run() -> None:
            for row in rows:
                sim(row)

        return run, n, {"code": "caustics", "dtype": "float64"}

    return setup


@functools.lru_cache(maxsize=8)
def _ks_kernels(ny: int, nx: int, real: bool, fft=np.fft) -> tuple[np.ndarray, np.ndarray]:
    """Kaiser–Squires multipliers ``(kx² − ky²)/k²`` and ``2 kx ky / k²`` (zero mode → 0).

    Cached per shape, as a careful user computes them once for repeated calls.
    """
    kx = (fft.rfftfreq(nx) if real else fft.fftfreq(nx))[None, :]
    ky = fft.fftfreq(ny)[:, None]
    k2 = kx**2 + ky**2
    k2[0, 0] = 1.0
    d1, d2 = (kx**2 - ky**2) / k2, 2.0 * kx * ky / k2
    d1[0, 0] = d2[0, 0] = 0.0
    return d1, d2


def numpy_shear_from_kappa(kappa: np.ndarray, pad_factor: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Peer baseline: Kaiser–Squires κ → (γ1, γ2) with ``numpy.fft.fft2``, zero padded.

    ``γ̂1 = (kx² − ky²) / k² κ̂``, ``γ̂2 = 2 kx ky / k² κ̂``: the map is placed in the corner
    of a ``pad_factor`` times larger zero array, transformed, multiplied, transformed back
    and cropped.
    """
    ny, nx = kappa.shape
    padded = np.zeros((pad_factor * ny, pad_factor * nx))
    padded[:ny, :nx] = kappa
    d1, d2 = _ks_kernels(*padded.shape, real=False)
    kappa_hat = np.fft.fft2(padded)
    g1 = np.fft.ifft2(kappa_hat * d1).real[:ny, :nx]
    g2 = np.fft.ifft2(kappa_hat * d2).real[:ny, :nx]
    return g1, g2


def numpy_shear_from_kappa_rfft(
    kappa: np.ndarray, pad_factor: int = 2, fft=np.fft, **fft_kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`numpy_shear_from_kappa` with real transforms (``rfft2(s=...)`` pads).

    ``fft`` may be ``scipy.fft`` (with e.g. ``workers=-1``) instead of ``numpy.fft``.
    """
    ny, nx = kappa.shape
    shape = (pad_factor * ny, pad_factor * nx)
    d1, d2 = _ks_kernels(*shape, real=True, fft=fft)
    kappa_hat = fft.rfft2(kappa, s=shape, **fft_kwargs)
    g1 = fft.irfft2(kappa_hat * d1, s=shape, **fft_kwargs)[:ny, :nx]
    g2 = fft.irfft2(kappa_hat * d2, s=shape, **fft_kwargs)[:ny, :nx]
    return g1, g2


def draw_stamps(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Random Sérsic ⊗ Moffat stamp parameters; ``hlr`` is the circularised half-light radius."""
    u = rng.uniform
    return {
        "flux": u(100.0, 1000.0, n),
        "hlr": u(0.3, 1.2, n),
        "n": u(0.5, 4.5, n),
        "q": u(0.4, 1.0, n),
        "phi": u(0.0, math.pi, n),
        "x0": u(-0.3, 0.3, n),
        "y0": u(-0.3, 0.3, n),
        "fwhm": u(0.6, 1.0, n),
        "beta": np.full(n, 3.5),
    }


def _galsim_stamps(p: dict[str, np.ndarray], n: int) -> Callable[[], list]:
    import galsim

    def run() -> list:
        out = []
        for i in range(n):
            gal = galsim.Sersic(n=p["n"][i], half_light_radius=p["hlr"][i], flux=p["flux"][i])
            gal = gal.shear(q=p["q"][i], beta=p["phi"][i] * galsim.radians)
            gal = gal.shift(p["x0"][i], p["y0"][i])
            psf = galsim.Moffat(beta=p["beta"][i], fwhm=p["fwhm"][i])
            img = galsim.Convolve(gal, psf).drawImage(nx=STAMP_N, ny=STAMP_N, scale=STAMP_SCALE)
            out.append(img.array)
        return out

    return run


def _setup_galsim_stamps(p: dict[str, np.ndarray], n: int) -> Setup:
    """GalSim draws ``n`` stamps per call, each call with fresh parameters from ``p``.

    GalSim caches its Sérsic tables per index n, so re-drawing the same n would not measure
    "random n per stamp"; ``p`` must hold ``n`` × (warm-up + repeats) draws.
    """

    def setup():
        _require("galsim")
        calls = iter(range(len(p["n"]) // n))

        def run() -> None:
            i = next(calls) * n
            _galsim_stamps({k: v[i : i + n] for k, v in p.items()}, n)()

        return run, n, {"code": "galsim", "dtype": "float64"}

    return setup
