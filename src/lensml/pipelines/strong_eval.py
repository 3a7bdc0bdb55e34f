"""``evaluate_strong``: AstroRIM vs the parametric ``lens-fit`` on held-out ``strong`` stores.

For every system of the held-out store(s) (one store per variant, e.g. v1 … v6):

* **sources** — the reconstruction x_T and the truth, divided by one per-example factor (the
  truth's maximum; prediction clipped to [0, 1],
  :func:`lensml.pipelines.strong_metrics.normalise_pair`), give MSE (eq. 52) and SSIM (eq. 53,
  scikit-image's numbers); reported as the paper's Table 2 (mean ± std, median, P10–P90, the
  fractions with SSIM >= 0.90 / >= 0.95) per variant and overall;
* **forward consistency** — reduced χ² = ⟨((y − F(x_T)) / σ)²⟩ over the pixels with the
  store's per-pixel noise σ, and residual maps in the figure;
* **lens parameters** — the encoder's nine parameters in arcsec (×L = H · pixel_scale / 2)
  against the labels: |Δθ_E| / θ_E, |Δq|, axis-angle errors, centre offsets, |Δγ|;
* **physical** — θ_E → σ_SIS and M(<θ_E) (Table 1's conversions,
  :mod:`lensml.physics.lens_conversions`) with the store's cosmology and each system's
  (z_l, z_s), predicted vs true (the truth from the true θ_E; the store's σ_v is checked to be
  that same conversion);
* **baseline** — the ``lens-fit`` (SIE + shear + Sérsic source + lens light) on the first
  ``fit_max`` systems (spread over the stores), with the same metrics on its source rendered on
  the generator's source grid, and its wall-clock time per system. AstroRIM's time per image is
  measured in the same run.

Outputs: ``strong_eval.json`` (atomic), ``reconstructions.png`` (observation, truth, AstroRIM,
fit, residual for a few systems), ``ssim_hist.png``, ``theta_e.png``, and rich tables.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lensml.pipelines.strong import LABELS, _infos, store_cosmology
from lensml.pipelines.strong_metrics import (
    lens_errors,
    mse,
    normalise_pair,
    ssim,
    summary_stats,
)

__all__ = [
    "evaluate_strong",
    "format_tables",
    "load_astrorim",
    "physical_quantities",
    "run_astrorim",
    "source_scores",
]

_READ = ("image", "source", "noise_sigma", "psf", "lens_light", "labels", "pixel_scale", "z_l",
         "z_s", "sigma_v", "n_images")  # fmt: skip


def load_astrorim(model: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """Load a saved AstroRIM model directory; ValueError if it is not one."""
    from lensml.train import load_model

    net, info = load_model(model, device)
    if not callable(getattr(net, "reconstruct", None)) or not hasattr(net, "operator"):
        raise ValueError(
            f"model {model}: network {info.network!r} is not an AstroRIM network "
            "(astrorim, astrorim-small)"
        )
    net.eval()
    return net, info


def physical_quantities(
    theta_e: Any, z_l: Any, z_s: Any, cosmology: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(σ_SIS [km/s], M(<θ_E) [M_sun]) of θ_E (arcsec) — Table 1's conversions; NaN where
    θ_E <= 0 or not finite."""
    from lensml.physics.lens_conversions import einstein_mass, sigma_sis

    te = np.asarray(theta_e, float).reshape(-1)
    zl = np.broadcast_to(np.asarray(z_l, float), te.shape)
    zs = np.broadcast_to(np.asarray(z_s, float), te.shape)
    ok = np.isfinite(te) & (te > 0)
    sig, mass = np.full(te.shape, np.nan), np.full(te.shape, np.nan)
    if ok.any():
        sig[ok] = sigma_sis(te[ok], zl[ok], zs[ok], cosmology)
        mass[ok] = einstein_mass(te[ok], zl[ok], zs[ok], cosmology)
    return sig, mass


