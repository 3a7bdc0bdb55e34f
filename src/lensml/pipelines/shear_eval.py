"""Evaluate shear estimators on one held-out store: the paper's Table 4 and Figs. 10–12.

Paper: the CNN shear estimator paper (``shared/papers/cnn-shear-estimator-clash.txt``), §5:
RMS error σ_i of calibrated estimates (eq. 15), the affine calibration ĝ = (g̃ − c)/(1 + m)
(eqs. 16–17), RMS vs magnitude (Fig. 10), vs centroid misalignment (Fig. 11) and RMS and bias in
16 true-shear bins (Fig. 12).

:func:`evaluate_shear` runs every method on **exactly the same stamps** (and, for the moment
methods, the same PSF images and noise variance) and calibrates each **the same way**: the store
is split at random (seeded) into a calibration part (``calib_fraction``) and a test part; m_i, c_i
(with least-squares errors) are fitted per component on the calibration part and applied to the
test part, on which every statistic is measured. The paper instead fits m, c on the test set
itself (its §5 eq. 17); the split keeps the reported σ_i honest. Failures (moment methods: HSM
errors, failed PSF corrections, |g| >= 1) are counted and left out of the fits and statistics;
``common`` repeats the Table-4 scores of every method on the stamps that all methods measured.

Methods: ``"cnn"`` (every model given; its saved refit and symmetrisation are applied, its saved
calibration is replaced by the common calibration above, and the saved one is checked on the test
part), ``"ksb"`` and ``"regauss"`` (:mod:`lensml.baselines.moments`). For each CNN the
symmetrised (eq. 14) and plain estimates are both scored to tell whether symmetrisation lowers
the RMS. Speeds (stamps/s) of the CNN without and with symmetrisation, KSB and REGAUSS are timed
in the same run on the same stamps.

Misalignment (Fig. 11): the distance of the post-shear galaxy centroid from the stamp centre in
units of the galaxy's (intrinsic, circularised) half-light radius, per stamp, from the ``shear``
generator's ``aux`` columns; the paper's x axis is instead the total extent of a uniform offset
range imposed on a whole test set (``benchmarks/shear_accuracy.py`` does that experiment).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["METHODS", "evaluate_shear", "format_table", "score_method"]

#: Estimators :func:`evaluate_shear` knows.
METHODS = ("cnn", "ksb", "regauss")


def score_method(
    g_est: np.ndarray,
    ok: np.ndarray,
    g_true: np.ndarray,
    calib: np.ndarray,
    test: np.ndarray,
    *,
    magnitude: np.ndarray | None = None,
    misalignment: np.ndarray | None = None,
    shear_edges: np.ndarray | None = None,
    magnitude_edges: np.ndarray | None = None,
    misalignment_edges: np.ndarray | None = None,
) -> dict[str, Any]:
    """Calibrate on ``calib`` rows, score on ``test`` rows (boolean masks over all N stamps).

    Returns
    -------
    dict
        ``calibration`` (m, c, errors, fitted on the calibration rows), ``metrics``
        (:func:`lensml.pipelines.shear_calibration.shear_metrics` of the calibrated test rows),
        ``residual_after_calibration`` (m, c and errors refitted on the calibrated test rows:
        consistent with 0 for a calibration that transfers), ``table4`` (σ_i, m_i, c_i with
        errors, failures) and ``failures`` (counts over all N stamps).
    """
    from lensml.pipelines.shear_calibration import fit_affine, shear_metrics

    cal = fit_affine(g_est[calib], g_true[calib], ok=ok[calib])
    metrics = shear_metrics(
        g_est[test], g_true[test], ok=ok[test], calibration=cal,
        magnitude=None if magnitude is None else magnitude[test],
        misalignment=None if misalignment is None else misalignment[test],
        shear_edges=shear_edges, magnitude_edges=magnitude_edges,
        misalignment_edges=misalignment_edges,
    )  # fmt: skip
    use = test & ok
    resid = fit_affine(cal.apply(g_est[use]), g_true[use])
    n_failed = int((~ok).sum())
    table4 = {
        "sigma": metrics["sigma"], "sigma_err": metrics["sigma_err"],
        "sigma_mean": metrics["sigma_mean"], "m": cal.m.tolist(), "m_err": cal.m_err.tolist(),
        "c": cal.c.tolist(), "c_err": cal.c_err.tolist(), "n_test": int(use.sum()),
        "n_failed": n_failed, "failure_fraction": n_failed / max(1, ok.size),
    }  # fmt: skip
    return {
        "calibration": cal.to_dict(),
        "metrics": metrics,
        "residual_after_calibration": {
            "m": resid.m.tolist(),
            "m_err": resid.m_err.tolist(),
            "c": resid.c.tolist(),
            "c_err": resid.c_err.tolist(),
            "n": resid.n,
        },
        "table4": table4,
        "failures": {"n_failed": n_failed, "fraction": n_failed / max(1, ok.size)},
    }


def _misalignment(aux: np.ndarray, names: Sequence[str], pixel_scale: float) -> np.ndarray:
    col = {k: i for i, k in enumerate(names)}
    off = np.hypot(aux[:, col["dx_pix"]], aux[:, col["dy_pix"]]) * pixel_scale
    return off / np.maximum(aux[:, col["hlr_arcsec"]], 1e-6)


def _quantile_edges(values: np.ndarray, n_bins: int) -> np.ndarray | None:
    e = np.unique(np.quantile(values, np.linspace(0.0, 1.0, int(n_bins) + 1)))
    return e if e.size >= 2 else None


def _moment_psf(psf: np.ndarray) -> np.ndarray:
    """One PSF image when every stamp has the same (faster HSM), else all of them."""
    return psf[:1] if np.array_equal(psf, np.broadcast_to(psf[:1], psf.shape)) else psf


def evaluate_shear(
    data_dir: str | Path,
    model: str | Path | Sequence[str | Path] | None,
    out_dir: str | Path,
    *,
    methods: Sequence[str] = METHODS,
    calib_fraction: float = 0.5,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 512,
    max_items: int | None = None,
    compare_symmetrisation: bool = True,
    moments_workers: int = 1,
    moments_config: Mapping[str, Any] | None = None,
    n_shear_bins: int = 16,
    n_bins: int = 5,
    plots: bool = True,
    print_table: bool = True,
) -> dict[str, Any]:
    """CNN(s), KSB and REGAUSS on the same held-out stamps: Table 4, Figs. 10–12, speeds.

    Parameters
    ----------
    data_dir : path
        Held-out shear store (``image``, ``labels``; ``psf`` for the moment methods; ``aux`` of
        the ``shear`` generator for the magnitude and misalignment bins).
    model : path or sequence of path or None
        Saved shear model directories (:func:`lensml.pipelines.shear.train_shear`); needed when
        ``"cnn"`` is in ``methods``.
    out_dir : path
        Output directory: ``shear_eval.json``, ``predictions.npz`` (truth, split, per-method
        uncalibrated estimates and ok flags) and the PNG figures, each written atomically.
    methods : sequence of {"cnn", "ksb", "regauss"}
        Estimators to run.
    calib_fraction : float
        Fraction of the stamps (seeded random split) used to fit m, c; the rest is the test
        part, in (0, 0.9].
    seed : int
        Seed of the split.
    device, batch_size
        Torch device and stamps per CNN forward pass.
    max_items : int, optional
        Use the first ``max_items`` stamps only.
    compare_symmetrisation : bool
        Score each CNN with and without eq. 14.
    moments_workers : int
        Processes for HSM (>= 1).
    moments_config : mapping, optional
        Extra :func:`lensml.baselines.moments.measure_moments_shear` options
        (``regauss_conversion``, ``guess_sig_gal``, ...).
    n_shear_bins, n_bins : int
        True-shear bins (paper: 16) and magnitude / misalignment bins (paper: 5, equal-count
        here, the same edges for every method).
    plots, print_table : bool
        Write the PNGs; print the rich table.

    Returns
    -------
    dict
        ``methods`` {label: score_method(...) + ``stamps_per_s``}, ``symmetrisation``,
        ``saved_calibration``, ``speed``, ``figures``, ``json`` and the run's settings; also in
        ``out_dir/shear_eval.json``.

    Raises
    ------
    ValueError
        Unknown methods, ``"cnn"`` without a model, a bad store, stamps of a size a model does
        not take, a store without ``psf`` for the moment methods, a bad ``calib_fraction``.
    """
    from lensml.data.store import write_json_atomic
    from lensml.pipelines.shear import inspect_shear_store, load_shear_estimator, read_shear_arrays

    methods = [str(m).lower() for m in methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be among {list(METHODS)}, got {list(methods)}")
    if not 0 < calib_fraction <= 0.9:
        raise ValueError(f"calib_fraction must be in (0, 0.9], got {calib_fraction}")
    models = [] if model is None else [model] if isinstance(model, str | Path) else list(model)
    if "cnn" in methods and not models:
        raise ValueError("method 'cnn' needs a model: pass the saved model directory (--model)")
    info = inspect_shear_store(data_dir)
    moment_methods = [m for m in methods if m != "cnn"]
    if moment_methods and "psf" not in info.keys:
        raise ValueError(
            f"data_dir {info.root}: the moment baseline needs a PSF image per stamp ('psf' "
            f"array), the store has {list(info.keys)}"
        )
    estimators = []
    if "cnn" in methods:
        for path in models:
            est = load_shear_estimator(path, device=device, batch_size=batch_size)
            if est.input_size != info.size:
                raise ValueError(
                    f"model {path}: takes {est.input_size}x{est.input_size} stamps but "
                    f"data_dir {info.root} holds {info.size}x{info.size} stamps"
                )
            label = f"cnn:{est.info.network}"
            while any(label == e[0] for e in estimators):
                label += "'"
            estimators.append((label, est, str(path)))
    keys = ["image", "labels"] + [k for k in ("psf", "aux") if k in info.keys]
    arrays = read_shear_arrays(info, keys, max_items)
    images = arrays["image"]
    g_true = arrays["labels"].double().numpy()
    n = g_true.shape[0]
    if n < 8:
        raise ValueError(f"data_dir {info.root}: {n} stamps are too few to calibrate and test")
    rng = np.random.default_rng(int(seed))
    calib = np.zeros(n, dtype=bool)
    calib[rng.permutation(n)[: max(3, round(calib_fraction * n))]] = True
    test = ~calib
    aux = arrays["aux"].double().numpy() if "aux" in arrays and info.aux_names else None
    mag = mis = None
    if aux is not None:
        mag = aux[:, info.aux_names.index("mag")]
        if info.pixel_scale is not None:
            mis = _misalignment(aux, info.aux_names, info.pixel_scale)
    shear_max = float(info.config.get("shear_max") or np.abs(g_true).max())
    edges = {
        "shear_edges": np.linspace(-shear_max, shear_max, int(n_shear_bins) + 1),
        "magnitude_edges": None if mag is None else _quantile_edges(mag[test], n_bins),
        "misalignment_edges": None if mis is None else _quantile_edges(mis[test], n_bins),
    }
    if edges["magnitude_edges"] is None:
        mag = None
    if edges["misalignment_edges"] is None:
        mis = None

    def score(g: np.ndarray, ok: np.ndarray) -> dict[str, Any]:
        return score_method(g, ok, g_true, calib, test, magnitude=mag, misalignment=mis, **edges)

    result: dict[str, Any] = {
        "data_dir": str(info.root), "n": n, "n_calib": int(calib.sum()),
        "n_test": int(test.sum()), "calib_fraction": float(calib_fraction), "seed": int(seed),
        "stamp_size": info.size, "pixel_scale": info.pixel_scale,
        "models": {e[0]: e[2] for e in estimators}, "methods": {}, "symmetrisation": {},
        "saved_calibration": {}, "speed": {}, "figures": [],
        "misalignment_unit": "offset from stamp centre / intrinsic half-light radius",
    }  # fmt: skip
    preds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    all_ok = np.ones(n, dtype=bool)
    for label, est, _ in estimators:
        runs = {}
        est.predict(images[:2], symmetrise=True, calibrate=False)  # warm-up (not timed)
        for sym in (False, True) if compare_symmetrisation else (est.symmetrise,):
            t0 = time.perf_counter()
            runs[sym] = est.predict(images, symmetrise=sym, calibrate=False)
            seconds = time.perf_counter() - t0
            result["speed"][label + ("+sym" if sym else "")] = n / seconds
        g = runs[est.symmetrise]
        preds[label] = (g, all_ok)
        result["methods"][label] = score(g, all_ok)
        result["methods"][label]["symmetrised"] = est.symmetrise
        result["methods"][label]["stamps_per_s"] = result["speed"][
            label + ("+sym" if est.symmetrise else "")
        ]
        if compare_symmetrisation:
            s_sym, s_plain = score(runs[True], all_ok), score(runs[False], all_ok)
            a, b = s_sym["table4"]["sigma_mean"], s_plain["table4"]["sigma_mean"]
            result["symmetrisation"][label] = {
                "sigma_symmetrised": s_sym["table4"]["sigma"],
                "sigma_plain": s_plain["table4"]["sigma"],
                "sigma_mean_symmetrised": a, "sigma_mean_plain": b,
                "relative_change": a / b - 1.0, "lowers_rms": bool(a < b),
            }  # fmt: skip
        if est.calibration is not None:
            from lensml.pipelines.shear_calibration import fit_affine

            saved = fit_affine(est.calibration.apply(g[test]), g_true[test])
            result["saved_calibration"][label] = {
                "saved": est.calibration.to_dict(),
                "residual_on_test": {"m": saved.m.tolist(), "m_err": saved.m_err.tolist(),
                                     "c": saved.c.tolist(), "c_err": saved.c_err.tolist()},
            }  # fmt: skip
    if moment_methods:
        from lensml.baselines.moments import measure_moments_shear

        psf = _moment_psf(arrays["psf"].double().numpy())
        sky_var = 0.0
        if aux is not None:
            sky_var = aux[:, info.aux_names.index("noise_sigma")] ** 2
        img_np = images.double().numpy()
        for m in moment_methods:
            measure_moments_shear(img_np[:2], psf[:2], m, nan_policy="flag")  # warm-up
            t0 = time.perf_counter()
            res = measure_moments_shear(
                img_np, psf, m, sky_var, nan_policy="flag", n_workers=int(moments_workers),
                **dict(moments_config or {}),
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            result["speed"][m] = n / seconds
            if int(res.ok[calib].sum()) < 3 or int(res.ok[test].sum()) < 3:
                raise ValueError(
                    f"method {m!r}: only {int(res.ok.sum())} of {n} stamps measured; too few to "
                    "calibrate and test"
                )
            preds[m] = (res.g, res.ok)
            result["methods"][m] = score(res.g, res.ok)
            result["methods"][m]["failures"]["by_reason"] = res.failure_counts()
            result["methods"][m]["stamps_per_s"] = result["speed"][m]
    if len(preds) > 1:
        # every method on the stamps that every method measured (the moment methods' own
        # scores leave out their failures, which are harder than average stamps)
        common = np.logical_and.reduce([ok for _, ok in preds.values()])
        result["common"] = {
            "n": int(common.sum()), "n_calib": int((common & calib).sum()),
            "n_test": int((common & test).sum()),
            "methods": {k: score(g, common)["table4"] for k, (g, _) in preds.items()},
        }  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_predictions(out / "predictions.npz", g_true, calib, mag, mis, preds)
    if plots:
        result["figures"] = _figures(out, result)
    json_path = out / "shear_eval.json"
    result["json"] = str(json_path)
    write_json_atomic(json_path, _json_safe(result))
    if print_table:
        from rich.console import Console

        Console().print(format_table(result))
    return result


# ----------------------------------------------------------------------------- output
def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    return obj


def _write_predictions(
    path: Path, truth: np.ndarray, calib: np.ndarray, mag: Any, mis: Any,
    preds: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> None:  # fmt: skip
    import io

    arrays: dict[str, Any] = {"truth": truth, "calib": calib}
    if mag is not None:
        arrays["magnitude"] = mag
    if mis is not None:
        arrays["misalignment"] = mis
    for name, (g, ok) in preds.items():
        arrays[f"{name}/g"] = g
        arrays[f"{name}/ok"] = ok
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def _fmt(v: Any, err: Any = None, digits: int = 3) -> str:
    if v is None or not math.isfinite(float(v)):
        return "—"
    if err is None or not math.isfinite(float(err)) or err <= 0:
        return f"{v:.{digits}f}"
    # the paper's style: 0.257(1) = 0.257 ± 0.001 in the last digit shown
    d = max(digits, min(6, -math.floor(math.log10(err))))
    last = round(err * 10**d)
    return f"{v:.{d}f}({last})"


def format_table(result: Mapping[str, Any]) -> Any:
    """A rich table like the paper's Table 4: c_i, m_i (calibration part), σ_i (test part) with
    errors, failures and stamps/s per method."""
    from rich.table import Table

    table = Table(
        title=f"shear estimators on {result['n_test']} test stamps "
        f"(m, c fitted on {result['n_calib']} calibration stamps)"
    )
    for col in ("method", "c1", "m1", "c2", "m2", "σ1", "σ2", "failed", "stamps/s"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, data in result["methods"].items():
        t = data["table4"]
        table.add_row(
            name + (" (sym)" if data.get("symmetrised") else ""),
            _fmt(t["c"][0], t["c_err"][0], 4), _fmt(t["m"][0], t["m_err"][0]),
            _fmt(t["c"][1], t["c_err"][1], 4), _fmt(t["m"][1], t["m_err"][1]),
            _fmt(t["sigma"][0], t["sigma_err"][0]), _fmt(t["sigma"][1], t["sigma_err"][1]),
            f"{t['n_failed']} ({100 * t['failure_fraction']:.1f}%)",
            f"{data.get('stamps_per_s', float('nan')):.0f}",
        )  # fmt: skip
    return table


def _figures(out: Path, result: Mapping[str, Any]) -> list[str]:
    from lensml.plots import _pyplot, save_figure

    plt = _pyplot()
    files = []
    for key, xlabel, fname, title in (
        ("vs_magnitude", "magnitude", "rms_vs_magnitude.png", "RMS error vs magnitude (Fig. 10)"),
        ("vs_misalignment", "centroid offset / half-light radius", "rms_vs_misalignment.png",
         "RMS error vs centroid misalignment (Fig. 11)"),
    ):  # fmt: skip
        have = {k: v["metrics"][key] for k, v in result["methods"].items() if key in v["metrics"]}
        if not have:
            continue
        fig, ax = plt.subplots(figsize=(5.6, 4.0))
        for name, b in have.items():
            x = np.asarray(b["centre"], dtype=float)
            y = np.array([np.nan if v is None else v for v in b["rms"]], dtype=float)
            e1 = np.array([np.nan if v is None else v for v in b["rms_err_1"]], dtype=float)
            e2 = np.array([np.nan if v is None else v for v in b["rms_err_2"]], dtype=float)
            ax.errorbar(x, y, yerr=0.5 * np.sqrt(e1**2 + e2**2), marker="o", ms=4, capsize=2,
                        label=name)  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.set_ylabel("RMS error of calibrated ĝ (mean of g1, g2)")
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        files.append(str(save_figure(fig, out / fname)))
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0), sharey=True)
    for i, ax in enumerate(axes):
        comp = f"g{i + 1}"
        for j, (name, data) in enumerate(result["methods"].items()):
            b = data["metrics"]["vs_true_shear"][comp]
            x = np.asarray(b["centre"], dtype=float)
            rms = np.array([np.nan if v is None else v for v in b[f"rms_{i + 1}"]], dtype=float)
            bias = np.array([np.nan if v is None else v for v in b[f"bias_{i + 1}"]], dtype=float)
            ax.plot(x, rms, "o-", color=f"C{j}", ms=3, label=f"{name} RMS")
            ax.plot(x, 5 * bias, "s--", color=f"C{j}", ms=3, label=f"{name} 5×bias")
        ax.axhline(0.0, color="k", lw=0.5)
        ax.set_xlabel(f"true {comp}")
        ax.set_title(f"{comp}: RMS and 5×bias per true-shear bin (Fig. 12)")
    axes[0].set_ylabel("calibrated ĝ − g")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    files.append(str(save_figure(fig, out / "rms_bias_vs_true_shear.png")))
    return files
