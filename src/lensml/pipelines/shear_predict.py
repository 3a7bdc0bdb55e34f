"""Shear catalogue and smoothed shear-field maps from a FITS image and a source catalogue.

Paper: the CNN shear estimator paper (``shared/papers/cnn-shear-estimator-clash.txt``), §6.1
(smoothed fields, eqs. 18–19, 100 bootstrap replicates, λ = 19.5″, Fig. 17 whiskers).

:func:`predict_shear` cuts a stamp of the model's size around every catalogue position
(:func:`lensml.data.cutouts.cut_stamps`), estimates (g1, g2) with the saved CNN estimator (its
refit, symmetrisation and calibration) or a moment method, writes the shear catalogue as a FITS
table and, from the sources with a valid estimate, the Gaussian-smoothed field maps with
bootstrap errors (:mod:`lensml.pipelines.shear_fields`) and a whisker PNG.

Nothing is silently zero: a source whose stamp leaves the image, contains NaN/inf pixels or whose
position is not finite keeps its row with ``g1 = g2 = NaN`` and the cut-out flags
(:data:`lensml.data.cutouts.FLAG_OFF_IMAGE` 1, ``FLAG_EDGE`` 2, ``FLAG_NONFINITE`` 4,
``FLAG_BAD_POSITION`` 8); a moment-method failure adds :data:`FLAG_MEASUREMENT` (16). Bad
*arguments* — stamps the model cannot take, an image pixel scale that differs from the training
one, a moment method without a PSF — raise one ValueError.

Units: λ (``field_scale``) and the grid spacing are in arcsec. With a celestial WCS the maps are
computed on image pixels (0-based) and written with the image's WCS; without one, positions are
converted to arcsec from the image (or model) pixel scale and the maps get a local tangent-plane
WCS (:func:`lensml.pipelines.shear_fields.write_field_fits`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FLAG_MEASUREMENT", "predict_shear", "preset_psf_image"]

#: The estimator failed on a valid stamp (moment methods: HSM error, |g| >= 1, ...).
FLAG_MEASUREMENT = 16
_ESTIMATORS = ("cnn", "ksb", "regauss")


def preset_psf_image(instrument: Mapping[str, Any], size: int) -> np.ndarray:
    """The training PSF (a ``shear`` generator preset) as a unit-sum ``(size, size)`` image.

    Parameters
    ----------
    instrument : mapping
        ``shear_postprocess.json["instrument"]``: ``preset`` and optional ``pixel_scale``,
        ``psf_profile``, ``psf_fwhm``, ``psf_beta``, ``oversample``.
    size : int
        Stamp side in pixels.

    Raises
    ------
    ValueError
        When the model was not trained on a parametric ``shear`` preset PSF.
    """
    from lensml.sims.shear import instrument as resolve
    from lensml.sims.shear import shear_config
    from lensml.sims.shear_presets import parametric_psf_image

    if instrument.get("generator") not in (None, "shear") or instrument.get("psf") == "cosmos":
        raise ValueError(
            "psf='preset': the model was not trained with a parametric 'shear' generator PSF "
            f"(instrument {dict(instrument)}); pass a PSF FITS image"
        )
    keys = ("pixel_scale", "psf_profile", "psf_fwhm", "psf_beta", "oversample")
    over = {k: instrument[k] for k in keys if instrument.get(k) is not None}
    cfg = shear_config(str(instrument.get("preset", "clash")), cosmos_fraction=0.0,
                       noise="white", **over)  # fmt: skip
    return parametric_psf_image(resolve(cfg), int(size))[0, 0].double().numpy()


def _psf_image(psf: Any, post: Mapping[str, Any] | None, size: int, method: str) -> np.ndarray:
    if psf is None:
        raise ValueError(
            f"estimator {method!r}: the moment baseline needs a PSF: pass psf=<FITS image of the "
            "PSF at the image pixel scale> or psf='preset' (the model's training PSF)"
        )
    if isinstance(psf, str) and psf.lower() == "preset":
        if not post:
            raise ValueError("psf='preset' needs a model whose shear_postprocess.json records "
                             "its instrument (--model)")  # fmt: skip
        return preset_psf_image(post.get("instrument") or {}, size)
    if isinstance(psf, str | os.PathLike):
        from lensml.data.fits_io import read_image_fits

        data, _ = read_image_fits(Path(psf))
        img = np.asarray(data, dtype=np.float64)
    else:
        img = np.asarray(psf, dtype=np.float64)
    if img.ndim != 2 or not np.isfinite(img).all() or not img.sum() > 0:
        raise ValueError(f"psf {psf!r}: must be a finite 2-d image with a positive sum")
    return img


def _image_pixel_scale(img: Any) -> float | None:
    from lensml.data.fits_io import pixel_scale_from_header

    if img.wcs is not None:
        from astropy.wcs.utils import proj_plane_pixel_scales

        return float(np.mean(proj_plane_pixel_scales(img.wcs)) * 3600.0)
    return pixel_scale_from_header(img.header, img.source)


def _noise_variance(data: np.ndarray) -> float:
    """Per-pixel background variance from the median absolute deviation of finite pixels."""
    v = data[np.isfinite(data)]
    if v.size == 0:
        return 0.0
    mad = np.median(np.abs(v - np.median(v)))
    return float((1.4826 * mad) ** 2)


def predict_shear(
    image: str | Path,
    catalog: str | Path,
    model: str | Path | None,
    out: str | Path,
    *,
    columns: Mapping[str, str] | None = None,
    origin: int = 1,
    hdu: int | str | None = None,
    catalog_hdu: int | str = 1,
    estimator: str = "cnn",
    psf: Any = None,
    stamp_size: int | None = None,
    field_scale: float = 19.5,
    grid_spacing: float | None = None,
    n_boot: int = 100,
    min_n_eff: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 512,
    check_pixel_scale: bool = True,
    whiskers: bool = True,
) -> dict[str, Any]:
    """Per-source reduced shear and smoothed field maps for a FITS image + source catalogue.

    Parameters
    ----------
    image : path
        FITS image (background subtracted; HDU ``hdu`` or the first with 2-d data), with a
        celestial WCS for RA/Dec catalogues.
    catalog : path
        Source catalogue (FITS table or CSV, see
        :func:`lensml.data.cutouts.read_source_catalog`).
    model : path or None
        Saved shear model (:func:`lensml.pipelines.shear.train_shear`); required for
        ``estimator="cnn"``, optional for the moment methods (stamp size, ``psf="preset"``).
    out : path
        Shear catalogue (FITS, written atomically). Next to it: ``<stem>_field.fits`` (maps
        G1, G2, SIGMA_G1, SIGMA_G2, N_EFF, DENSITY) and ``<stem>_whiskers.png``.
    columns : mapping, optional
        Catalogue column names by role (``x``/``y`` or ``ra``/``dec``, ``id``).
    origin : {1, 0}
        First-pixel index of pixel columns (1: FITS / SExtractor); the output ``x``, ``y`` use
        the same convention.
    hdu, catalog_hdu
        Image HDU and catalogue table HDU.
    estimator : {"cnn", "ksb", "regauss"}
        The saved CNN estimator or a GalSim HSM moment method (uncalibrated).
    psf : path, array or "preset", optional
        PSF image for the moment methods (required there; ignored by the CNN, which was trained
        for one PSF).
    stamp_size : int, optional
        Stamp side when no model is given (default 32); must equal the model's otherwise.
    field_scale : float
        Smoothing length λ in arcsec (> 0; the paper's 19.5″).
    grid_spacing : float, optional
        Map pixel in arcsec (default λ / 2).
    n_boot : int
        Bootstrap replicates of the field errors (0: none; >= 2 otherwise; paper 100).
    min_n_eff : float
        Map pixels with fewer effective sources are NaN.
    seed : int
        Seed of the bootstrap.
    device, batch_size
        Torch device and stamps per forward pass of the CNN.
    check_pixel_scale : bool
        Refuse an image whose pixel scale differs by more than 2 % from the model's.
    whiskers : bool
        Write the whisker PNG.

    Returns
    -------
    dict
        ``n``, ``n_valid``, ``n_flagged``, ``flag_counts``, ``catalog``, ``field`` (path or
        None when fewer than 2 sources have estimates), ``whiskers``, ``pixel_scale``,
        ``field_scale_pixels``, ``estimator``.

    Raises
    ------
    ValueError
        Unknown estimator, missing model or PSF, stamps of the wrong size for the model, a
        pixel-scale mismatch, unreadable inputs (naming the file and column).
    """
    from lensml.data.cutouts import cut_stamps, read_image_with_wcs, read_source_catalog
    from lensml.data.fits_io import write_catalog

    method = str(estimator).lower()
    if method not in _ESTIMATORS:
        raise ValueError(f"estimator must be one of {list(_ESTIMATORS)}, got {estimator!r}")
    if not (isinstance(field_scale, int | float) and math.isfinite(field_scale)
            and field_scale > 0):  # fmt: skip
        raise ValueError(f"field_scale must be a positive number of arcsec, got {field_scale!r}")
    if grid_spacing is not None and not grid_spacing > 0:
        raise ValueError(f"grid_spacing must be > 0 arcsec, got {grid_spacing!r}")
    if int(n_boot) != 0 and int(n_boot) < 2:
        raise ValueError(f"n_boot must be 0 (no errors) or >= 2, got {n_boot!r}")
    est = None
    post: dict[str, Any] = {}
    if model is not None:
        from lensml.pipelines.shear import load_shear_estimator

        est = load_shear_estimator(model, device=device, batch_size=batch_size)
        post = est.postprocess
    elif method == "cnn":
        raise ValueError("estimator 'cnn' needs a model: pass the saved model directory (--model)")
    size = est.input_size if est is not None else int(stamp_size or 32)
    if est is not None and stamp_size is not None and int(stamp_size) != size:
        raise ValueError(
            f"stamp_size {stamp_size}: the model {model} takes {size}x{size}-pixel stamps"
        )
    psf_img = _psf_image(psf, post, size, method) if method != "cnn" else None

    img = read_image_with_wcs(image, hdu)
    ps_image = _image_pixel_scale(img)
    ps_model = est.pixel_scale if est is not None else None
    if check_pixel_scale and ps_image is not None and ps_model is not None:
        if abs(ps_image / ps_model - 1.0) > 0.02:
            raise ValueError(
                f"image {img.source}: pixel scale {ps_image:.4g}″ differs from the model's "
                f"training pixel scale {ps_model:.4g}″; resample the image or pass "
                "check_pixel_scale=False"
            )
    pixel_scale = ps_image or ps_model
    if pixel_scale is None:
        raise ValueError(f"image {img.source}: no pixel scale (no WCS or CDELT); none in the model")
    cat = read_source_catalog(catalog, dict(columns) if columns else None, wcs=img.wcs,
                              origin=origin, hdu=catalog_hdu)  # fmt: skip
    stamps = cut_stamps(img.data, cat.x, cat.y, size)
    n = stamps.valid.size
    flags = stamps.flags.astype(np.int32).copy()
    g = np.full((n, 2), np.nan)
    valid = np.flatnonzero(stamps.valid)
    if valid.size:
        x = stamps.images[valid]
        if method == "cnn":
            g[valid] = est.predict(x)
        else:
            from lensml.baselines.moments import measure_moments_shear

            res = measure_moments_shear(x.double().numpy(), psf_img, method,
                                        _noise_variance(img.data), nan_policy="flag")  # fmt: skip
            g[valid] = res.g
            flags[valid[~res.ok]] |= FLAG_MEASUREMENT
    good = (flags == 0) & np.isfinite(g).all(axis=1)
    g[~good] = np.nan
    x_out = cat.x + origin
    y_out = cat.y + origin
    columns_out: dict[str, Any] = {"id": np.asarray(cat.ids), "x": x_out, "y": y_out}
    units = {"x": "pix", "y": "pix"}
    if img.wcs is not None:
        ra, dec = img.wcs.all_pix2world(cat.x, cat.y, 0)
        columns_out.update(ra=np.asarray(ra, dtype=np.float64), dec=np.asarray(dec, np.float64))
        units.update(ra="deg", dec="deg")
    columns_out.update(g1=g[:, 0], g2=g[:, 1], flag=flags)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_catalog(out, columns_out, units=units)
    codes, counts = np.unique(flags[flags != 0], return_counts=True)
    result: dict[str, Any] = {
        "n": int(n), "n_valid": int(good.sum()), "n_flagged": int((~good).sum()),
        "flag_counts": {int(c): int(k) for c, k in zip(codes, counts, strict=True)},
        "catalog": str(out), "field": None, "whiskers": None, "pixel_scale": pixel_scale,
        "estimator": method, "stamp_size": size,
    }  # fmt: skip
    if good.sum() >= 2:
        result.update(_write_field(out, img, cat.x[good], cat.y[good], g[good], pixel_scale,
                                   float(field_scale), grid_spacing, int(n_boot), min_n_eff,
                                   seed, whiskers))  # fmt: skip
    return result


def _write_field(
    out: Path, img: Any, x: np.ndarray, y: np.ndarray, g: np.ndarray, pixel_scale: float,
    field_scale: float, grid_spacing: float | None, n_boot: int, min_n_eff: float, seed: int,
    whiskers: bool,
) -> dict[str, Any]:  # fmt: skip
    from lensml.pipelines.shear_fields import (
        bootstrap_field_errors,
        field_grid,
        plot_whiskers,
        smooth_shear_field,
        write_field_fits,
    )

    h, w = img.data.shape
    unit = 1.0 if img.wcs is not None else pixel_scale  # pixels with a WCS, arcsec without
    lam = field_scale / pixel_scale * unit
    spacing = grid_spacing if grid_spacing is not None else 0.5 * field_scale
    spacing = spacing / pixel_scale * unit
    extent = (-0.5 * unit, (w - 0.5) * unit, -0.5 * unit, (h - 0.5) * unit)
    gx, gy = field_grid(extent, spacing)
    px, py = x * unit, y * unit
    field = smooth_shear_field(px, py, g[:, 0], g[:, 1], gx, gy, lam, min_n_eff=min_n_eff)
    if n_boot:
        s1, s2 = bootstrap_field_errors(px, py, g[:, 0], g[:, 1], gx, gy, lam, n_boot=n_boot,
                                        rng=np.random.default_rng(int(seed)))  # fmt: skip
        field = field.with_errors(s1, s2, n_boot)
    field_path = out.with_name(out.name.removesuffix(".fits") + "_field.fits")
    header = {"LAMBDAAS": (field_scale, "[arcsec] smoothing length"),
              "PIXSCALE": (pixel_scale, "[arcsec] image pixel scale")}  # fmt: skip
    write_field_fits(field_path, field, wcs=img.wcs, header=header)
    png = None
    if whiskers:
        png = out.with_name(out.name.removesuffix(".fits") + "_whiskers.png")
        plot_whiskers(field, png, background=img.data, background_extent=extent,
                      title=f"smoothed shear, λ = {field_scale:g}″, {len(x)} sources")  # fmt: skip
        png = str(png)
    return {"field": str(field_path), "whiskers": png, "field_scale_pixels": field_scale
            / pixel_scale, "n_boot": n_boot}  # fmt: skip
