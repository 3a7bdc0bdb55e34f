"""``evaluate_sersic``: GaLNet-1, GaLNet-2 and the ``sersic-fit`` baseline on the same stamps.

Paper: Li et al. 2022, §3.1–3.3 and §4.1 (Table 2, Figs. 3, 4, 10). Every method sees the same
held-out stamps of a ``sersic`` store; the χ² fit (expensive) runs on the first ``fit_max``
of them and the networks on all, so the CNN statistics are reported twice: on all stamps and
on the fit's subset (the like-for-like comparison).

Reported per method (JSON ``methods.<name>``):

* ``table2`` — R² (eq. 7), outlier fraction (eq. 8, ``|p − t| / (1 + t) > 0.15``), NMAD
  (eq. 9), e_s (eq. 10), bias, median bias and RMSE per parameter; PA differences wrapped to
  ±90° (:mod:`lensml.pipelines.sersic_metrics`; ``r2_unwrapped`` for the paper's PA R²);
* ``binned`` — e_s and Δe in five bins of the true value per parameter (Fig. 3);
* ``chi2_reff`` — the a-posteriori reduced χ̃² inside r_eff (eq. 11) of the PSF-convolved
  model of each method's parameters (rendered by :func:`lensml.physics.stamps.
  render_sersic_stamps` with the stamp's PSF, the ``sersic`` generator's own renderer):
  median, mean of the values below 10, fraction below 2, and the same in GaLNet-2's aperture
  (Fig. 10, right). The per-pixel variance is the store's ``variance`` (sky + read + Poisson
  of all sources), not the paper's σ_bkg² alone: with the galaxy's own Poisson noise inside
  r_eff, a perfect model then scores χ̃² ≈ 1 at any brightness;
* for the fit also ``converged_fraction``, ``masked_pixel_fraction`` (neighbours masked by
  segmentation, as 2DPHOT does) and ``table2_converged`` (converged fits only);
* ``galaxies_per_s`` — throughput measured in this run (CNN: the whole forward pass including
  the input stretch, after one warm-up batch, best of ``timing_repeats`` passes, with
  ``galaxies_per_s_median`` and ``seconds_all``; fit: wall time of the batched fit);
* ``sigma_calibration`` — for networks with a σ head: pulls ``(p − t) / σ`` of the held-out
  stamps per parameter (std ≈ 1 and 68.3 % within 1σ when calibrated); for the fit: the same
  with its covariance errors.

Outputs in ``out_dir``: ``sersic_eval.json`` (atomic), ``pred_vs_true_<method>.png`` (Fig. 3),
``residuals.png`` (Fig. 4), ``chi2_reff.png`` (Fig. 10), ``pulls_<method>.png``,
``predictions.npz`` (truth and every method's columns), and a rich table on stdout.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lensml.pipelines.sersic import SersicModel, load_sersic_model
from lensml.pipelines.sersic_data import (
    ENCODED_LABELS,
    aux_columns,
    inspect_sersic_store,
    read_sersic_arrays,
)
from lensml.pipelines.sersic_metrics import (
    PARAMS,
    binned_statistical_errors,
    pull_stats,
    table2,
    wrap_pa,
    wrapped_prediction,
)

__all__ = [
    "FIT_NAME",
    "PAPER_TABLE2",
    "chi2_summary",
    "evaluate_sersic",
    "format_table",
    "photometry_rescale",
    "render_params",
]

#: Registry name of the baseline evaluated next to the networks.
FIT_NAME = "sersic-fit"
#: Table 2 of the paper (simulated test set), for reference in the JSON and the benchmark.
PAPER_TABLE2 = {
    "galnet-1": {
        "r2": {"x": 0.9885, "y": 0.9882, "mag": 0.9898, "r_eff": 0.9206, "pa": 0.6716,
               "q": 0.9124, "n": 0.7280},
        "outlier_fraction": {"x": 0.001, "y": 0.001, "mag": 0.000, "r_eff": 0.028, "pa": 0.210,
                             "q": 0.008, "n": 0.260},
        "nmad": {"x": 0.0100, "y": 0.0099, "mag": 0.0028, "r_eff": 0.0420, "pa": 0.04840,
                 "q": 0.02678, "n": 0.1094},
    },
    "galnet-2": {
        "r2": {"x": 0.9924, "y": 0.9915, "mag": 0.9945, "r_eff": 0.9624, "pa": 0.7692,
               "q": 0.9781, "n": 0.8905},
        "outlier_fraction": {"x": 0.000, "y": 0.001, "mag": 0.000, "r_eff": 0.017, "pa": 0.165,
                             "q": 0.001, "n": 0.128},
        "nmad": {"x": 0.0090, "y": 0.0090, "mag": 0.0022, "r_eff": 0.01990, "pa": 0.0344,
                 "q": 0.0139, "n": 0.0655},
    },
}  # fmt: skip
#: Table-2 column order.
TABLE_ORDER = ("x", "y", "mag", "r_eff", "pa", "q", "n")


def photometry_rescale(
    zeropoint: Any, exptime: Any, model_zeropoint: float, model_exptime: float
) -> np.ndarray:
    """Factor taking counts of a (zeropoint, exptime) system to a model's training system.

    ``mag = zp − 2.5 log10(F / t)`` in both systems, so the same galaxy has
    ``F_model = F · (t_model / t) · 10^(0.4 (zp_model − zp))``.
    """
    zp = np.asarray(zeropoint, dtype=np.float64)
    t = np.asarray(exptime, dtype=np.float64)
    return (model_exptime / t) * 10.0 ** (0.4 * (model_zeropoint - zp))


def render_params(
    params: Mapping[str, np.ndarray],
    psf: Any,
    zeropoint: Any,
    exptime: Any,
    stamp_size: int,
    pixel_scale: float,
    chunk: int = 256,
) -> Any:
    """PSF-convolved, pixel-integrated model stamps ``(N, 1, S, S)`` float64 (counts).

    Parameters are clipped into the renderer's domain first (r_eff >= 0.01″, q in
    [0.05, 1], n in [0.1, 8], centre inside the stamp minus 2 pixels): a network may predict
    slightly outside the physical range. Non-finite predictions render as blank stamps.
    """
    import torch

    from lensml.physics.grids import PixelGrid
    from lensml.physics.stamps import render_sersic_stamps

    grid = PixelGrid.square(int(stamp_size), float(pixel_scale))
    cols = {k: np.asarray(params[k], dtype=np.float64).reshape(-1) for k in PARAMS}
    n_items = cols["x"].size
    finite = np.all([np.isfinite(cols[k]) for k in PARAMS], axis=0)
    half = ((stamp_size - 1) / 2 - 2) * pixel_scale
    zp = np.broadcast_to(np.asarray(zeropoint, dtype=np.float64), (n_items,))
    et = np.broadcast_to(np.asarray(exptime, dtype=np.float64), (n_items,))

    def col(name: str, lo: float, hi: float, fill: float) -> np.ndarray:
        return np.clip(np.where(finite, cols[name], fill), lo, hi)

    flux = np.where(finite, et * 10.0 ** (-0.4 * (np.where(finite, cols["mag"], 0) - zp)), 0.0)
    arr = {
        "r_eff": col("r_eff", 0.01, 1e3, 1.0), "q": col("q", 0.05, 1.0, 1.0),
        "n": col("n", 0.1, 8.0, 1.0), "phi": np.deg2rad(col("pa", -1e4, 1e4, 0.0)),
        "x0": col("x", -half, half, 0.0), "y0": col("y", -half, half, 0.0), "flux": flux,
    }  # fmt: skip
    psf = torch.as_tensor(psf, dtype=torch.float64)
    out = []
    for lo in range(0, n_items, chunk):
        sl = slice(lo, lo + chunk)
        t = {k: torch.as_tensor(v[sl], dtype=torch.float64) for k, v in arr.items()}
        p = psf[sl] if psf.shape[0] > 1 else psf
        out.append(render_sersic_stamps(grid, **t, psf=p, dtype=torch.float64))
    if not out:
        return torch.zeros((0, 1, stamp_size, stamp_size), dtype=torch.float64)
    return torch.cat(out)


def chi2_summary(values: np.ndarray) -> dict[str, Any]:
    """Median, mean below 10, fraction below 2 and count of finite χ̃² values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"n": 0, "median": math.nan, "mean_below_10": math.nan, "fraction_below_2": math.nan}
    low = v[v < 10]
    return {
        "n": int(v.size),
        "median": float(np.median(v)),
        "mean_below_10": float(np.mean(low)) if low.size else math.nan,
        "fraction_below_2": float(np.mean(v < 2)),
    }


