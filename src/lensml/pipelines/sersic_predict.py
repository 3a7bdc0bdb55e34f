"""``predict_sersic`` (FITS cutouts → Sérsic catalogue) and the quickstart's Sérsic section.

Prediction reads cutouts with :func:`lensml.data.fits_io.read_cutouts` (one cutout per file,
or every image extension of one file) and, for GaLNet-2, a PSF image per cutout (``psf=``
files or arrays, or ``psf_hdu=`` an extension of each cutout's file). The inputs must match
what the model was trained on: stamp side S and pixel scale (and PSF side P for GaLNet-2).
Anything else is refused with the expected size in the message, unless ``resample=True``:
then cutouts and PSFs are interpolated (bilinear, :func:`resample_stamps`) onto the model's
grid, centred on the cutout centre, conserving flux (PSFs renormalised to unit sum). Pixels
of the new grid outside the cutout are 0 (sky-subtracted). Pixel-scale ratios outside
[0.5, 2] are refused even then (bilinear interpolation aliases beyond that).

Photometry: the network predicts magnitudes in its training store's system
(``mag = zp − 2.5 log10(counts / exptime)``, kept with the model). Cutouts in another system
give their ``zeropoint`` (AB mag of 1 count/s) and/or ``exptime``; their counts are rescaled
into the model's system before prediction (:func:`lensml.pipelines.sersic_eval.
photometry_rescale`), so the catalogue's magnitudes are AB magnitudes either way.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lensml.pipelines.sersic import SersicModel, load_sersic_model
from lensml.pipelines.sersic_data import inspect_sersic_store
from lensml.pipelines.sersic_metrics import PARAMS

__all__ = ["CATALOG_UNITS", "predict_sersic", "quickstart_section", "resample_stamps",
           "shipped_model"]  # fmt: skip

#: Units of the catalogue columns (σ columns have their parameter's unit).
CATALOG_UNITS = {"x": "arcsec", "y": "arcsec", "mag": "mag", "r_eff": "arcsec", "pa": "deg"}


def resample_stamps(
    images: Any, in_scale: float, out_size: int, out_scale: float, *, unit_sum: bool = False
) -> Any:
    """Bilinear resampling of ``(N, 1, H, W)`` stamps onto a centred ``out_size``² grid.

    Pixel centres follow lensml's convention (``x_j = (j − (n−1)/2) · scale``, both grids
    centred on the same point). Output pixels sample the input's surface brightness at their
    centres (bilinear between input pixel centres, 0 outside the input) times
    ``(out_scale / in_scale)²`` so that counts per pixel are conserved; with ``unit_sum``
    each output is divided by its sum instead (PSFs). With equal scales and an odd size
    difference of the same parity this is an exact centred crop / zero-pad.

    Raises
    ------
    ValueError
        For a scale ratio outside [0.5, 2], a non-4-d input or a non-positive size or scale.
    """
    import torch
    import torch.nn.functional as F

    if not (in_scale > 0 and out_scale > 0) or int(out_size) < 1:
        raise ValueError(f"resample: scales must be > 0 and out_size >= 1 ({in_scale}, "
                         f"{out_scale}, {out_size})")  # fmt: skip
    ratio = out_scale / in_scale
    if not 0.5 <= ratio <= 2.0:
        raise ValueError(
            f"resample: pixel-scale ratio {ratio:.3g} (cutouts {in_scale:g}″/px, model "
            f"{out_scale:g}″/px) is outside [0.5, 2], where bilinear resampling aliases"
        )
    x = torch.as_tensor(images, dtype=torch.float64)
    if x.ndim != 4:
        raise ValueError(f"resample: images must be (N, C, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    s = int(out_size)
    offset = (torch.arange(s, dtype=torch.float64) - (s - 1) / 2) * ratio

    def norm(n_in: int) -> Any:
        pos = offset + (n_in - 1) / 2  # input pixel-index coordinate of each output centre
        return 2.0 * pos / max(n_in - 1, 1) - 1.0

    gy, gx = torch.meshgrid(norm(h), norm(w), indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).expand(x.shape[0], s, s, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if unit_sum:
        total = out.sum(dim=(-2, -1), keepdim=True)
        if bool((total <= 0).any()):
            raise ValueError("resample: a resampled PSF has no positive flux")
        return (out / total).float()
    return (out * ratio**2).float()


def _read_store(path: Path, m: SersicModel) -> tuple[Any, Any, list[str], float]:
    import torch

    from lensml.pipelines.sersic_data import read_sersic_arrays

    info = inspect_sersic_store(path)
    arr = read_sersic_arrays(info, ["image", "psf"])
    sources = [f"{info.root}[{i}]" for i in range(info.n)]
    image = torch.from_numpy(np.ascontiguousarray(arr["image"])).float()
    if not bool(torch.isfinite(image).all()):
        raise ValueError(f"data_dir {info.root}: stamps with NaN or inf pixels")
    return (
        image,
        torch.from_numpy(np.ascontiguousarray(arr["psf"])).float(),
        sources,
        info.pixel_scale,
    )


def _conform(
    image: Any, psf: Any, scale: float, m: SersicModel, resample: bool
) -> tuple[Any, Any, bool]:
    """Check (or resample) cutouts and PSFs against the model's grid."""
    s, p = m.stamp_size, m.psf_size
    ps = float(m.meta["pixel_scale"])
    where = f"model {m.path} ({m.name})"
    h, w = int(image.shape[-2]), int(image.shape[-1])
    same_scale = abs(scale - ps) <= 1e-4 * ps
    changed = False
    if (h, w) != (s, s) or not same_scale:
        if not resample:
            what = f"{h}x{w} pixels" if (h, w) != (s, s) else f"at {scale:g}″/px"
            raise ValueError(
                f"cutouts are {what} but {where} expects {s}x{s}-pixel stamps at {ps:g}″/px "
                "(its training stamps); cut them to that size or pass resample=True "
                "(--resample) to interpolate them onto that grid"
            )
        image = resample_stamps(image, scale, s, ps)
        changed = True
    if m.with_psf:
        k = (int(psf.shape[-2]), int(psf.shape[-1]))
        if k != (p, p) or not same_scale:
            if not resample:
                raise ValueError(
                    f"PSF images are {k[0]}x{k[1]} pixels but {where} expects {p}x{p} PSFs "
                    f"at {ps:g}″/px; give PSFs of that size or pass resample=True (--resample)"
                )
            psf = resample_stamps(psf, scale, p, ps, unit_sum=True)
            changed = True
    return image, psf, changed