def run_astrorim(
    net: Any,
    data: Mapping[str, np.ndarray],
    batch_size: int = 16,
    device: str = "cpu",
    symmetrise: bool = False,
) -> dict:
    """AstroRIM on arrays: ``data`` holds ``image`` ``(N, 1, H, H)``, ``pixel_scale`` ``(N,)``
    (arcsec) and, when the network uses them, ``psf`` / ``lens_light``. ``symmetrise``
    averages the reconstruction (lens parameters and source) over the image's eight mirrors
    and quarter turns (:meth:`lensml.nets.rim.AstroRIM.reconstruct`).

    Returns ``source``, ``model`` (F(x_T) in image units), ``labels`` (``(N, 9)``, the
    generator's units), ``input`` (the image the network saw) and ``seconds`` (network time).
    """
    import torch

    from lensml.nets.astrorim import params_to_labels

    use_psf = bool(net.config.get("use_batch_psf"))
    sub_light = bool(net.config.get("subtract_lens_light"))
    n = len(data["image"])
    out: dict[str, list[np.ndarray]] = {"source": [], "model": [], "labels": [], "input": []}
    seconds = 0.0
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        y = torch.from_numpy(np.ascontiguousarray(data["image"][sl])).float()
        if sub_light:
            y = y - torch.from_numpy(np.ascontiguousarray(data["lens_light"][sl])).float()
        psf = torch.from_numpy(np.ascontiguousarray(data["psf"][sl])).float() if use_psf else None
        t0 = time.perf_counter()
        with torch.no_grad():
            res = net(y.to(device), None if psf is None else psf.to(device), symmetrise=symmetrise)
        seconds += time.perf_counter() - t0
        half = torch.from_numpy(data["pixel_scale"][sl] * y.shape[-1] / 2.0).float()
        labels = params_to_labels({k: v.cpu() for k, v in res["params"].items()}, half)
        out["source"].append(res["source"].cpu().numpy())
        out["model"].append(res["model_image"].cpu().numpy())
        out["labels"].append(labels.numpy())
        out["input"].append(y.numpy())
    merged = {k: np.concatenate(v) for k, v in out.items()}
    merged["seconds"] = seconds
    return merged


def _run_fit(fit: Any, data: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, Any]:
    import torch

    src, labels, model = [], [], []
    chi2, converged = [], []
    seconds = 0.0
    for i in idx.tolist():
        sl = slice(i, i + 1)
        img = torch.from_numpy(np.ascontiguousarray(data["image"][sl])).float()
        sig = torch.from_numpy(np.ascontiguousarray(data["noise_sigma"][sl])).float()
        psf = torch.from_numpy(np.ascontiguousarray(data["psf"][sl])).float()
        ns = data["source"].shape[-1]
        t0 = time.perf_counter()
        res = fit(img, sig, psf, pixel_scale=float(data["pixel_scale"][i]), source_size=ns)
        seconds += time.perf_counter() - t0
        src.append(res.source.detach().float().numpy())
        lab = res.labels.detach().numpy()
        labels.append(np.concatenate([lab, np.full((1, 2), np.nan)], axis=1))
        model.append(res.model.detach().float().numpy())
        chi2.append(res.reduced_chi2.detach().numpy())
        converged.append(res.converged.detach().numpy())
    return {
        "source": np.concatenate(src),
        "labels": np.concatenate(labels),
        "model": np.concatenate(model),
        "reduced_chi2": np.concatenate(chi2),
        "converged": np.concatenate(converged),
        "seconds": seconds,
    }


def source_scores(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-example SSIM and MSE of reconstructed vs true sources ``(N, 1, Ns, Ns)`` on the
    paper's per-example [0, 1] normalisation (module docstring)."""
    import torch

    p, t = normalise_pair(
        torch.from_numpy(np.asarray(pred, np.float64)),
        torch.from_numpy(np.asarray(true, np.float64)),
    )
    return ssim(p, t).numpy(), mse(p, t).numpy()


def _method_block(
    ssim_v: np.ndarray,
    mse_v: np.ndarray,
    variant: np.ndarray,
    variants: Sequence[str],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ["all", *variants]:
        sel = np.ones(len(variant), bool) if name == "all" else variant == name
        if not sel.any():
            continue
        s = ssim_v[sel]
        out[name] = {
            "n": int(sel.sum()),
            "ssim": summary_stats(s),
            "mse": summary_stats(mse_v[sel]),
            "frac_ssim_ge_0.90": float(np.mean(s >= 0.90)),
            "frac_ssim_ge_0.95": float(np.mean(s >= 0.95)),
        }
    return out


def _lens_block(
    pred: np.ndarray, true: np.ndarray, data: Mapping[str, np.ndarray], cosmos: Sequence[Any]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    errs = lens_errors(pred, true, LABELS)
    out: dict[str, Any] = {k: summary_stats(v) for k, v in errs.items()}
    sig_p = np.full(len(pred), np.nan)
    m_p, sig_t, m_t = sig_p.copy(), sig_p.copy(), sig_p.copy()
    for k, cosmo in enumerate(cosmos):
        sel = data["store"] == k
        if not sel.any():
            continue
        zl, zs = data["z_l"][sel], data["z_s"][sel]
        sig_p[sel], m_p[sel] = physical_quantities(pred[sel, 0], zl, zs, cosmo)
        sig_t[sel], m_t[sel] = physical_quantities(true[sel, 0], zl, zs, cosmo)
    out["sigma_v_rel"] = summary_stats(np.abs(sig_p - sig_t) / sig_t)
    out["mass_rel"] = summary_stats(np.abs(m_p - m_t) / m_t)
    out["theta_e_median_rel_error"] = out["b_rel"]["median"]
    if "variant" in data:
        variant = np.asarray(data["variant"])
        out["theta_e_median_rel_error_per_variant"] = {
            str(v): float(np.median(errs["b_rel"][variant == v])) for v in dict.fromkeys(variant)
        }
    if "n_images" in data and np.isfinite(data["n_images"]).any():
        out["theta_e_median_rel_error_by_images"] = _by_multiplicity(
            errs["b_rel"], data["n_images"]
        )
    if "image" in data and "pixel_scale" in data:
        half = np.asarray(data["pixel_scale"], float) * np.shape(data["image"])[-1] / 2.0
        out["theta_e_median_rel_error_by_field_fraction"] = _by_field_fraction(
            errs["b_rel"], true[:, 0], half
        )
    return out, {"sigma_v_pred": sig_p, "sigma_v_true": sig_t, "mass_pred": m_p, "mass_true": m_t}


def _by_multiplicity(err: np.ndarray, n_images: np.ndarray) -> dict[str, dict[str, Any]]:
    """Median θ_E error of singly and multiply imaged systems (the generator's image count).

    A singly imaged source constrains θ_E only through the weak distortion of one image,
    which is degenerate with the source's own shape; multiple images pin it."""
    n_img = np.asarray(n_images, float).reshape(-1)  # NaN (not counted) falls in neither
    subsets = (("single", n_img < 2), ("multiple", n_img >= 2))
    return {name: _median_of(err, sel) for name, sel in subsets}


def _median_of(err: np.ndarray, sel: np.ndarray) -> dict[str, Any]:
    """``{"n", "median"}`` of ``err`` where ``sel`` (median None when nothing is selected)."""
    return {"n": int(sel.sum()), "median": float(np.median(err[sel])) if sel.any() else None}


#: Bin edges of θ_E / (half the image width) for the θ_E error breakdown.
FIELD_FRACTION_EDGES = (0.0, 0.25, 0.5, 0.75, 1.0, math.inf)


def _by_field_fraction(
    err: np.ndarray, theta_e: np.ndarray, half_width: np.ndarray
) -> list[dict[str, Any]]:
    """Median θ_E error in bins of the true θ_E over half the image width (both arcsec).

    Near 1 the Einstein ring reaches the edges of the stamp; beyond 1 it runs past them and
    only arcs toward the corners (out to √2) can still be on the image, so the image no
    longer shows where most of the critical curve is. At small fractions the ring spans few
    pixels and PSF widths. Bins: :data:`FIELD_FRACTION_EDGES`, each with ``lo``,
    ``hi``, ``n`` and ``median`` (None when empty)."""
    frac = np.asarray(theta_e, float).reshape(-1) / np.asarray(half_width, float).reshape(-1)
    out = []
    for lo, hi in itertools.pairwise(FIELD_FRACTION_EDGES):
        sel = (frac >= lo) & (frac < hi)
        out.append({"lo": lo, "hi": None if math.isinf(hi) else hi, **_median_of(err, sel)})
    return out


def _read_stores(infos: Sequence[Any], max_items: int | None) -> dict[str, np.ndarray]:
    from lensml.data.store import open_store

    parts: dict[str, list[np.ndarray]] = {}
    for k, info in enumerate(infos):
        store = open_store(info.root)
        n = info.n if max_items is None else min(info.n, int(max_items))
        data = store.read_all(keys=[key for key in _READ if key in store.keys])
        if "n_images" not in data:  # a store simulated with count_images=False
            data["n_images"] = np.full(n, np.nan)
        for key, arr in data.items():
            parts.setdefault(key, []).append(np.asarray(arr[:n]))
        parts.setdefault("store", []).append(np.full(n, k))
        parts.setdefault("variant", []).append(np.array([info.variant] * n))
    out = {k: np.concatenate(v) for k, v in parts.items()}
    for key in ("pixel_scale", "z_l", "z_s", "sigma_v"):
        if key in out:
            out[key] = out[key].astype(np.float64)
    bad = ~np.isfinite(out["image"].reshape(len(out["image"]), -1)).all(axis=1)
    if bad.any():
        raise ValueError(f"data_dir: {int(bad.sum())} image(s) with NaN or inf pixels")
    return out


def _fit_indices(data: Mapping[str, np.ndarray], n_stores: int, fit_max: int) -> np.ndarray:
    per = max(1, math.ceil(fit_max / max(n_stores, 1)))
    idx = []
    for k in range(n_stores):
        idx += np.nonzero(data["store"] == k)[0][:per].tolist()
    return np.array(sorted(idx[:fit_max]), dtype=int)


def evaluate_strong(
    data_dir: str | Path | Sequence[str | Path],
    model: str | Path,
    out_dir: str | Path,
    *,
    include_fit: bool = True,
    fit_max: int = 12,
    fit_config: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 16,
    max_items: int | None = None,
    plots: bool = True,
    print_table: bool = True,
    symmetrise: bool = True,
) -> dict[str, Any]:
    """Evaluate a trained AstroRIM (and the ``lens-fit`` baseline) on held-out stores.

    Parameters
    ----------
    data_dir : path or sequence of path
        Held-out ``strong`` store(s); each store's variant labels its rows.
    model : path
        Saved model directory of :func:`lensml.pipelines.strong.train_strong`.
    out_dir : path
        Output directory (created): ``strong_eval.json`` and the PNG figures.
    include_fit : bool
        Run the parametric baseline.
    fit_max : int
        Systems fitted by the baseline (the first ones of each store, spread evenly), >= 1.
    fit_config : mapping, optional
        :class:`lensml.baselines.lens_fit.LensFit.Config` overrides (default: its defaults).
    seed : int
        Recorded (the evaluation itself is deterministic: the stores hold the noise).
    device : str
        Torch device of the network (the fit runs on CPU).
    batch_size : int
        Images per forward pass.
    max_items : int, optional
        Evaluate the first ``max_items`` of each store.
    plots, print_table : bool
        Write the figures / print the rich tables.
    symmetrise : bool
        Average each reconstruction over the image's eight mirrors and quarter turns
        (:meth:`lensml.nets.rim.AstroRIM.reconstruct`), as ``lensml predict strong`` does by
        default; recorded as ``symmetrised``.

    Returns
    -------
    dict
        ``n``, ``variants``, ``source_metrics`` ({method: {"all"|variant: {"n", "ssim",
        "mse", "frac_ssim_ge_0.90", "frac_ssim_ge_0.95"}}}), ``lens`` ({method: errors}),
        ``forward`` (reduced χ² stats), ``timing`` (ms per image, s per fitted system, ratio),
        ``fit`` (baseline summary), ``tables`` (report form), ``figures``, ``json``.

    Raises
    ------
    ValueError
        Bad store(s), a model that is not AstroRIM or whose image size differs from the
        stores', NaN pixels, ``fit_max`` < 1 or ``batch_size`` < 1.
    """
    from lensml.data.store import write_json_atomic

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if include_fit and (isinstance(fit_max, bool) or int(fit_max) < 1):
        raise ValueError(f"fit_max must be an int >= 1, got {fit_max!r}")
    infos = _infos(data_dir)
    net, minfo = load_astrorim(model, device)
    if int(net.config["image_size"]) != infos[0].size:
        raise ValueError(
            f"model {model}: expects {net.config['image_size']}² images, the stores hold "
            f"{infos[0].size}²"
        )
    if int(net.config["source_size"]) != infos[0].source_size:
        raise ValueError(
            f"model {model}: reconstructs {net.config['source_size']}² sources, the stores hold "
            f"{infos[0].source_size}²"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = _read_stores(infos, max_items)
    n = len(data["image"])
    variants = list(dict.fromkeys(i.variant for i in infos))
    cosmos = [store_cosmology(i.cosmology) for i in infos]

    rim = run_astrorim(net, data, batch_size, device, symmetrise=symmetrise)
    s_rim, m_rim = source_scores(rim["source"], data["source"])
    resid = rim["input"] - rim["model"]
    chi2 = np.mean((resid / data["noise_sigma"]) ** 2, axis=(1, 2, 3))
    lens_rim, _ = _lens_block(rim["labels"], data["labels"], data, cosmos)
    result: dict[str, Any] = {
        "data_dir": [str(i.root) for i in infos],
        "model": str(model),
        "network": minfo.network,
        "n": n,
        "seed": int(seed),
        "symmetrised": bool(symmetrise),
        "variants": variants,
        "source_normalisation": "pred and truth / max(truth) per example, pred clipped to [0, 1]",
        "source_metrics": {"astrorim": _method_block(s_rim, m_rim, data["variant"], variants)},
        "lens": {"astrorim": lens_rim},
        "forward": {"astrorim": {"reduced_chi2": summary_stats(chi2)}},
        "timing": {
            "astrorim_ms_per_image": 1e3 * rim["seconds"] / n,
            "device": device,
            "steps": int(net.config["steps"]),
        },
        "store_sigma_v_matches_conversion": _sigma_check(data, cosmos),
        "figures": [],
    }
    fit_out = None
    if include_fit:
        from lensml.baselines.lens_fit import LensFit

        idx = _fit_indices(data, len(infos), int(fit_max))
        fit_out = _run_fit(LensFit(dict(fit_config or {})), data, idx)
        fit_out["idx"] = idx
        s_fit, m_fit = source_scores(fit_out["source"], data["source"][idx])
        sub = {k: v[idx] for k, v in data.items()}
        lens_fit, _ = _lens_block(fit_out["labels"], data["labels"][idx], sub, cosmos)
        s_rim_sub = s_rim[idx]
        result["source_metrics"]["lens-fit"] = _method_block(
            s_fit, m_fit, data["variant"][idx], variants
        )
        result["source_metrics"]["astrorim (fit subset)"] = _method_block(
            s_rim_sub, m_rim[idx], data["variant"][idx], variants
        )
        result["lens"]["lens-fit"] = lens_fit
        result["lens"]["astrorim (fit subset)"] = _lens_block(
            rim["labels"][idx], data["labels"][idx], sub, cosmos
        )[0]
        result["forward"]["lens-fit"] = {"reduced_chi2": summary_stats(fit_out["reduced_chi2"])}
        per_system = fit_out["seconds"] / len(idx)
        result["fit"] = {
            "n": len(idx),
            "indices": idx.tolist(),
            "config": dict(fit_config or {}),
            "seconds_per_system": per_system,
            "converged_fraction": float(np.mean(fit_out["converged"])),
        }
        result["timing"]["fit_s_per_system"] = per_system
        ms = result["timing"]["astrorim_ms_per_image"]
        result["timing"]["speedup_vs_fit"] = 1e3 * per_system / ms if ms > 0 else None
    result["tables"] = format_tables(result)
    if plots:
        result["figures"] = _figures(out_dir, data, rim, resid, s_rim, fit_out)
    json_path = out_dir / "strong_eval.json"
    result["json"] = str(json_path)
    write_json_atomic(json_path, _json_safe(result))
    if print_table:
        _print_tables(result["tables"])
    return result


def _sigma_check(data: Mapping[str, np.ndarray], cosmos: Sequence[Any]) -> float | None:
    """Largest relative difference between the store's σ_v and σ_SIS(θ_E) (Table 1)."""
    if "sigma_v" not in data:
        return None
    worst = 0.0
    for k, cosmo in enumerate(cosmos):
        sel = data["store"] == k
        if sel.any():
            s, _ = physical_quantities(data["labels"][sel, 0], data["z_l"][sel], data["z_s"][sel],
                                       cosmo)  # fmt: skip
            rel = np.abs(s - data["sigma_v"][sel]) / data["sigma_v"][sel]
            worst = max(worst, float(np.nanmax(rel)))
    return worst


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    return obj


def _g(v: Any, fmt: str = ".3g") -> str:
    return "–" if v is None or not math.isfinite(float(v)) else format(float(v), fmt)


_T2_COLUMNS = ("method", "subset", "N", "SSIM mean ± std", "SSIM median [P10, P90]",
               "MSE mean ± std", "MSE median [P10, P90]")  # fmt: skip
_LENS_COLUMNS = ("method", "N", "|Δθ_E|/θ_E", "P90", "|Δq|", "|Δφ| [deg]", "|Δcentre| [″]",
                 "|Δγ|", "|Δσ_v|/σ_v", "|ΔM|/M")  # fmt: skip


def format_tables(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Report tables (``{"caption", "columns", "rows"}``): Table 2 per method and subset, lens
    parameter errors, timing."""
    rows = []
    for method, blocks in result["source_metrics"].items():
        for subset, b in blocks.items():
            s, m = b["ssim"], b["mse"]
            rows.append([
                method, subset, b["n"],
                f"{_g(s['mean'])} ± {_g(s['std'])}",
                f"{_g(s['median'])} [{_g(s['p10'])}, {_g(s['p90'])}]",
                f"{_g(m['mean'])} ± {_g(m['std'])}",
                f"{_g(m['median'])} [{_g(m['p10'])}, {_g(m['p90'])}]",
            ])  # fmt: skip
    tables = [
        {
            "caption": "Source reconstruction on per-example [0, 1]-normalised images "
            "(paper Table 2: mean ± std, median [P10, P90])",
            "columns": list(_T2_COLUMNS),
            "rows": rows,
        }
    ]
    lrows = []
    for method, e in result["lens"].items():
        lrows.append([
            method, e["b_rel"]["n"], _g(e["b_rel"]["median"]), _g(e["b_rel"]["p90"]),
            _g(e["q_abs"]["median"]), _g(e["phi_deg"]["median"]), _g(e["center_abs"]["median"]),
            _g(e["gamma_abs"]["median"]), _g(e["sigma_v_rel"]["median"]),
            _g(e["mass_rel"]["median"]),
        ])  # fmt: skip
    tables.append(
        {
            "caption": "Lens parameters (medians; θ_E, σ_SIS and M(<θ_E) as relative errors, "
            "Table 1 conversions)",
            "columns": list(_LENS_COLUMNS),
            "rows": lrows,
        }
    )
    variants = list(result.get("variants") or [])
    vrows = [
        [method, *(_g(e["theta_e_median_rel_error_per_variant"].get(v)) for v in variants)]
        for method, e in result["lens"].items()
        if "theta_e_median_rel_error_per_variant" in e
    ]
    if vrows and len(variants) > 1:
        tables.append(
            {
                "caption": "Median |Δθ_E| / θ_E per variant",
                "columns": ["method", *variants],
                "rows": vrows,
            }
        )
    mrows = [
        [method, *(f"{_g(e['theta_e_median_rel_error_by_images'][k]['median'])} "
                   f"({e['theta_e_median_rel_error_by_images'][k]['n']})"
                   for k in ("single", "multiple"))]
        for method, e in result["lens"].items()
        if "theta_e_median_rel_error_by_images" in e
    ]  # fmt: skip
    if mrows:
        tables.append(
            {
                "caption": "Median |Δθ_E| / θ_E by image multiplicity (number of systems)",
                "columns": ["method", "single image", "multiple images"],
                "rows": mrows,
            }
        )
    frows = [
        [method, *(f"{_g(b['median'])} ({b['n']})"
                   for b in e["theta_e_median_rel_error_by_field_fraction"])]
        for method, e in result["lens"].items()
        if "theta_e_median_rel_error_by_field_fraction" in e
    ]  # fmt: skip
    if frows:
        tables.append(
            {
                "caption": "Median |Δθ_E| / θ_E by θ_E over half the image width (number of "
                "systems); from 1 on the Einstein ring runs past the image edges",
                "columns": ["method", *(
                    f"{lo:g}–{hi:g}" if not math.isinf(hi) else f"≥ {lo:g}"
                    for lo, hi in itertools.pairwise(FIELD_FRACTION_EDGES))],
                "rows": frows,
            }
        )  # fmt: skip
    t = result["timing"]
    trows = [["astrorim", f"{_g(t['astrorim_ms_per_image'])} ms / image", t["device"]]]
    if "fit_s_per_system" in t:
        trows.append(["lens-fit", f"{_g(t['fit_s_per_system'])} s / system", "cpu"])
        trows.append(["speed-up", f"{_g(t['speedup_vs_fit'])} ×", ""])
    tables.append({"caption": "Time", "columns": ["method", "time", "device"], "rows": trows})
    return tables


def _print_tables(tables: Sequence[Mapping[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for t in tables:
        table = Table(title=t["caption"])
        for c in t["columns"]:
            table.add_column(str(c))
        for r in t["rows"]:
            table.add_row(*[str(v) for v in r])
        console.print(table)


def _figures(
    out_dir: Path,
    data: Mapping[str, np.ndarray],
    rim: Mapping[str, Any],
    resid: np.ndarray,
    s_rim: np.ndarray,
    fit_out: Mapping[str, Any] | None,
) -> list[str]:
    from lensml.plots import _pyplot, save_figure

    plt = _pyplot()
    files = []
    rows = min(4, len(data["image"]))
    cols = ["observation", "true source", "AstroRIM", "residual (y − F x)"]
    fig, axes = plt.subplots(rows, len(cols), figsize=(3 * len(cols), 3 * rows), squeeze=False)
    for r in range(rows):
        panels = [data["image"][r, 0], data["source"][r, 0], rim["source"][r, 0], resid[r, 0]]
        for c, img in enumerate(panels):
            ax = axes[r, c]
            if c == 3:
                v = float(np.nanmax(np.abs(img))) or 1.0
                ax.imshow(img, origin="lower", cmap="RdBu_r", vmin=-v, vmax=v)
            else:
                ax.imshow(img, origin="lower", cmap="magma")
            ax.set_xticks([])
            ax.set_yticks([])
            title = cols[c] if r == 0 else ""
            if c == 2:
                title = f"{title} SSIM {s_rim[r]:.3f}".strip()
            ax.set_title(title, fontsize=9)
        axes[r, 0].set_ylabel(str(data["variant"][r]))
    fig.tight_layout()
    files.append(str(save_figure(fig, out_dir / "reconstructions.png")))
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for v in dict.fromkeys(data["variant"].tolist()):
        sel = data["variant"] == v
        ax[0].hist(s_rim[sel], bins=20, range=(0, 1), histtype="step", label=str(v))
    ax[0].set_xlabel("SSIM (AstroRIM)")
    ax[0].legend(fontsize=7)
    ax[1].scatter(data["labels"][:, 0], rim["labels"][:, 0], s=6, label="AstroRIM")
    if fit_out is not None:
        idx = fit_out["idx"]
        ax[1].scatter(data["labels"][idx, 0], fit_out["labels"][:, 0], s=12, marker="x",
                      label="lens-fit")  # fmt: skip
    lim = [0, float(np.nanmax(data["labels"][:, 0])) * 1.2]
    ax[1].plot(lim, lim, "k--", lw=0.8)
    ax[1].set_xlabel("true θ_E [″]")
    ax[1].set_ylabel("predicted θ_E [″]")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    files.append(str(save_figure(fig, out_dir / "ssim_theta_e.png")))
    return files
