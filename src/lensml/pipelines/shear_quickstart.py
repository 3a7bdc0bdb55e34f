"""The shear section of ``lensml quickstart`` and a simulated lensing-cluster field.

:func:`quickstart_section` (≈2–3 min on 2 CPU cores) simulates a small matched set with the
``shear`` generator, trains ``shear-cnn`` briefly (or uses shipped weights when the package holds
``lensml/models/shear/shear-cnn/``, see :func:`shipped_model_dir`), evaluates it against KSB and
REGAUSS on the same held-out stamps (Table 4 analogue, RMS vs magnitude) and runs the prediction
pipeline on a simulated cluster field: galaxies of the generator's population placed on a large
image, each sheared by an NFW halo (:mod:`lensml.physics.mass.nfw`, mass and concentration turned
into lensing units by :func:`lensml.physics.cosmology.nfw_lensing_params`), convolved with the
preset PSF and covered by correlated noise; the CNN's catalogue is smoothed into field maps and
compared with the same smoothing of the true shears.

The demo network sees a few thousand stamps for a few epochs; the paper's estimator saw 1.5 M.
Its RMS is therefore far from the paper's — ``benchmarks/shear_accuracy.py`` is the real run.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ClusterField", "quickstart_section", "shipped_model_dir", "simulate_cluster_field"]

#: Demo sizes: quick (default) and ``full``.
DEMO = {
    False: {"n_train": 2048, "n_test": 1024, "epochs": 8},
    True: {"n_train": 12000, "n_test": 3000, "epochs": 20},
}


def shipped_model_dir(network: str = "shear-cnn") -> Path | None:
    """The directory of trained weights shipped inside the package, or None.

    The hook: a saved model directory (``model.json``, ``weights.pt``, ``normalisation.json``
    and the shear post-processing files) at ``lensml/models/shear/<network>/`` is used by
    :func:`quickstart_section` instead of training.
    """
    from importlib.resources import files

    try:
        root = Path(str(files("lensml"))) / "models" / "shear" / network
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - lensml is importable here
        return None
    return root if (root / "model.json").is_file() else None


@dataclass(frozen=True)
class ClusterField:
    """A simulated lensing-cluster image and its source catalogue.

    Attributes
    ----------
    image : numpy.ndarray
        ``(H, W)`` float32, ``image[i, j]`` at 0-based pixel ``(x, y) = (j, i)``.
    x, y : numpy.ndarray
        ``(N,)`` 0-based pixel positions of the sources.
    g1, g2 : numpy.ndarray
        ``(N,)`` true reduced shears (NFW, GalSim signs).
    pixel_scale : float
        arcsec / pixel.
    noise_sigma : float
        Per-pixel σ of the background noise.
    lens : dict
        NFW parameters (``m200``, ``c``, ``z_l``, ``z_s``, ``r_s``, ``alpha_rs``, centre).
    """

    image: np.ndarray
    x: np.ndarray
    y: np.ndarray
    g1: np.ndarray
    g2: np.ndarray
    pixel_scale: float
    noise_sigma: float
    lens: dict[str, Any]


def simulate_cluster_field(
    seed: int = 0,
    *,
    side: float = 120.0,
    n_sources: int = 240,
    m200: float = 1e15,
    concentration: float = 4.0,
    z_l: float = 0.3,
    z_s: float = 1.0,
    r_min: float = 20.0,
    median_snr: float = 25.0,
    preset: str = "clash",
) -> ClusterField:
    """Galaxies sheared by an NFW halo at the centre of a ``side`` × ``side`` arcsec image.

    Parameters
    ----------
    seed : int
        Seeds one ``torch.Generator`` for every random draw.
    side : float
        Field side in arcsec (the image has ``round(side / pixel_scale)`` pixels per side).
    n_sources : int
        Sources placed uniformly at r >= ``r_min`` from the halo centre, at least 1.
    m200, concentration : float
        Halo M_200c [M_sun] and c_200c.
    z_l, z_s : float
        Lens and source redshifts.
    r_min : float
        Inner radius without sources, arcsec (keeps |g| within the trained range).
    median_snr : float
        Sets the noise: per-pixel σ = median over sources of sqrt(Σ clean²) / median_snr.
    preset : str
        ``shear`` generator preset (pixel scale, PSF, noise correlation).

    Returns
    -------
    ClusterField
    """
    import torch

    from lensml.physics import cosmology
    from lensml.physics.mass import nfw
    from lensml.physics.noise import correlated_noise, read_correlation_function
    from lensml.sims import shear_galaxies as sg
    from lensml.sims.shear import draw_mag_radius, instrument, shear_config
    from lensml.sims.shear_presets import COSMOS_FILES, cosmos_data_dir, psf_margin

    if int(n_sources) < 1 or not side > 2 * r_min:
        raise ValueError("simulate_cluster_field: need n_sources >= 1 and side > 2 r_min")
    cfg = shear_config(preset, cosmos_fraction=0.0)
    inst = instrument(cfg)
    ps = float(inst.pixel_scale)
    gen = torch.Generator().manual_seed(int(seed))
    f64 = torch.float64
    npix = round(side / ps)
    half = 0.5 * (npix - 1) * ps
    # positions (arcsec from the centre, uniform outside r_min)
    pos = []
    while sum(len(p) for p in pos) < n_sources:
        xy = (torch.rand(4 * n_sources, 2, generator=gen, dtype=f64) * 2 - 1) * half
        pos.append(xy[xy.norm(dim=1) >= r_min])
    xy = torch.cat(pos)[:n_sources]
    rs, alpha_rs, _ = cosmology.nfw_lensing_params(m200, concentration, z_l, z_s)
    xs, ys = xy[None, :, 0], xy[None, :, 1]
    gam1, gam2 = nfw.shear(xs, ys, float(rs), float(alpha_rs))
    kappa = nfw.convergence(xs, ys, float(rs), float(alpha_rs))
    g1, g2 = (gam1 / (1 - kappa)).reshape(-1), (gam2 / (1 - kappa)).reshape(-1)
    # galaxies of the generator's population, rendered on 48-pixel stamps and pasted
    mag, hlr = draw_mag_radius(n_sources, gen, cfg, inst)
    own = sg.draw_own_galaxies(n_sources, gen, cfg, hlr)
    flux = torch.pow(10.0, -0.4 * (mag - cfg.zeropoint))
    size = 48
    cpix = 0.5 * (npix - 1)  # image centre, pixels
    px, py = xy[:, 0] / ps + cpix, xy[:, 1] / ps + cpix
    j0 = torch.floor(px - 0.5 * (size - 1) + 0.5).long()
    i0 = torch.floor(py - 0.5 * (size - 1) + 0.5).long()
    dx = (px - j0 - 0.5 * (size - 1)) * ps
    dy = (py - i0 - 0.5 * (size - 1)) * ps
    rpsf = sg.RenderPSF(inst.psf_params(), psf_margin(inst), inst.oversample)
    stamps = sg.render_own_galaxies(own, flux, g1, g2, dx, dy, size, ps, rpsf, f64)[:, 0]
    image = torch.zeros(npix + 2 * size, npix + 2 * size, dtype=f64)
    for k in range(n_sources):  # paste with a margin so stamps near the edges fit
        r0, c0 = int(i0[k]) + size, int(j0[k]) + size
        image[r0 : r0 + size, c0 : c0 + size] += stamps[k]
    image = image[size:-size, size:-size]
    sigma = float(stamps.pow(2).sum(dim=(1, 2)).sqrt().median()) / float(median_snr)
    if inst.noise == "cosmos":
        cf = read_correlation_function(str(cosmos_data_dir(None) / COSMOS_FILES["noise_cf"]))
        noise = correlated_noise((1, npix, npix), sigma, generator=gen, correlation=cf,
                                 dtype=f64)[0]  # fmt: skip
    else:
        noise = torch.randn(npix, npix, generator=gen, dtype=f64) * sigma
    lens = {"m200_msun": m200, "c200c": concentration, "z_l": z_l, "z_s": z_s,
            "r_s_arcsec": float(rs), "alpha_rs_arcsec": float(alpha_rs),
            "centre_pixel": [cpix, cpix]}  # fmt: skip
    return ClusterField(
        image=(image + noise).to(torch.float32).numpy(), x=px.numpy(), y=py.numpy(),
        g1=g1.numpy(), g2=g2.numpy(), pixel_scale=ps, noise_sigma=sigma, lens=lens,
    )  # fmt: skip


def _write_field_inputs(out: Path, field: ClusterField) -> tuple[Path, Path]:
    from astropy.io import fits
    from astropy.wcs import WCS

    from lensml.data.fits_io import write_catalog, write_hdulist_atomic

    h, w = field.image.shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [0.5 * (w + 1), 0.5 * (h + 1)]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.cdelt = [-field.pixel_scale / 3600.0, field.pixel_scale / 3600.0]
    wcs.wcs.cunit = ["deg", "deg"]
    image_path = out / "cluster_image.fits"
    hdu = fits.PrimaryHDU(field.image, header=wcs.to_header())
    write_hdulist_atomic(fits.HDUList([hdu]), image_path)
    cat_path = out / "cluster_sources.fits"
    columns = {"id": np.arange(field.x.size), "x": field.x + 1.0, "y": field.y + 1.0}
    write_catalog(cat_path, {**columns, "g1_true": field.g1, "g2_true": field.g2})
    return image_path, cat_path


def quickstart_section(
    out_dir: str | Path, seed: int = 0, device: str = "cpu", full: bool = False
) -> tuple[list[Path], dict[str, Any]]:
    """Simulate, train (or load shipped weights), evaluate and map a simulated cluster.

    Parameters
    ----------
    out_dir : path
        Directory for the figures, the evaluation JSON and the cluster products (created).
    seed : int
        Seed of every simulation, the training and the bootstrap.
    device : str
        Torch device (``cpu``, ``cuda``...).
    full : bool
        Larger sets and more epochs (≈15 min on CPU) instead of the ≈2–3 min default.

    Returns
    -------
    (list of Path, dict)
        The files written and a JSON-able summary (Table 4 analogue, symmetrisation effect,
        speeds, cluster-field accuracy).
    """
    from astropy.table import Table

    from lensml.data.runner import run_simulate
    from lensml.pipelines.shear import load_shear_estimator, train_shear
    from lensml.pipelines.shear_calibration import AffineCalibration
    from lensml.pipelines.shear_eval import evaluate_shear
    from lensml.pipelines.shear_fields import field_grid, smooth_shear_field
    from lensml.pipelines.shear_predict import predict_shear

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = DEMO[bool(full)]
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    summary: dict[str, Any] = {"config": dict(size), "full": bool(full)}
    model_dir = shipped_model_dir("shear-cnn")
    if model_dir is None:
        run_simulate("shear", size["n_train"], work / "train", seed, shard_size=1024,
                     progress=False)  # fmt: skip
        train = train_shear(work / "train", "shear-cnn", work / "run", size["epochs"],
                            seed=seed, device=None if device == "cpu" else device,
                            progress=False)  # fmt: skip
        model_dir = train["model_dir"]
        keep = ("epochs", "best_val_loss", "n_train", "train_seconds", "n_parameters")
        summary["training"] = {k: train.get(k) for k in keep}
    else:
        summary["training"] = {"shipped_weights": str(model_dir)}
    run_simulate("shear", size["n_test"], work / "test", seed + 1, shard_size=1024,
                 progress=False)  # fmt: skip
    ev = evaluate_shear(work / "test", model_dir, out, seed=seed, device=device,
                        print_table=False)  # fmt: skip
    summary["table4"] = {k: v["table4"] for k, v in ev["methods"].items()}
    summary["symmetrisation"] = ev["symmetrisation"]
    summary["speed_stamps_per_s"] = ev["speed"]
    written = [Path(p) for p in ev["figures"]] + [Path(ev["json"])]
    # ---- a simulated cluster: image + catalogue → shear catalogue → smoothed field
    field = simulate_cluster_field(seed + 2)
    image_path, cat_path = _write_field_inputs(out, field)
    lam = 15.0
    res = predict_shear(image_path, cat_path, model_dir, out / "cluster_shear.fits",
                        field_scale=lam, n_boot=50, seed=seed, device=device)  # fmt: skip
    ksb = predict_shear(image_path, cat_path, model_dir, out / "cluster_shear_ksb.fits",
                        estimator="ksb", psf="preset", field_scale=lam, n_boot=0, seed=seed,
                        whiskers=False)  # fmt: skip
    written += [image_path, cat_path, Path(res["catalog"]), Path(ksb["catalog"])]
    written += [Path(p) for p in (res["field"], res["whiskers"], ksb["field"]) if p]
    est = load_shear_estimator(model_dir)
    ps = field.pixel_scale
    h, w = field.image.shape
    gx, gy = field_grid((-0.5, w - 0.5, -0.5, h - 0.5), 0.5 * lam / ps)
    truth = smooth_shear_field(field.x, field.y, field.g1, field.g2, gx, gy, lam / ps)
    accuracy = {}
    ksb_cal = AffineCalibration.from_dict(ev["methods"]["ksb"]["calibration"])
    for name, path, cal in (("cnn", res["catalog"], None), ("ksb", ksb["catalog"], ksb_cal)):
        t = Table.read(path)
        ok = np.asarray(t["flag"]) == 0
        g = np.stack([np.asarray(t["g1"], float), np.asarray(t["g2"], float)], 1)[ok]
        if cal is not None:
            g = cal.apply(g)
        x, y = np.asarray(t["x"], float)[ok] - 1.0, np.asarray(t["y"], float)[ok] - 1.0
        est_field = smooth_shear_field(x, y, g[:, 0], g[:, 1], gx, gy, lam / ps)
        d = np.concatenate([(est_field.g1 - truth.g1).ravel(), (est_field.g2 - truth.g2).ravel()])
        resid = g - np.stack([field.g1, field.g2], 1)[ok]
        accuracy[name] = {
            "n_sources": int(ok.sum()),
            "per_source_rms": float(np.sqrt(np.mean(resid**2))),
            "field_rms_vs_true_field": float(np.sqrt(np.nanmean(d**2))),
        }
    summary["cluster_field"] = {
        "lens": field.lens, "n_sources": int(field.x.size), "pixel_scale": ps,
        "field_scale_arcsec": lam, "noise_sigma": field.noise_sigma,
        "true_g_abs_max": float(np.hypot(field.g1, field.g2).max()), "accuracy": accuracy,
        "cnn_symmetrised": est.symmetrise, "cnn_calibrated": est.calibration is not None,
    }  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    summary["files"] = [str(p) for p in written]
    return written, _finite(summary)


def _finite(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj
