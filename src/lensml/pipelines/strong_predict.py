"""``predict_strong``: a FITS image of a lens → source, κ, parameter table and diagnostic panel.

Input checks (the paper's failure case, §4.3, is an 8-bit PNG converted to FITS without a pixel
scale, PSF or noise model):

* **pixel scale** from the header (``CD``, ``CDELT``/``PC``, ``PIXSCALE``; see
  :func:`lensml.data.fits_io.pixel_scale_from_header`); without one the image is refused unless
  ``pixel_scale`` is given (an explicit value overrides the header).
* **size** — a model trained at one pixel scale s_m (``strong_pipeline.json`` beside the
  model) gets the image resampled onto its ``H × H`` grid at s_m about the image centre
  (bilinear, counts conserved; scale ratios outside [0.5, 2] refused); models trained on
  several pixel scales work in units of the field and take the image at its own scale. In
  both cases the image must cover the model's field (``H`` pixels at the working scale):
  smaller images are refused with the expected size, larger ones are cropped about the centre.
* **non-linear images** — integer values within 0–255 with at most 256 levels look like an
  8-bit (PNG/JPEG) conversion: a warning says the physical outputs (θ_E, σ_v, M) are
  unreliable. The result and FITS header record it.
* **NaN / inf pixels** — an error naming the count, unless ``mask_nonfinite=True``: then they
  are set to 0 and excluded from χ² (variance = ∞).
* **PSF** (optional FITS, resampled to the working scale, unit sum): used by the forward
  operator instead of the model's learned global PSF; without one a message says that the
  learned PSF (Moffat FWHM, β + residual) is assumed.
* **variance** (optional FITS, same shape as the image): σ for χ²; without one σ is estimated
  from the image border (1.4826 × MAD of the outer 8 pixels) and said so.
* **ring at the field edge** — a predicted θ_E of at least :data:`RING_EDGE_FRACTION` of the
  field's half-width warns (:func:`ring_edge_warning`): the ring reaches the image edge, where
  held-out errors are several times larger and θ_E comes out low. The FITS header records it
  (``RINGEDGE``).
* **redshifts** — z_l, z_s from the arguments, else from the header (``Z_L``/``ZLENS``,
  ``Z_S``/``ZSOURCE``), else the assumed 0.5 and 2.0 (said so); the cosmology is the paper's
  flat ΛCDM (H0 = 70, Ω_m = 0.3) unless given.

Outputs: a FITS file with extensions DATA (the model's input), SOURCE (on the source grid with
its pixel scale), KAPPA (SIE + NFW convergence of the predicted parameters on the image grid),
MODEL, RESIDUAL, CHI2 and the binary table PARAMS (θ_E, q, φ, x0, y0, γ, γ_φ, κ_s, r_s,
σ_v, M(<θ_E), reduced χ², with units), and a PNG panel: data, model, residual, χ² map,
source, κ, radial κ profile, enclosed mass M(<r) = Σcrit ∫ κ dA.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "NONLINEAR_WARNING",
    "RING_EDGE_FRACTION",
    "LensImage",
    "is_nonlinear",
    "predict_strong",
    "predicted_kappa",
    "read_lens_image",
    "ring_edge_warning",
]

NONLINEAR_WARNING = (
    "the image looks non-linear (integer values in 0-255 with few levels, e.g. an 8-bit "
    "PNG/JPEG converted to FITS): pixel values are not proportional to flux, so the "
    "reconstruction and the physical outputs (theta_E, sigma_v, M(<theta_E)) are unreliable "
    "(the paper's failure case, Sect. 4.3)"
)
#: θ_E over half the field width from which :func:`ring_edge_warning` warns.
RING_EDGE_FRACTION = 0.75
_DEFAULT_Z = (0.5, 2.0)


def ring_edge_warning(theta_e: float, half_width: float, multi_scale: bool) -> str | None:
    """The warning text when θ_E (arcsec) reaches ``RING_EDGE_FRACTION`` of the field's
    half-width (arcsec), else None.

    There the Einstein ring reaches or passes the edges of the field the network sees: on
    held-out simulations such lenses have several times the median θ_E error of rings well
    inside, and come out low (``lensml evaluate strong`` prints the error by this fraction).
    ``multi_scale`` (a model trained on several pixel scales, which takes an image at its own
    scale) adds the remedy: bin the image to a coarser scale so the ring lies inside.
    """
    frac = float(theta_e) / float(half_width)
    if not frac >= RING_EDGE_FRACTION:  # also None for NaN
        return None
    msg = (
        f"theta_E = {theta_e:.3g} arcsec is {frac:.2f} of the half-width of the field the "
        f"network sees ({half_width:.3g} arcsec): the Einstein ring reaches the edge of the "
        "image, so theta_E and the quantities derived from it are poorly constrained and "
        "likely underestimated"
    )
    if multi_scale:
        msg += "; binning the image to a coarser pixel scale would bring the ring inside"
    return msg


def is_nonlinear(image: np.ndarray) -> bool:
    """True for images whose finite values are all integers in [0, 255] with <= 256 levels."""
    v = np.asarray(image, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return False
    if v.min() < 0 or v.max() > 255 or not np.all(v == np.round(v)):
        return False
    return np.unique(v).size <= 256


def predicted_kappa(labels: np.ndarray, pixel_scale: float, size: int, core: float) -> np.ndarray:
    """κ = SIE + NFW convergence of lens labels (θ_E, q, φ, x0, y0, γ, γ_φ, κ_s, r_s; arcsec)
    on a centred ``size²`` grid of ``pixel_scale``; ``core`` in arcsec. Returns (N, size, size)."""
    import torch

    from lensml.physics.grids import PixelGrid
    from lensml.physics.mass import nfw, sie

    lab = torch.as_tensor(np.asarray(labels, float), dtype=torch.float64)
    x, y = PixelGrid.square(size, float(pixel_scale)).coordinates(dtype=torch.float64)
    k = sie.convergence(x, y, lab[:, 0], lab[:, 1], lab[:, 2], lab[:, 3], lab[:, 4], core)
    ks, rs = lab[:, 7], lab[:, 8]
    halo = (ks > 0) & (rs > 0)
    if bool(halo.any()):
        rs_safe = torch.where(halo, rs, torch.ones_like(rs))
        alpha = nfw.kappa_s_to_alpha_rs(torch.where(halo, ks, 0.0), rs_safe)
        kn = nfw.convergence(x, y, rs_safe, alpha, lab[:, 3], lab[:, 4])
        k = k + torch.where(halo[:, None, None], kn, 0.0)
    return k.numpy()


def _read_2d(path: str | Path, what: str, hdu: int | str | None = None) -> tuple[np.ndarray, Any]:
    from lensml.data.fits_io import read_image_fits

    data, header = read_image_fits(path, hdu)
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"{what} {path}: expected a 2-d image, got shape {data.shape}")
    return data, header


def _header_z(header: Any, keys: Sequence[str]) -> float | None:
    for k in keys:
        if k in header and isinstance(header[k], int | float) and not isinstance(header[k], bool):
            return float(header[k])
    return None


def _resample(img: np.ndarray, in_scale: float, size: int, out_scale: float, **kw: Any) -> Any:
    from lensml.pipelines.sersic_predict import resample_stamps

    return resample_stamps(img[None, None], in_scale, size, out_scale, **kw)[0, 0].double()


def _working_grid(
    shape: tuple[int, int], in_scale: float, size: int, model_scales: Sequence[float], path: Path
) -> float:
    """Pixel scale the image is resampled to; ValueError when it does not cover the field."""
    scale = float(model_scales[0]) if len(model_scales) == 1 else in_scale
    field = min(shape) * in_scale
    need = size * scale
    if field < need * (1 - 1e-6):
        if len(model_scales) == 1:
            expected = math.ceil(need / in_scale - 1e-6)
            raise ValueError(
                f"image {path}: {shape[1]}x{shape[0]} pixels of {in_scale:g}″ cover "
                f"{field:.3g}″ but the model needs {size}x{size} pixels of {scale:g}″ "
                f"({need:.3g}″): give a cutout of at least {expected}x{expected} pixels"
            )
        raise ValueError(
            f"image {path}: {shape[1]}x{shape[0]} pixels; the model expects {size}x{size} "
            "(larger images are cropped about the centre)"
        )
    return scale


@dataclass
class LensImage:
    """A checked lens image (:func:`read_lens_image`).

    Attributes
    ----------
    image : ndarray
        float64 pixels, NaN/inf (if masked) set to 0.
    bad : ndarray
        Boolean mask of the masked pixels.
    pixel_scale : float
        Input pixel scale, arcsec.
    header : astropy Header
        The image HDU's header.
    notes, warnings : list of str
        What was assumed or overridden, and the warning texts issued.
    """

    image: np.ndarray
    bad: np.ndarray
    pixel_scale: float
    header: Any
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_lens_image(
    path: str | Path,
    hdu: int | str | None,
    pixel_scale: float | None,
    mask_nonfinite: bool,
) -> LensImage:
    """Read a lens image and apply the checks shared by the strong-lensing predictors.

    Pixel scale from ``pixel_scale`` (overrides the header, noted) or the header (refused
    without either); 8-bit-like images warn (:data:`NONLINEAR_WARNING`); NaN/inf pixels are an
    error unless ``mask_nonfinite`` (then set to 0, noted).

    Returns
    -------
    LensImage
    """
    from lensml.data.fits_io import pixel_scale_from_header

    path = Path(path)
    image, header = _read_2d(path, "image", hdu)
    notes: list[str] = []
    warns: list[str] = []
    header_scale = pixel_scale_from_header(header, str(path))
    if pixel_scale is not None:
        if not (isinstance(pixel_scale, int | float) and math.isfinite(pixel_scale)) or (
            pixel_scale <= 0
        ):
            raise ValueError(f"pixel_scale must be a finite number > 0 arcsec, got {pixel_scale!r}")
        if header_scale is not None and abs(header_scale - pixel_scale) > 1e-4 * pixel_scale:
            notes.append(f"pixel_scale={pixel_scale:g}″ overrides the header's {header_scale:g}″")
        in_scale = float(pixel_scale)
    elif header_scale is None:
        raise ValueError(
            f"image {path}: no usable pixel scale in the header (CD, CDELT or PIXSCALE); pass "
            "pixel_scale=... (--pixel-scale) in arcsec/pixel"
        )
    else:
        in_scale = float(header_scale)
    if is_nonlinear(image):
        warnings.warn(NONLINEAR_WARNING, UserWarning, stacklevel=3)
        warns.append(NONLINEAR_WARNING)
    bad = ~np.isfinite(image)
    if bad.any() and not mask_nonfinite:
        raise ValueError(
            f"image {path}: {int(bad.sum())} NaN or inf pixel(s); fix them or pass "
            "mask_nonfinite=True (--mask-nan) to set them to 0 and exclude them from chi2"
        )
    if bad.any():
        notes.append(f"{int(bad.sum())} NaN/inf pixel(s) set to 0 and excluded from chi2")
    return LensImage(np.where(bad, 0.0, image), bad, in_scale, header, notes, warns)


def predict_strong(
    fits: str | Path,
    model: str | Path,
    out: str | Path,
    *,
    pixel_scale: float | None = None,
    psf: str | Path | None = None,
    variance: str | Path | None = None,
    hdu: int | str | None = None,
    z_l: float | None = None,
    z_s: float | None = None,
    cosmology: Any = None,
    mask_nonfinite: bool = False,
    device: str = "cpu",
    panel: bool = True,
    symmetrise: bool = True,
) -> dict[str, Any]:
    """Reconstruct the source and lens of one FITS image (module docstring).

    Parameters
    ----------
    fits : path
        FITS file with the lens image (sky-subtracted, linear counts), lens near the centre.
    model : path
        Saved model directory of :func:`lensml.pipelines.strong.train_strong`.
    out : path
        Output FITS file (written atomically); the panel is ``out`` with ``.png``.
    pixel_scale : float, optional
        arcsec / pixel, > 0; required when the header has none (overrides it otherwise).
    psf : path, optional
        FITS PSF image (odd square side, same pixel scale as the image).
    variance : path, optional
        FITS variance map of the image (same shape, flux² per pixel).
    hdu : int or str, optional
        Image extension (default: the first 2-d image).
    z_l, z_s : float, optional
        Lens and source redshifts for σ_v and M(<θ_E) (header, else 0.5 and 2.0 assumed).
    cosmology : str or astropy Cosmology, optional
        Default: the paper's flat ΛCDM.
    mask_nonfinite : bool
        Replace NaN/inf pixels by 0 and exclude them from χ² instead of refusing the image.
    device : str
        Torch device.
    panel : bool
        Write the diagnostic PNG.
    symmetrise : bool
        Average the reconstruction over the image's eight mirrors and quarter turns
        (:meth:`lensml.nets.rim.AstroRIM.reconstruct`; 8× the network time, lower errors).

    Returns
    -------
    dict
        ``out``, ``panel``, ``params`` (table values), ``pixel_scale`` (working, arcsec),
        ``reduced_chi2``, ``notes`` (what was assumed) and ``warnings`` (a non-linear
        image, an Einstein ring at the field edge).

    Raises
    ------
    ValueError
        No usable pixel scale, an image smaller than the model's field, NaN pixels (without
        ``mask_nonfinite``), a PSF or variance map of the wrong shape or with bad values, a
        model that is not AstroRIM, redshifts with z_s <= z_l.
    """
    import torch

    from lensml.nets.astrorim import params_to_labels
    from lensml.pipelines.strong import read_sidecar
    from lensml.pipelines.strong_eval import load_astrorim, physical_quantities

    path = Path(fits)
    img = read_lens_image(path, hdu, pixel_scale, mask_nonfinite)
    image, bad, in_scale, header = img.image, img.bad, img.pixel_scale, img.header
    notes, warns = img.notes, img.warnings

    if variance is not None:
        var, _ = _read_2d(variance, "variance")
        if var.shape != image.shape:
            raise ValueError(
                f"variance {variance}: shape {var.shape} differs from the image's {image.shape}"
            )
        if np.any(~np.isfinite(var[~bad])) or np.any(var[~bad] <= 0):
            raise ValueError(f"variance {variance}: values must be finite and > 0")
    else:
        border = np.concatenate(
            [image[:8].ravel(), image[-8:].ravel(), image[:, :8].ravel(), image[:, -8:].ravel()]
        )
        good = border[np.isfinite(border)]
        sig = 1.4826 * float(np.median(np.abs(good - np.median(good)))) if good.size else 0.0
        sig = sig if sig > 0 else max(float(np.std(good)) if good.size else 0.0, 1e-12)
        var = np.full(image.shape, sig * sig)
        notes.append(f"no variance map: sigma = {sig:.4g} per pixel from the image border (MAD)")
    var = np.where(bad, np.inf, var)

    net, _ = load_astrorim(model, device)
    side = int(net.config["image_size"])
    sidecar = read_sidecar(model)
    model_scales = [float(s) for s in sidecar.get("pixel_scales", [])]
    scale = _working_grid(image.shape, in_scale, side, model_scales or [], path)
    if abs(scale - in_scale) > 1e-6 * scale:
        notes.append(f"image resampled from {in_scale:g}″ to the model's {scale:g}″ per pixel")
    if image.shape != (side, side) or scale != in_scale:
        notes.append(f"image {image.shape[1]}x{image.shape[0]} → centred {side}x{side} grid")
    y = _resample(image, in_scale, side, scale)
    ratio2 = (scale / in_scale) ** 2
    finite_var = np.where(np.isfinite(var), var, 0.0)
    var_w = _resample(finite_var, in_scale, side, scale).numpy() * ratio2
    mask_w = _resample(bad.astype(float), in_scale, side, scale).numpy() > 0
    var_w = np.where(mask_w | (var_w <= 0), np.inf, var_w)

    psf_t = None
    if psf is not None:
        kern, _ = _read_2d(psf, "psf")
        if kern.shape[0] != kern.shape[1] or kern.shape[0] % 2 == 0:
            raise ValueError(f"psf {psf}: must be square with an odd side, got {kern.shape}")
        if not np.all(np.isfinite(kern)) or kern.sum() <= 0:
            raise ValueError(f"psf {psf}: values must be finite with a positive sum")
        k_side = kern.shape[0]
        if scale != in_scale:
            k_side = 2 * round(kern.shape[0] * in_scale / scale / 2) + 1
            kern = _resample(kern, in_scale, k_side, scale, unit_sum=True).numpy()
        psf_t = torch.from_numpy(kern / kern.sum()).float().reshape(1, 1, k_side, k_side)
    else:
        fwhm, beta = float(net.operator.fwhm.detach()), float(net.operator.beta.detach())
        notes.append(
            "no PSF given: the model's learned global PSF is assumed (Moffat FWHM "
            f"{fwhm:.3g} px, beta {beta:.3g}, plus its learned residual)"
        )

    zl = z_l if z_l is not None else _header_z(header, ("Z_L", "ZLENS", "Z_LENS"))
    zs = z_s if z_s is not None else _header_z(header, ("Z_S", "ZSOURCE", "Z_SOURCE"))
    if zl is None or zs is None:
        zl = _DEFAULT_Z[0] if zl is None else zl
        zs = _DEFAULT_Z[1] if zs is None else zs
        notes.append(f"redshifts not given: assumed z_l = {zl:g}, z_s = {zs:g}")
    if not (zl > 0 and zs > zl):
        raise ValueError(f"redshifts must satisfy z_s > z_l > 0, got z_l={zl}, z_s={zs}")
    if cosmology is None:
        from lensml.physics.lens_conversions import paper_cosmology

        cosmology = paper_cosmology()

    x = y.float().reshape(1, 1, side, side).to(device)
    with torch.no_grad():
        res = net(x, None if psf_t is None else psf_t.to(device), symmetrise=symmetrise)
    half = side * scale / 2.0
    labels = params_to_labels({k: v.cpu() for k, v in res["params"].items()}, half).double()
    lab = labels.numpy()
    core = float(net.config.get("core", 0.0)) * half
    kappa = predicted_kappa(lab, scale, side, core)[0]
    source = res["source"][0, 0].cpu().double().numpy()
    model_img = res["model_image"][0, 0].cpu().double().numpy()
    data = x[0, 0].cpu().double().numpy()
    resid = data - model_img
    chi2_map = np.where(np.isfinite(var_w), resid**2 / var_w, 0.0)
    n_good = int(np.isfinite(var_w).sum())
    red_chi2 = float(chi2_map.sum() / max(n_good, 1))
    sig_v, mass = physical_quantities(lab[:, 0], zl, zs, cosmology)
    params = {name: float(lab[0, j]) for j, name in enumerate(_PARAM_COLUMNS[:9])}
    params.update(sigma_v=float(sig_v[0]), mass=float(mass[0]), reduced_chi2=red_chi2)
    edge = ring_edge_warning(params["theta_e"], half, len(model_scales) != 1)
    if edge is not None:
        warnings.warn(edge, UserWarning, stacklevel=2)
        warns.append(edge)
    src_scale = 2.0 * half * float(net.config.get("source_fov", 1.0)) / source.shape[-1]
    out = Path(out)
    _write_output(out, data, source, kappa, model_img, resid, chi2_map, params, scale, src_scale,
                  notes, warns, (zl, zs), edge is not None)  # fmt: skip
    panel_path = None
    if panel:
        from lensml.physics.lens_conversions import einstein_quantities

        sc = float(einstein_quantities(1.0, zl, zs, cosmology)["sigma_crit_arcsec"])
        panel_path = _panel(out.with_suffix(".png"), data, model_img, resid, chi2_map, source,
                            kappa, params, scale, sc, src_scale, warns)  # fmt: skip
    return {
        "out": str(out),
        "panel": None if panel_path is None else str(panel_path),
        "params": params,
        "pixel_scale": scale,
        "reduced_chi2": red_chi2,
        "z_l": zl,
        "z_s": zs,
        "notes": notes,
        "warnings": warns,
    }


#: PARAMS table columns and units.
_PARAM_COLUMNS = ("theta_e", "q", "phi", "x0", "y0", "gamma", "gamma_phi", "kappa_s", "r_s",
                  "sigma_v", "mass", "reduced_chi2")  # fmt: skip
_PARAM_UNITS = ("arcsec", "", "rad", "arcsec", "arcsec", "", "rad", "", "arcsec", "km/s",
                "solMass", "")  # fmt: skip


def _write_output(
    out: Path,
    data: np.ndarray,
    source: np.ndarray,
    kappa: np.ndarray,
    model: np.ndarray,
    resid: np.ndarray,
    chi2: np.ndarray,
    params: dict[str, float],
    scale: float,
    src_scale: float,
    notes: Sequence[str],
    warns: Sequence[str],
    z: tuple[float, float],
    ring_edge: bool,
) -> None:
    from astropy.io import fits

    from lensml.data.fits_io import write_hdulist_atomic

    primary = fits.PrimaryHDU()
    h = primary.header
    h["PIPELINE"] = ("lensml strong", "AstroRIM prediction")
    h["Z_L"], h["Z_S"] = (z[0], "lens redshift used"), (z[1], "source redshift used")
    h["NONLIN"] = (NONLINEAR_WARNING in warns, "non-linear image: physics unreliable")
    h["RINGEDGE"] = (ring_edge, "ring at field edge: theta_E unreliable")
    for note in notes:
        h.add_history(note.encode("ascii", "replace").decode()[:70])
    hdus: list[Any] = [primary]
    for name, arr, s in (("DATA", data, scale), ("SOURCE", source, src_scale),
                         ("KAPPA", kappa, scale), ("MODEL", model, scale),
                         ("RESIDUAL", resid, scale), ("CHI2", chi2, scale)):  # fmt: skip
        hdu = fits.ImageHDU(np.asarray(arr, np.float32), name=name)
        hdu.header["CDELT1"], hdu.header["CDELT2"] = -s / 3600.0, s / 3600.0
        hdu.header["CUNIT1"], hdu.header["CUNIT2"] = "deg", "deg"
        hdu.header["PIXSCALE"] = (s, "arcsec / pixel")
        hdus.append(hdu)
    cols = [
        fits.Column(name=n, format="D", unit=u or None, array=np.array([params[n]]))
        for n, u in zip(_PARAM_COLUMNS, _PARAM_UNITS, strict=True)
    ]
    hdus.append(fits.BinTableHDU.from_columns(cols, name="PARAMS"))
    write_hdulist_atomic(fits.HDUList(hdus), out)


def _radial(kappa: np.ndarray, scale: float, center: tuple[float, float]) -> tuple[Any, Any, Any]:
    n = kappa.shape[-1]
    c = (np.arange(n) - (n - 1) / 2) * scale
    xx, yy = np.meshgrid(c, c)
    r = np.hypot(xx - center[0], yy - center[1])
    edges = np.linspace(0, n * scale / 2, 25)
    mid = 0.5 * (edges[1:] + edges[:-1])
    prof = np.array(
        [kappa[(r >= a) & (r < b)].mean() if ((r >= a) & (r < b)).any() else np.nan
         for a, b in itertools.pairwise(edges)]
    )  # fmt: skip
    enclosed = np.array([kappa[r < b].sum() * scale * scale for b in edges[1:]])
    return mid, prof, (edges[1:], enclosed)


def _panel(
    path: Path,
    data: np.ndarray,
    model: np.ndarray,
    resid: np.ndarray,
    chi2: np.ndarray,
    source: np.ndarray,
    kappa: np.ndarray,
    params: dict[str, float],
    scale: float,
    sigma_crit_arcsec: float,
    src_scale: float,
    warns: Sequence[str],
) -> Path:
    from lensml.plots import _pyplot, save_figure

    plt = _pyplot()
    n = data.shape[-1]
    ext = [-n * scale / 2, n * scale / 2] * 2
    sext = [-source.shape[-1] * src_scale / 2, source.shape[-1] * src_scale / 2] * 2
    fig, axes = plt.subplots(2, 4, figsize=(15, 7.5))
    v = float(np.max(np.abs(resid))) or 1.0
    maps = [
        (axes[0, 0], data, "data", "magma", None, ext),
        (axes[0, 1], model, "model F(x)", "magma", None, ext),
        (axes[0, 2], resid, "residual", "RdBu_r", (-v, v), ext),
        (axes[0, 3], chi2, f"χ² map (χ²_ν = {params['reduced_chi2']:.3g})", "viridis", None, ext),
        (axes[1, 0], source, "source", "magma", None, sext),
        (axes[1, 1], np.log10(np.clip(kappa, 1e-3, None)), "log10 κ", "cividis", None, ext),
    ]
    for ax, img, title, cmap, lim, e in maps:
        kw = {} if lim is None else {"vmin": lim[0], "vmax": lim[1]}
        im = ax.imshow(img, origin="lower", cmap=cmap, extent=e, **kw)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    te = params["theta_e"]
    mid, prof, (redge, enc) = _radial(kappa, scale, (params["x0"], params["y0"]))
    ax = axes[1, 2]
    ax.plot(mid, prof)
    ax.axhline(1.0, color="k", lw=0.6, ls=":")
    ax.axvline(te, color="r", lw=0.8, ls="--", label=f"θ_E = {te:.3g}″")
    ax.set_yscale("log")
    ax.set_xlabel("r [″]")
    ax.set_ylabel("⟨κ⟩ (annulus)")
    ax.legend(fontsize=8)
    ax = axes[1, 3]
    ax.plot(redge, enc * sigma_crit_arcsec)
    ax.axvline(te, color="r", lw=0.8, ls="--")
    ax.axhline(params["mass"], color="r", lw=0.6, ls=":", label=f"M(<θ_E) = {params['mass']:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("r [″]")
    ax.set_ylabel("M(<r) [M_sun]")
    ax.legend(fontsize=8)
    title = (
        f"θ_E = {te:.3g}″, q = {params['q']:.2f}, γ = {params['gamma']:.3f}, "
        f"σ_v = {params['sigma_v']:.0f} km/s"
    )
    if NONLINEAR_WARNING in warns:
        title += "  — WARNING: non-linear image, physical outputs unreliable"
    elif warns:  # the only other warning: the ring at the field edge
        title += "  — WARNING: Einstein ring at the field edge, θ_E unreliable"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