def predict_sersic(
    inputs: Sequence[str | Path] | str | Path,
    model: str | Path,
    out: str | Path,
    *,
    psf: Any = None,
    psf_hdu: int | str | None = None,
    hdu: int | str | None = None,
    pixel_scale: float | None = None,
    zeropoint: float | None = None,
    exptime: float | None = None,
    resample: bool = False,
    batch_size: int = 256,
    device: str = "cpu",
) -> dict[str, Any]:
    """Sérsic parameters of galaxy cutouts, written as a FITS catalogue.

    Parameters
    ----------
    inputs : path or sequence of path
        FITS cutouts (one per file, HDU ``hdu`` or the first image; a single file with
        several image extensions gives one cutout per extension), or one ``sersic`` store
        directory (its stamps and PSFs).
    model : path
        Model directory of :func:`lensml.pipelines.sersic.train_sersic`.
    out : path
        Output FITS catalogue (binary table ``CATALOG``, written atomically): ``index``,
        ``source``, ``x``, ``y`` (arcsec from the cutout centre, x right, y up), ``mag``,
        ``r_eff`` (arcsec, semi-major), ``q``, ``pa`` (degrees CCW from +x in [0, 180)),
        ``n``, ``pa_amplitude`` (|(cos 2PA, sin 2PA)|, → 0 for round galaxies) and, when the
        model has a σ head, ``sigma_<param>`` for the seven parameters.
    psf : path, sequence of path or array, optional
        PSF image(s): one shared or one per cutout (normalised to unit sum). Required by
        GaLNet-2 (or ``psf_hdu``); GaLNet-1 does not use PSFs and ignores them.
    psf_hdu : int or str, optional
        Extension of each cutout's file that holds its PSF.
    hdu : int or str, optional
        Extension of the cutout image.
    pixel_scale : float, optional
        arcsec / pixel when the headers have no WCS (or to override them).
    zeropoint, exptime : float, optional
        Photometric system of the cutouts (AB mag of 1 count/s; seconds); default: the
        model's training system.
    resample : bool
        Interpolate cutouts / PSFs of another size or pixel scale onto the model's grid
        (:func:`resample_stamps`) instead of refusing them.
    batch_size : int
        Cutouts per forward pass.
    device : str
        Torch device.

    Returns
    -------
    dict
        ``n``, ``out``, ``columns``, ``network``, ``has_sigma``, ``resampled``.

    Raises
    ------
    ValueError
        (``FitsError`` for unreadable files) NaN/inf pixels (naming the files), a cutout or
        PSF of the wrong size or pixel scale (naming the expected one), a missing PSF for
        GaLNet-2, a model that is not a Sérsic model.
    """
    from lensml.data.fits_io import read_cutouts, write_catalog
    from lensml.nets.sersic_labels import decode_sersic_outputs
    from lensml.pipelines.sersic_eval import photometry_rescale

    m = load_sersic_model(model, device)
    paths = [Path(inputs)] if isinstance(inputs, str | Path) else [Path(p) for p in inputs]
    if not paths:
        raise ValueError("no inputs given (FITS cutouts or a sersic store directory)")
    if len(paths) == 1 and (paths[0] / "manifest.json").is_file():
        image, psf_t, sources, scale = _read_store(paths[0], m)
    else:
        use_psf = m.with_psf and (psf is not None or psf_hdu is not None)
        cut = read_cutouts(
            [str(p) for p in paths] if len(paths) > 1 else str(paths[0]), hdu=hdu,
            psf=psf if use_psf else None, psf_hdu=psf_hdu if use_psf else None,
            pixel_scale=pixel_scale, override=pixel_scale is not None,
        )  # fmt: skip
        image, psf_t, sources, scale = cut.images, cut.psf, cut.sources, cut.pixel_scale
        if m.with_psf and psf_t is None:
            raise ValueError(
                f"model {m.path} ({m.name}) uses each galaxy's PSF: give the PSF images with "
                "psf= (one shared file or one per cutout; --psf) or psf_hdu= (the extension of "
                "each cutout's file that holds it; --psf-hdu)"
            )
    image, psf_t, changed = _conform(image, psf_t, scale, m, resample)
    if zeropoint is not None or exptime is not None:
        zp = float(m.meta["zeropoint"] if zeropoint is None else zeropoint)
        et = float(m.meta["exptime"] if exptime is None else exptime)
        if not (math.isfinite(zp) and et > 0):
            raise ValueError(f"zeropoint must be finite and exptime > 0, got {zp}, {et}")
        image = image * float(photometry_rescale(zp, et, m.meta["zeropoint"], m.meta["exptime"]))
    if psf_t is not None and m.with_psf and psf_t.shape[0] == 1:
        psf_t = psf_t.expand(image.shape[0], *psf_t.shape[1:])
    mu, sig = m.predict_encoded(image, psf_t if m.with_psf else None, batch_size, device)
    dec = decode_sersic_outputs(mu if sig is None else np.concatenate([mu, sig], axis=1))
    columns: dict[str, Any] = {"index": np.arange(mu.shape[0]), "source": np.array(sources)}
    for k in PARAMS:
        columns[k] = np.asarray(dec[k], dtype=np.float64)
    columns["pa_amplitude"] = np.asarray(dec["pa_amplitude"], dtype=np.float64)
    units = dict(CATALOG_UNITS)
    if sig is not None:
        for k in PARAMS:
            columns[f"sigma_{k}"] = np.asarray(dec[f"sigma_{k}"], dtype=np.float64)
            if k in CATALOG_UNITS:
                units[f"sigma_{k}"] = CATALOG_UNITS[k]
    write_catalog(out, columns, units=units)
    return {"n": int(mu.shape[0]), "out": str(out), "columns": list(columns), "network": m.name,
            "has_sigma": sig is not None, "resampled": changed}  # fmt: skip