def _labels_of(models: Sequence[SersicModel]) -> list[str]:
    labels: list[str] = []
    for m in models:
        label = m.name
        while label in labels or label == FIT_NAME:
            label += "'"
        labels.append(label)
    return labels


def _check_model(m: SersicModel, info: Any) -> None:
    where = f"model {m.path} ({m.name}) on {info.root}"
    if m.stamp_size != info.stamp_size:
        raise ValueError(
            f"{where}: the model takes {m.stamp_size}x{m.stamp_size} stamps, the store has "
            f"{info.stamp_size}x{info.stamp_size}"
        )
    if m.with_psf and m.psf_size != info.psf_size:
        raise ValueError(f"{where}: the model takes {m.psf_size}² PSFs, the store {info.psf_size}²")
    ps = float(m.meta.get("pixel_scale", info.pixel_scale))
    if abs(ps - info.pixel_scale) > 1e-4 * ps:
        raise ValueError(f"{where}: trained at {ps}″/px, the store is {info.pixel_scale}″/px")


def _time_cnn(
    m: SersicModel, image: Any, psf: Any, batch_size: int, device: str, repeats: int
) -> tuple:
    """Outputs of ``m`` on every stamp and the wall times of ``repeats`` full passes (s).

    One warm-up batch first; every pass predicts all stamps (same outputs each time)."""
    warm = min(int(image.shape[0]), batch_size)
    m.predict_encoded(image[:warm], psf[:warm] if m.with_psf else None, batch_size, device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mu, sig = m.predict_encoded(image, psf if m.with_psf else None, batch_size, device)
        times.append(time.perf_counter() - t0)
    return mu, sig, times


def evaluate_sersic(
    data_dir: str | Path,
    models: Sequence[str | Path],
    out_dir: str | Path,
    *,
    include_fit: bool = True,
    fit_max: int = 200,
    fit_config: Mapping[str, Any] | None = None,
    fit_mask: bool = True,
    max_items: int | None = None,
    n_examples: int = 4,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 256,
    timing_repeats: int = 3,
    plots: bool = True,
    print_table: bool = True,
) -> dict[str, Any]:
    """Evaluate saved GaLNet models and the ``sersic-fit`` baseline on held-out stamps.

    Parameters
    ----------
    data_dir : path
        Held-out ``sersic`` store (not used in training).
    models : sequence of path
        Model directories of :func:`lensml.pipelines.sersic.train_sersic` (may be empty).
    out_dir : path
        Output directory (created); see the module docstring for its files.
    include_fit : bool
        Run the χ² fit on the first ``fit_max`` stamps.
    fit_max : int
        Stamps fitted (>= 1); also the size of the χ̃² / residual subset.
    fit_config : mapping, optional
        :class:`lensml.baselines.sersic_fit.SersicFit.Config` overrides.
    fit_mask : bool
        Mask the neighbours for the fit by segmentation, as 2DPHOT does
        (:func:`lensml.pipelines.sersic_masks.segmentation_masks`); the networks always see
        the whole stamp.
    max_items : int, optional
        Evaluate the networks on the first ``max_items`` stamps only.
    n_examples : int
        Stamps in the residual figure (0: none).
    seed : int
        Seeds the choice of the residual examples.
    device : str
        Torch device of the networks (the fit runs in float64 on the CPU).
    batch_size : int
        Stamps per forward pass.
    timing_repeats : int
        Full passes of each network over the stamps (>= 1); ``galaxies_per_s`` is the best
        (shared machines only ever slow a pass down), ``galaxies_per_s_median`` the median.
    plots, print_table : bool
        Write the PNGs; print the rich table.

    Returns
    -------
    dict
        The content of ``sersic_eval.json`` (see the module docstring) plus ``"json"``.

    Raises
    ------
    ValueError
        Bad store, a model that does not fit the store (stamp size, PSF size, pixel scale) or
        is not a Sérsic model, bad numbers.
    """
    import torch

    from lensml.data.store import write_json_atomic

    for name, value in (("fit_max", fit_max), ("timing_repeats", timing_repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    info = inspect_sersic_store(data_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = [load_sersic_model(p, device) for p in models]
    for m in loaded:
        _check_model(m, info)
    names = _labels_of(loaded)
    if not loaded and not include_fit:
        raise ValueError("nothing to evaluate: give at least one model or include_fit=True")
    n = info.n if max_items is None else min(info.n, int(max_items))
    keys = ["image", "psf", "labels", "aux"] + (["variance"] if "variance" in info.keys else [])
    arr = read_sersic_arrays(info, keys, n)
    image = torch.from_numpy(np.ascontiguousarray(arr["image"])).float()
    psf = torch.from_numpy(np.ascontiguousarray(arr["psf"])).float()
    if not bool(torch.isfinite(image).all()):
        raise ValueError(f"data_dir {info.root}: stamps with NaN or inf pixels")
    truth = {k: arr["labels"][:, j].astype(np.float64) for j, k in enumerate(PARAMS)}
    aux = aux_columns(arr["aux"])
    zp, et, sky = aux["zeropoint"], aux["exptime"], aux["sky_sigma"]
    variance = (
        torch.from_numpy(np.ascontiguousarray(arr["variance"])).double()
        if "variance" in arr
        else torch.from_numpy(sky**2).reshape(-1, 1, 1, 1).expand(image.shape).double()
    )
    n_sub = min(n, fit_max)
    result: dict[str, Any] = {
        "data_dir": str(info.root), "n": n, "n_subset": n_sub, "stamp_size": info.stamp_size,
        "pixel_scale": info.pixel_scale, "survey": info.survey, "seed": int(seed),
        "device": device, "torch_threads": torch.get_num_threads(),
        "models": {lab: str(m.path) for lab, m in zip(names, loaded, strict=True)},
        "pa_convention": "PA differences wrapped to [-90, 90) degrees before every statistic",
        "chi2_variance": "store variance map" if "variance" in arr else "sky_sigma^2",
        "methods": {}, "paper_table2": PAPER_TABLE2, "figures": [],
    }  # fmt: skip
    preds: dict[str, dict[str, np.ndarray]] = {}
    sub_preds: dict[str, dict[str, np.ndarray]] = {}
    for lab, m in zip(names, loaded, strict=True):
        scale = photometry_rescale(zp, et, float(m.meta["zeropoint"]), float(m.meta["exptime"]))
        img = image * torch.from_numpy(scale).float().reshape(-1, 1, 1, 1)
        mu, sig, times = _time_cnn(m, img, psf, batch_size, device, timing_repeats)
        seconds = min(times)
        from lensml.nets.sersic_labels import decode_sersic_outputs

        dec = decode_sersic_outputs(mu if sig is None else np.concatenate([mu, sig], axis=1))
        cols = {k: np.asarray(dec[k], dtype=np.float64) for k in PARAMS}
        preds[lab] = cols
        entry: dict[str, Any] = {
            "kind": "cnn", "network": m.name, "path": str(m.path), "with_psf": m.with_psf,
            "n": n, "seconds": seconds, "seconds_all": times,
            "galaxies_per_s": n / seconds if seconds > 0 else None,
            "galaxies_per_s_median": n / float(np.median(times)) if seconds > 0 else None,
            "table2": table2(cols, truth),
            "table2_subset": table2({k: v[:n_sub] for k, v in cols.items()},
                                    {k: v[:n_sub] for k, v in truth.items()}),
        }  # fmt: skip
        if sig is not None:
            enc_truth = _encoded_truth(arr["labels"])
            entry["sigma_calibration"] = {
                "params": {k: pull_stats(cols[k], truth[k], dec[f"sigma_{k}"], k) for k in PARAMS},
                "encoded": {
                    k: pull_stats(mu[:, j], enc_truth[:, j], sig[:, j], k)
                    for j, k in enumerate(ENCODED_LABELS)
                },
                "model_factors": (m.meta.get("sigma_calibration") or {}).get("factors"),
            }
            if plots:
                pulls = {k: _pulls(cols[k], truth[k], dec[f"sigma_{k}"], k) for k in PARAMS}
                path = out_dir / f"pulls_{_safe(lab)}.png"
                from lensml.pipelines.sersic_figures import plot_pulls

                plot_pulls(pulls, path, f"{lab}: pulls on {n} held-out stamps")
                result["figures"].append(str(path))
        else:
            entry["sigma_calibration"] = None
        result["methods"][lab] = entry
        sub_preds[lab] = {k: v[:n_sub] for k, v in cols.items()}
    models_sub: dict[str, Any] = {}
    for lab in names:
        models_sub[lab] = render_params(
            sub_preds[lab], psf[:n_sub], zp[:n_sub], et[:n_sub], info.stamp_size, info.pixel_scale
        )
    if include_fit:
        from lensml.baselines.sersic_fit import SersicFit

        fit = SersicFit({**dict(fit_config or {}), "return_model": True})
        t0 = time.perf_counter()
        mask = None
        if fit_mask:
            from lensml.pipelines.sersic_masks import segmentation_masks

            mask = torch.from_numpy(segmentation_masks(image[:n_sub].numpy(), sky[:n_sub]))
        res = fit(image[:n_sub], psf[:n_sub], variance[:n_sub].float(),
                  pixel_scale=info.pixel_scale, zeropoint=torch.from_numpy(zp[:n_sub]),
                  exptime=torch.from_numpy(et[:n_sub]), mask=mask)  # fmt: skip
        seconds = time.perf_counter() - t0
        conv = res.converged.detach().cpu().numpy()
        p = res.params.detach().cpu().numpy()
        cols = {k: p[:, j] for j, k in enumerate(PARAMS)}
        err = res.errors.detach().cpu().numpy()
        sub_truth = {k: v[:n_sub] for k, v in truth.items()}
        sub_preds[FIT_NAME] = cols
        models_sub[FIT_NAME] = res.model.double()
        result["methods"][FIT_NAME] = {
            "kind": "fit", "n": n_sub, "seconds": seconds,
            "galaxies_per_s": n_sub / seconds if seconds > 0 else None,
            "converged_fraction": float(conv.mean()),
            "masked_pixel_fraction": float(mask.float().mean()) if mask is not None else 0.0,
            "table2": table2(cols, sub_truth), "table2_subset": table2(cols, sub_truth),
            "table2_converged": table2({k: v[conv] for k, v in cols.items()},
                                       {k: v[conv] for k, v in sub_truth.items()}),
            "sigma_calibration": {
                "params": {k: pull_stats(cols[k], sub_truth[k], err[:, j], k)
                           for j, k in enumerate(PARAMS)},
            },
        }  # fmt: skip
    # --- Fig. 3 bins, χ̃² (eq. 11), residual examples --------------------------------------
    gn2 = next((lab for lab, m in zip(names, loaded, strict=True) if m.with_psf), None)
    img_sub = image[:n_sub].double()
    var_sub = variance[:n_sub]
    chi_own: dict[str, np.ndarray] = {}
    chi_common: dict[str, np.ndarray] = {}
    from lensml.baselines.sersic_fit import reduced_chi2_within_reff

    for lab, model_img in models_sub.items():
        entry = result["methods"][lab]
        full = preds.get(lab, sub_preds[lab])
        t_full = truth if lab in preds else {k: v[:n_sub] for k, v in truth.items()}
        entry["binned"] = {k: binned_statistical_errors(full[k], t_full[k], k) for k in PARAMS}
        own = _params_tensor(sub_preds[lab])
        chi_own[lab] = reduced_chi2_within_reff(img_sub, model_img, var_sub, own,
                                                info.pixel_scale).numpy()  # fmt: skip
        entry["chi2_reff"] = chi2_summary(chi_own[lab])
        if gn2 is not None:
            ap = _params_tensor(sub_preds[gn2])
            chi_common[lab] = reduced_chi2_within_reff(img_sub, model_img, var_sub, ap,
                                                       info.pixel_scale).numpy()  # fmt: skip
            entry["chi2_reff_gn2_aperture"] = chi2_summary(chi_common[lab])
    fit_speed = result["methods"].get(FIT_NAME, {}).get("galaxies_per_s")
    result["speed_ratios"] = {
        f"{lab}/{FIT_NAME}": result["methods"][lab]["galaxies_per_s"] / fit_speed
        for lab in names
        if fit_speed and result["methods"][lab]["galaxies_per_s"]
    }
    if plots:
        result["figures"] += _figures(out_dir, preds, sub_preds, truth, n_sub, result,
                                      chi_own, chi_common, gn2, img_sub, models_sub, sky,
                                      n_examples, seed)  # fmt: skip
    _write_predictions(out_dir / "predictions.npz", truth, preds, sub_preds, chi_own)
    json_path = out_dir / "sersic_eval.json"
    result["json"] = str(json_path)
    write_json_atomic(json_path, _json_safe(result))
    if print_table:
        from rich.console import Console

        Console(width=150).print(format_table(result))
    return result


def _encoded_truth(labels: np.ndarray) -> np.ndarray:
    from lensml.nets.sersic_labels import encode_sersic_labels

    return np.asarray(encode_sersic_labels(np.asarray(labels, dtype=np.float64)))


def _pulls(p: np.ndarray, t: np.ndarray, s: Any, name: str) -> np.ndarray:
    d = np.asarray(p, dtype=float) - np.asarray(t, dtype=float)
    if name == "pa":
        d = wrap_pa(d)
    s = np.asarray(s, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s > 0, d / s, np.nan)


def _params_tensor(cols: Mapping[str, np.ndarray]) -> Any:
    import torch

    p = np.stack([np.asarray(cols[k], dtype=np.float64) for k in PARAMS], axis=1)
    p[:, 3] = np.clip(np.nan_to_num(p[:, 3], nan=0.0), 0.0, None)
    p[:, 4] = np.clip(np.nan_to_num(p[:, 4], nan=1.0), 0.05, 1.0)
    return torch.from_numpy(p)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _figures(out_dir, preds, sub_preds, truth, n_sub, result, chi_own, chi_common, gn2,
             img_sub, models_sub, sky, n_examples, seed) -> list[str]:  # fmt: skip
    import torch

    from lensml.pipelines.sersic_figures import plot_chi2, plot_pred_vs_true, plot_residuals

    files = []
    for lab, entry in result["methods"].items():
        cols = preds.get(lab, sub_preds[lab])
        t = truth if lab in preds else {k: v[:n_sub] for k, v in truth.items()}
        wrapped = {k: wrapped_prediction(cols[k], t[k], k) for k in PARAMS}
        path = out_dir / f"pred_vs_true_{_safe(lab)}.png"
        plot_pred_vs_true(wrapped, t, entry["binned"], path, f"{lab} ({len(t['x'])} stamps)")
        files.append(str(path))
    if chi_own:
        path = out_dir / "chi2_reff.png"
        plot_chi2(chi_own, path, chi_common or None, gn2 or "")
        files.append(str(path))
    k = min(int(n_examples), n_sub)
    if k > 0 and models_sub:
        g = torch.Generator().manual_seed(int(seed))
        idx = torch.randperm(n_sub, generator=g)[:k].sort().values
        imgs = img_sub[idx, 0].numpy()
        res = {lab: (img_sub[idx] - m[idx]).numpy()[:, 0] for lab, m in models_sub.items()}
        chi = {lab: chi_own[lab][idx.numpy()] for lab in models_sub}
        path = out_dir / "residuals.png"
        plot_residuals(imgs, res, chi, sky[:n_sub][idx.numpy()], path,
                       "image − PSF-convolved model of each method")  # fmt: skip
        files.append(str(path))
    return files


def _write_predictions(path: Path, truth, preds, sub_preds, chi_own) -> None:
    import io

    arrays: dict[str, Any] = {"params": np.array(PARAMS)}
    arrays["truth"] = np.stack([truth[k] for k in PARAMS], axis=1)
    for lab, cols in {**sub_preds, **preds}.items():
        arrays[f"{lab}/pred"] = np.stack([cols[k] for k in PARAMS], axis=1)
    for lab, chi in chi_own.items():
        arrays[f"{lab}/chi2_reff"] = chi
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def format_table(result: Mapping[str, Any], subset: bool = False) -> Any:
    """A rich table in the form of the paper's Table 2 (R², outliers, NMAD), plus the median
    χ̃², the σ-pull std of each parameter and the speed of each method."""
    from rich.table import Table

    key = "table2_subset" if subset else "table2"
    table = Table(title=f"Sérsic parameters on {result['n']} held-out stamps "
                  f"(fit: first {result['n_subset']}; PA wrapped)")  # fmt: skip
    table.add_column("statistic")
    table.add_column("method")
    for k in TABLE_ORDER:
        table.add_column(k, justify="right")
    table.add_column("galaxies/s", justify="right")

    def fmt(v: Any, digits: int = 4) -> str:
        return "—" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"

    for stat, title in (("r2", "R²"), ("outlier_fraction", "outliers"), ("nmad", "NMAD")):
        for i, (name, entry) in enumerate(result["methods"].items()):
            row = entry[key]
            speed = entry.get("galaxies_per_s") if stat == "r2" else None
            table.add_row(title if i == 0 else "", name,
                          *[fmt(row.get(k, {}).get(stat)) for k in TABLE_ORDER],
                          fmt(speed, 1) if speed else "")  # fmt: skip
        table.add_section()
    for i, (name, entry) in enumerate(result["methods"].items()):
        cal = (entry.get("sigma_calibration") or {}).get("params")
        if cal:
            table.add_row("pull std" if i == 0 else "", name,
                          *[fmt(cal[k]["std"], 2) for k in TABLE_ORDER], "")  # fmt: skip
    table.add_section()
    for i, (name, entry) in enumerate(result["methods"].items()):
        chi = entry.get("chi2_reff", {}).get("median")
        table.add_row("median χ̃²" if i == 0 else "", name, fmt(chi, 2), *[""] * 7)
    return table
