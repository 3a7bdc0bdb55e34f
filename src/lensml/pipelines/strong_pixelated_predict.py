"""``predict_pixelated``: a FITS image of a lens → pixelated source, κ map, model and panel.

The RIM works on a fixed grid (``n_image``² pixels over ``fov`` arcsec, recorded in
``strong_pixelated.json`` beside the model) with data in source units (the paper normalises
sources to peak 1 and SNR ≡ 1/σ). A FITS image is brought there as follows:

* **pixel scale** from the header (``CD``, ``CDELT``/``PC``, ``PIXSCALE``) or ``pixel_scale``;
  without either the image is refused. It is resampled (bilinear, about the image centre) to
  the model's pixel scale when they differ (ratios outside [0.5, 2] refused) and cropped to the
  model's field; an image smaller than that field is refused with the size needed.
* **units** — the image is divided by its 99.9th-percentile value (robust peak), so the lensed
  arcs have the O(1) amplitude of the training data; σ is divided by the same factor. The
  factor (``PEAK``) is written to the output header: multiply SOURCE and MODEL by it to get the
  input's units per model pixel.
* **noise** σ from ``sigma`` (input units, per input pixel), else from a variance map (median
  √variance), else 1.4826 × MAD of the outer 8 pixels of the resampled image (said so).
* **PSF** from a FITS kernel (same pixel scale as the image; resampled, unit sum, odd side) or
  a Gaussian of ``psf_fwhm`` arcsec; one of them is required (the likelihood needs it).
* **non-linear** 8-bit-like images give a warning (:data:`lensml.pipelines.strong_predict.
  NONLINEAR_WARNING`); NaN/inf pixels are an error unless ``mask_nonfinite`` (then set to 0 —
  the RIM's likelihood still sees them as zero-valued data — and excluded from χ²).
* **fine-tuning** (optional, ``finetune_steps`` > 0 with both VAEs): §2.5 on this observation.

Output FITS (atomic): DATA (normalised input on the model grid), SOURCE (source grid), KAPPA,
MODEL (F(x̂)), RESIDUAL ((y − F(x̂))/σ), header with χ²_ν, σ, PEAK and θ_E of the κ map (both
estimators of :func:`lensml.physics.pixelated_lensing.einstein_radius_from_kappa`); and a PNG
panel (data, model, residual, source, log10 κ).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["predict_pixelated"]


def predict_pixelated(
    fits: str | Path,
    model: str | Path,
    out: str | Path,
    *,
    pixel_scale: float | None = None,
    psf: str | Path | None = None,
    psf_fwhm: float | None = None,
    sigma: float | None = None,
    variance: str | Path | None = None,
    hdu: int | str | None = None,
    mask_nonfinite: bool = False,
    vae_source: str | Path | None = None,
    vae_kappa: str | Path | None = None,
    finetune_steps: int = 0,
    finetune_config: dict[str, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
    panel: bool = True,
) -> dict[str, Any]:
    """Reconstruct the source and κ map of one FITS lens image (module docstring).

    Parameters
    ----------
    fits : path
        FITS file with the lens image (linear, sky-subtracted), lens near the centre.
    model : path
        RIM model directory (:func:`lensml.pipelines.strong_pixelated.train_rim`).
    out : path
        Output FITS file; the panel is ``out`` with ``.png``.
    pixel_scale : float, optional
        arcsec / pixel (> 0); required when the header has none.
    psf : path, optional
        FITS PSF kernel at the image's pixel scale.
    psf_fwhm : float, optional
        Gaussian PSF FWHM in arcsec (> 0), when no PSF image is given.
    sigma : float, optional
        Noise σ per input pixel, input units (> 0).
    variance : path, optional
        Variance map (same shape as the image); σ = median √variance.
    hdu : int or str, optional
        Image extension.
    mask_nonfinite : bool
        Set NaN/inf pixels to 0 and exclude them from χ² instead of refusing the image.
    vae_source, vae_kappa : path, optional
        VAE model directories, needed when ``finetune_steps`` > 0.
    finetune_steps : int
        Maximum fine-tuning steps (0: baseline only).
    finetune_config : dict, optional
        Other :class:`~lensml.pipelines.strong_pixelated_finetune.FineTuneConfig` fields.
    seed : int
        Seeds the Fisher samples.
    device : str
        Torch device.
    panel : bool
        Write the PNG panel.

    Returns
    -------
    dict
        ``out``, ``panel``, ``reduced_chi2`` (and ``reduced_chi2_baseline`` after fine-tuning),
        ``theta_e`` (``supercritical``, ``enclosed``, arcsec), ``peak``, ``sigma`` (normalised),
        ``pixel_scale`` (model), ``notes`` and ``warnings``.
    """
    import torch

    from lensml.physics.pixelated_lensing import einstein_radius_from_kappa, gaussian_psf_kernels
    from lensml.pipelines.strong_pixelated import load_rim, load_vae
    from lensml.pipelines.strong_predict import (
        _read_2d,
        _resample,
        _working_grid,
        read_lens_image,
    )

    path = Path(fits)
    if (
        isinstance(finetune_steps, bool)
        or not isinstance(finetune_steps, int)
        or (finetune_steps < 0)
    ):
        raise ValueError(f"finetune_steps must be an integer >= 0; got {finetune_steps!r}")
    if finetune_steps and (vae_source is None or vae_kappa is None):
        raise ValueError("finetune_steps > 0 needs both vae_source and vae_kappa")
    if psf is None and psf_fwhm is None:
        raise ValueError(
            "no PSF: give psf=... (--psf, a FITS kernel) or psf_fwhm=... (--psf-fwhm, arcsec); "
            "the RIM's likelihood needs the observation's PSF"
        )
    if psf_fwhm is not None and not (isinstance(psf_fwhm, int | float) and psf_fwhm > 0):
        raise ValueError(f"psf_fwhm must be a number > 0 arcsec, got {psf_fwhm!r}")
    if sigma is not None and not (isinstance(sigma, int | float) and math.isfinite(sigma)
                                  and sigma > 0):  # fmt: skip
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")

    img = read_lens_image(path, hdu, pixel_scale, mask_nonfinite)
    image, bad, in_scale, notes, warns = (
        img.image,
        img.bad,
        img.pixel_scale,
        img.notes,
        img.warnings,
    )

    rim, side = load_rim(model, device=device)
    n, scale = int(side["n_image"]), float(side["fov"]) / int(side["n_image"])
    _working_grid(image.shape, in_scale, n, [scale], path)
    resampled = abs(scale - in_scale) > 1e-6 * scale
    if resampled:
        notes.append(f"image resampled from {in_scale:g}″ to the model's {scale:g}″ per pixel")
    if image.shape != (n, n):
        notes.append(f"image {image.shape[1]}x{image.shape[0]} → centred {n}x{n} grid")
    data = _resample(image, in_scale, n, scale).numpy()
    good = _resample(bad.astype(float), in_scale, n, scale).numpy() < 1e-9
    flux_factor = (scale / in_scale) ** 2  # counts per pixel are conserved by the resampling

    if sigma is not None:
        sig = float(sigma) * flux_factor
    elif variance is not None:
        var, _ = _read_2d(variance, "variance")
        if var.shape != image.shape:
            raise ValueError(
                f"variance {variance}: shape {var.shape} differs from the image's {image.shape}"
            )
        if np.any(~np.isfinite(var[~bad])) or np.any(var[~bad] <= 0):
            raise ValueError(f"variance {variance}: values must be finite and > 0")
        sig = float(np.median(np.sqrt(var[~bad]))) * flux_factor
        notes.append("sigma = median sqrt(variance) (the RIM assumes white noise)")
    else:
        border = np.concatenate([data[:8].ravel(), data[-8:].ravel(), data[:, :8].ravel(),
                                 data[:, -8:].ravel()])  # fmt: skip
        sig = 1.4826 * float(np.median(np.abs(border - np.median(border))))
        if not sig > 0:
            raise ValueError(
                f"image {path}: cannot estimate the noise from the image border (zero MAD); "
                "pass sigma=... (--sigma) or variance=... (--variance)"
            )
        notes.append(f"no sigma given: {sig:.4g} per model pixel from the image border (MAD)")
    peak = float(np.percentile(data[good], 99.9)) if good.any() else 0.0
    if not peak > 0:
        raise ValueError(f"image {path}: no positive signal (99.9th percentile <= 0)")
    y_np, sig_n = data / peak, sig / peak

    if psf is not None:
        kern, _ = _read_2d(psf, "psf")
        if kern.shape[0] != kern.shape[1] or kern.shape[0] % 2 == 0:
            raise ValueError(f"psf {psf}: must be square with an odd side, got {kern.shape}")
        if not np.all(np.isfinite(kern)) or kern.sum() <= 0:
            raise ValueError(f"psf {psf}: values must be finite with a positive sum")
        size = kern.shape[0]
        if resampled:
            size = max(3, round(kern.shape[0] * in_scale / scale) | 1)
            kern = _resample(kern, in_scale, size, scale).numpy()
        psf_t = torch.as_tensor(kern / kern.sum(), dtype=torch.float32)[None, None]
    else:
        psf_t = gaussian_psf_kernels(torch.tensor([float(psf_fwhm)]), scale, dtype=torch.float32)

    dev = torch.device(device)
    y = torch.as_tensor(y_np, dtype=torch.float32, device=dev)[None, None]
    sig_t = torch.tensor([sig_n], dtype=torch.float32, device=dev)
    psf_t = psf_t.to(dev)
    lens = rim.lens
    with torch.no_grad():
        est = rim(y, sig_t, psf_t)
    src, kap = est["source"], est["kappa"]
    result: dict[str, Any] = {}
    if finetune_steps:
        from lensml.pipelines.strong_pixelated_finetune import FineTuneConfig, finetune

        cfg = FineTuneConfig(**{**dict(finetune_config or {}), "max_steps": int(finetune_steps)})
        vs, _ = load_vae(vae_source, "source", device=device)  # type: ignore[arg-type]
        vk, _ = load_vae(vae_kappa, "kappa", device=device)  # type: ignore[arg-type]
        gen = torch.Generator().manual_seed(int(seed))
        ft = finetune(rim, y, sig_t, psf_t, vs, vk, cfg, generator=gen, return_model=False)
        src, kap = ft.source_finetuned, ft.kappa_finetuned
        result["reduced_chi2_baseline"] = float(ft.chi2_baseline)
        result["finetune_steps"] = int(ft.steps)
        notes.append(f"fine-tuned for {ft.steps} step(s): chi2_nu {ft.chi2_baseline:.4g} → "
                     f"{ft.chi2_finetuned:.4g}")  # fmt: skip
    with torch.no_grad():
        mod = lens.forward(src, kap, psf_t)
    resid = ((y - mod) / sig_n)[0, 0].cpu().numpy()
    chi2 = float(np.mean(resid[good] ** 2))
    theta = {
        m: float(einstein_radius_from_kappa(kap.double().cpu(), scale, m)[0])
        for m in ("supercritical", "enclosed")
    }
    out = Path(out)
    _write_output(out, y_np, src[0, 0].cpu().numpy(), kap[0, 0].cpu().numpy(),
                  mod[0, 0].cpu().numpy(), resid, scale, lens.source_pixel_scale, peak, sig_n,
                  chi2, theta, notes, warns)  # fmt: skip
    panel_path = None
    if panel:
        panel_path = _panel(out.with_suffix(".png"), y_np, mod[0, 0].cpu().numpy(), resid,
                            src[0, 0].cpu().numpy(), kap[0, 0].cpu().numpy(), scale,
                            lens.source_pixel_scale, chi2)  # fmt: skip
    result.update(
        out=str(out), panel=None if panel_path is None else str(panel_path),
        reduced_chi2=chi2, theta_e=theta, peak=peak, sigma=sig_n, pixel_scale=scale,
        notes=notes, warnings=warns,
    )  # fmt: skip
    return result


def _write_output(out: Path, data: np.ndarray, source: np.ndarray, kappa: np.ndarray,
                  model: np.ndarray, resid: np.ndarray, scale: float, src_scale: float,
                  peak: float, sigma: float, chi2: float, theta: dict[str, float],
                  notes: list[str], warns: list[str]) -> None:  # fmt: skip
    from astropy.io import fits

    from lensml.data.fits_io import write_hdulist_atomic

    primary = fits.PrimaryHDU()
    h = primary.header
    h["PIPELINE"] = ("lensml strong-pixelated", "pixelated RIM prediction")
    h["PEAK"] = (peak, "input units of 1.0 in DATA/SOURCE/MODEL")
    h["SIGMA"] = (sigma, "noise sigma in DATA units")
    h["CHI2NU"] = (chi2, "reduced chi2 of MODEL (unmasked pixels)")
    h["THETAE"] = (theta["enclosed"], "arcsec, mean kappa = 1 inside (enclosed)")
    h["THETAESC"] = (theta["supercritical"], "arcsec, sqrt(M(kappa>1)/pi) (paper eq. 13)")
    h["NONLIN"] = (bool(warns), "non-linear image: results unreliable")
    for note in notes:
        h.add_history(note.encode("ascii", "replace").decode()[:70])
    hdus: list[Any] = [primary]
    for name, arr, s in (("DATA", data, scale), ("SOURCE", source, src_scale),
                         ("KAPPA", kappa, scale), ("MODEL", model, scale),
                         ("RESIDUAL", resid, scale)):  # fmt: skip
        hdu = fits.ImageHDU(np.asarray(arr, np.float32), name=name)
        hdu.header["CDELT1"], hdu.header["CDELT2"] = -s / 3600.0, s / 3600.0
        hdu.header["CUNIT1"], hdu.header["CUNIT2"] = "deg", "deg"
        hdu.header["PIXSCALE"] = (s, "arcsec / pixel")
        hdus.append(hdu)
    write_hdulist_atomic(fits.HDUList(hdus), out)


def _panel(path: Path, data: np.ndarray, model: np.ndarray, resid: np.ndarray,
           source: np.ndarray, kappa: np.ndarray, scale: float, src_scale: float,
           chi2: float) -> Path:  # fmt: skip
    from lensml.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.2))
    h, hs = data.shape[0] * scale / 2, source.shape[0] * src_scale / 2
    ext, ext_s = (-h, h, -h, h), (-hs, hs, -hs, hs)
    v = max(3.0, float(np.nanmax(np.abs(resid))))
    panels = (
        ("data", data, ext, "bone", None, None),
        ("model F(x̂)", model, ext, "bone", None, None),
        (f"(y − F)/σ, χ²_ν = {chi2:.3g}", resid, ext, "seismic", -v, v),
        ("source", source, ext_s, "bone", None, None),
        ("log10 κ", np.log10(np.clip(kappa, 1e-2, None)), ext, "hot", None, None),
    )
    for ax, (title, img, e, cmap, lo, hi) in zip(axes, panels, strict=True):
        im = ax.imshow(img, origin="lower", extent=e, cmap=cmap, vmin=lo, vmax=hi)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x [″]")
    axes[0].set_ylabel("y [″]")
    fig.tight_layout()
    return save_figure(fig, path)