# ----------------------------------------------------------------------------- quickstart
def shipped_model(network: str) -> Path | None:
    """Pre-trained weights shipped with lensml for ``network``, if any.

    The hook: a model directory (``model.json``, ``weights.pt``, ``normalisation.json``)
    at ``lensml/models/sersic/<network>/`` inside the installed package, trained on the
    default ``sersic`` (KiDS) generator, e.g. copied from the benchmark's
    ``benchmarks/results/sersic_models/<network>/``.
    """
    import lensml

    path = Path(lensml.__file__).resolve().parent / "models" / "sersic" / network
    return path if (path / "model.json").is_file() else None


#: The quick CPU demo (≲ 3 min on 2 cores); ``full=True`` uses the larger settings.
QUICK = {"n_train": 800, "n_test": 100, "epochs": 3, "fit_max": 40, "batch_size": 32}
FULL = {"n_train": 6000, "n_test": 500, "epochs": 10, "fit_max": 200, "batch_size": 64}
NETWORKS = ("galnet-1-small", "galnet-2-small")


def quickstart_section(
    out_dir: str | Path, seed: int = 0, device: str = "cpu", full: bool = False
) -> tuple[list[Path], dict[str, Any]]:
    """The Sérsic section of ``lensml quickstart``: simulate, train briefly, evaluate.

    Simulates a small ``sersic`` (KiDS) training and test set, trains GaLNet-1-small and
    GaLNet-2-small for a few epochs (or uses the shipped weights of
    :func:`shipped_model` when present — then only the test set is simulated) and evaluates
    them against the ``sersic-fit`` baseline on the test stamps
    (:func:`lensml.pipelines.sersic_eval.evaluate_sersic`). The quick settings
    (:data:`QUICK`) show the workflow, not the accuracy: the benchmark
    (``benchmarks/sersic_accuracy.py``) is the real run.

    Parameters
    ----------
    out_dir : path
        Output directory: the evaluation's PNGs and ``sersic_eval.json`` (the working stores
        and runs in ``out_dir/work`` are removed at the end).
    seed : int
        Seeds the simulations, the weights and the evaluation.
    device : str
        Torch device for training and inference.
    full : bool
        Use :data:`FULL` (~10 min on 2 CPU cores) instead of :data:`QUICK`.

    Returns
    -------
    (list of Path, dict)
        The written files, and a summary: settings, which models were shipped or trained,
        the Table-2 numbers (R², outlier fraction, NMAD) per method and parameter, and the
        galaxies/s of each method.
    """
    from lensml.data.runner import run_simulate
    from lensml.pipelines.sersic import train_sersic
    from lensml.pipelines.sersic_eval import evaluate_sersic

    cfg = FULL if full else QUICK
    out = Path(out_dir)
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    shipped = {net: shipped_model(net) for net in NETWORKS}
    test = work / "test"
    run_simulate("sersic", cfg["n_test"], test, seed + 1, shard_size=256, progress=False)
    models, sources = [], {}
    if not all(shipped.values()):
        train = work / "train"
        run_simulate("sersic", cfg["n_train"], train, seed, shard_size=512, progress=False)
    for net in NETWORKS:
        if shipped[net] is not None:
            models.append(shipped[net])
            sources[net] = f"shipped: {shipped[net]}"
            continue
        res = train_sersic(train, net, work / f"run-{net}", cfg["epochs"], seed=seed,
                           batch_size=cfg["batch_size"], device=None if device == "cpu" else device,
                           progress=False)  # fmt: skip
        models.append(res["model_dir"])
        sources[net] = f"trained {res['epochs']} epochs on {res['n_train']} stamps"
    ev = evaluate_sersic(test, models, out, fit_max=cfg["fit_max"], seed=seed, device=device,
                         print_table=False)  # fmt: skip
    summary = {
        "config": dict(cfg),
        "models": sources,
        "table2": {
            name: {k: {s: row[s] for s in ("r2", "outlier_fraction", "nmad")}
                   for k, row in entry["table2"].items()}
            for name, entry in ev["methods"].items()
        },
        "galaxies_per_s": {name: e["galaxies_per_s"] for name, e in ev["methods"].items()},
        "json": ev["json"],
    }  # fmt: skip
    shutil.rmtree(work)
    return [Path(p) for p in ev["figures"]] + [Path(ev["json"])], summary
