"""``evaluate_pixelated``: baseline and fine-tuned RIM reconstructions on held-out systems (§5).

For every held-out observation of a ``strong-pixelated`` store the trained RIM gives its
baseline reconstruction x̂(φ*_D) (source and κ). On the first ``n_finetune`` systems the RIM is
also fine-tuned to the observation (eq. 9–10, EWC prior with the Fisher diagonal from VAE
samples near the baseline answer, :mod:`lensml.pipelines.strong_pixelated_finetune`).

Reported (JSON, printed tables, PNG figures):

* **goodness of fit** — χ²_ν (ν = N² pixels) of the baseline on all systems and of baseline and
  fine-tuned on the fine-tuned subset, against the theoretical χ²_ν distribution (Fig. 8,
  right), and χ²_ν versus SNR = 1/σ with the fitted threshold (Fig. 9);
* **Table 4** — log10-normal moments μ, σ of the loss L_φ (eq. 7, oracle metric with the true
  maps) for the baseline (all systems and the subset) and the fine-tuned subset, the paired
  difference of log10 L (Fig. 8, left) and the paper's Z test;
* **coherence** γ(k) of source and κ with the truth (eq. 14; mean and 68 % band, Fig. 11) and the
  fraction of k bins where fine-tuning raised the mean source coherence;
* **speed** — seconds per system of the baseline (batched) and of one fine-tuning;
* **panels** of observation, truths, baseline and fine-tuned maps and residuals (Figs. 7, 10).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["evaluate_pixelated", "format_tables", "reconstruct_batch"]


def reconstruct_batch(
    rim: Any, y: Any, sigma: Any, psf: Any, batch_size: int = 8
) -> dict[str, Any]:
    """Baseline reconstructions of many observations, in batches, without gradients.

    Returns a dict of tensors: ``source`` (B, 1, Ns, Ns), ``kappa`` (B, 1, N, N), the T-step
    estimates ``source_steps`` / ``xi_steps`` (lists of (B, 1, ·, ·)) and ``seconds`` (wall
    time of the network, all batches).
    """
    import torch

    n = y.shape[0]
    parts_s: list[list[Any]] = []
    parts_x: list[list[Any]] = []
    t0 = time.perf_counter()
    for i in range(0, n, batch_size):
        sl = slice(i, min(i + batch_size, n))
        with torch.no_grad():
            s_steps, x_steps = rim.unroll(y[sl], sigma[sl], None if psf is None else psf[sl])
        parts_s.append([s.detach() for s in s_steps])
        parts_x.append([x.detach() for x in x_steps])
    seconds = time.perf_counter() - t0
    steps = len(parts_s[0])
    s_steps = [torch.cat([p[t] for p in parts_s]) for t in range(steps)]
    x_steps = [torch.cat([p[t] for p in parts_x]) for t in range(steps)]
    return {
        "source": s_steps[-1],
        "kappa": rim.link(x_steps[-1]),
        "source_steps": s_steps,
        "xi_steps": x_steps,
        "seconds": seconds,
    }


def _read_store(root: Path, max_items: int | None) -> dict[str, np.ndarray]:
    from lensml.data.store import open_store

    store = open_store(root)
    data = store.read_all(keys=["image", "source", "kappa", "psf", "sigma"])
    n = len(data["image"]) if max_items is None else min(len(data["image"]), int(max_items))
    if n < 1:
        raise ValueError(f"data_dir {root}: no items")
    return {k: np.asarray(v[:n]) for k, v in data.items()}


def _check_geometry(info: Any, side: Mapping[str, Any], model: Any) -> None:
    got = (info.n_image, info.n_source, info.fov, info.source_fov)
    want = (side["n_image"], side["n_source"], side["fov"], side["source_fov"])
    if any(
        abs(float(a) - float(b)) > 1e-6 * max(1.0, abs(float(b)))
        for a, b in zip(got, want, strict=True)
    ):
        raise ValueError(
            f"data_dir {info.root}: geometry (n_image, n_source, fov, source_fov) = {got} "
            f"differs from the model {model}'s {want}"
        )  # fmt: skip


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {
        "median": float(np.median(v)),
        "p16": float(np.percentile(v, 16)),
        "p84": float(np.percentile(v, 84)),
        "mean": float(np.mean(v)),
    }


def evaluate_pixelated(
    data_dir: str | Path,
    model: str | Path,
    out_dir: str | Path,
    *,
    vae_source: str | Path | None = None,
    vae_kappa: str | Path | None = None,
    n_finetune: int = 8,
    finetune_config: Mapping[str, Any] | None = None,
    max_items: int | None = None,
    batch_size: int = 8,
    panels: int = 4,
    seed: int = 0,
    device: str = "cpu",
    print_table: bool = True,
) -> dict[str, Any]:
    """Evaluate a trained pixelated RIM, with and without fine-tuning (module docstring).

    Parameters
    ----------
    data_dir : path
        Held-out ``strong-pixelated`` store with the model's geometry.
    model : path
        RIM model directory from :func:`lensml.pipelines.strong_pixelated.train_rim`.
    out_dir : path
        Written: ``strong_pixelated_eval.json`` and the PNG figures.
    vae_source, vae_kappa : path, optional
        VAE model directories (:func:`~lensml.pipelines.strong_pixelated.train_vae`); both are
        needed to fine-tune (the Fisher samples). Without them only the baseline is evaluated.
    n_finetune : int
        Systems fine-tuned (the first ones of the store), >= 0.
    finetune_config : mapping, optional
        :class:`~lensml.pipelines.strong_pixelated_finetune.FineTuneConfig` fields (default:
        Table 3).
    max_items : int, optional
        Evaluate only the first N systems.
    batch_size : int
        Observations per baseline forward pass.
    panels : int
        Systems shown in the reconstruction panel (fine-tuned ones first).
    seed : int
        Seeds the Fisher samples of the fine-tuning.
    device : str
        Torch device.
    print_table : bool
        Print the summary tables.

    Returns
    -------
    dict
        Everything in the JSON plus ``json`` (its path), ``figures`` and ``tables``.
    """
    import torch

    from lensml.data.store import write_json_atomic
    from lensml.pipelines import strong_pixelated_figures as figs
    from lensml.pipelines import strong_pixelated_metrics as met
    from lensml.pipelines.strong_pixelated import (
        inspect_pixelated_store,
        load_rim,
        load_vae,
    )
    from lensml.pipelines.strong_pixelated_finetune import FineTuneConfig, finetune

    if isinstance(n_finetune, bool) or not isinstance(n_finetune, int) or n_finetune < 0:
        raise ValueError(f"n_finetune must be an integer >= 0; got {n_finetune!r}")
    if n_finetune and (vae_source is None or vae_kappa is None):
        raise ValueError(
            "fine-tuning needs both VAEs: give vae_source and vae_kappa (lensml train "
            "strong-pixelated vae-source / vae-kappa), or n_finetune=0"
        )
    info = inspect_pixelated_store(data_dir)
    rim, side = load_rim(model, device=device)
    _check_geometry(info, side, model)
    ft_cfg = FineTuneConfig(**dict(finetune_config or {}))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    raw = _read_store(info.root, max_items)
    t = {k: torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in raw.items()}
    n = t["image"].shape[0]
    lens = rim.lens
    nu = info.n_image**2

    base = reconstruct_batch(rim, t["image"], t["sigma"], t["psf"], batch_size)
    with torch.no_grad():
        loss_b = (
            rim.per_example_loss(base["source_steps"], base["xi_steps"], t["source"], t["kappa"])
            .cpu()
            .numpy()
        )
        chi2_b = lens.reduced_chi2(t["image"], base["source"], base["kappa"], t["sigma"],
                                   t["psf"]).cpu().numpy()  # fmt: skip
    snr = 1.0 / raw["sigma"].astype(float)
    snr_fit = met.chi2_vs_snr(chi2_b, snr) if n >= 8 else None  # Fig. 9 (needs a few systems)
    k_src, g_src_b = met.coherence_spectrum(base["source"].cpu(), t["source"].cpu(),
                                            pixel_scale=lens.source_pixel_scale)  # fmt: skip
    k_kap, g_kap_b = met.coherence_spectrum(base["kappa"].cpu(), t["kappa"].cpu(),
                                            pixel_scale=lens.pixel_scale)  # fmt: skip

    result: dict[str, Any] = {
        "data_dir": str(info.root),
        "model": str(model),
        "network": side.get("network"),
        "n": int(n),
        "nu": int(nu),
        "baseline": {
            "chi2_nu": _stats(chi2_b),
            "chi2_summary": met.chi2_distribution_summary(chi2_b, nu),
            "log10_loss": _moments(loss_b),
            "chi2_vs_snr": snr_fit.as_dict() if snr_fit is not None else None,
            "seconds_per_system": base["seconds"] / n,
        },
        "coherence": {
            "k_source": k_src.tolist(),
            "k_kappa": k_kap.tolist(),
            "source_baseline": _bands(met.coherence_bands(g_src_b)),
            "kappa_baseline": _bands(met.coherence_bands(g_kap_b)),
        },
        "finetune": None,
        "device": device,
        "seed": seed,
    }

    # ------------------------------------------------------------------ fine-tuning
    figures: list[Path] = []
    m = min(int(n_finetune), n)
    ft_results: list[Any] = []
    if m:
        vs, _ = load_vae(vae_source, "source", device=device)  # type: ignore[arg-type]
        vk, _ = load_vae(vae_kappa, "kappa", device=device)  # type: ignore[arg-type]
        gen = torch.Generator().manual_seed(int(seed))
        for i in range(m):
            sl = slice(i, i + 1)
            res = finetune(rim, t["image"][sl], t["sigma"][sl], t["psf"][sl], vs, vk, ft_cfg,
                           generator=gen, return_model=False)  # fmt: skip
            ft_results.append(res)
        src_f = torch.cat([r.source_finetuned for r in ft_results])
        kap_f = torch.cat([r.kappa_finetuned for r in ft_results])
        with torch.no_grad():
            loss_f = np.array([
                float(rim.per_example_loss(*r.finetuned_steps, t["source"][i : i + 1],
                                           t["kappa"][i : i + 1])[0])
                for i, r in enumerate(ft_results)
            ])  # fmt: skip
        chi2_f = np.array([r.chi2_finetuned for r in ft_results])
        chi2_bs = chi2_b[:m]
        _, g_src_f = met.coherence_spectrum(src_f.cpu(), t["source"][:m].cpu(),
                                            pixel_scale=lens.source_pixel_scale)  # fmt: skip
        _, g_kap_f = met.coherence_spectrum(kap_f.cpu(), t["kappa"][:m].cpu(),
                                            pixel_scale=lens.pixel_scale)  # fmt: skip
        src_bands_b = met.coherence_bands(g_src_b[:m])
        src_bands_f = met.coherence_bands(g_src_f)
        kap_bands_b = met.coherence_bands(g_kap_b[:m])
        kap_bands_f = met.coherence_bands(g_kap_f)
        higher = np.asarray(src_bands_f["mean"]) > np.asarray(src_bands_b["mean"])
        ok = np.isfinite(src_bands_f["mean"]) & np.isfinite(src_bands_b["mean"])
        paired = met.paired_log_loss_test(loss_b[:m], loss_f).as_dict() if m >= 2 else {}
        result["finetune"] = {
            "n": m,
            "config": {k: getattr(ft_cfg, k) for k in ft_cfg.__dataclass_fields__},
            "chi2_nu_baseline": _stats(chi2_bs),
            "chi2_nu_finetuned": _stats(chi2_f),
            "chi2_summary_baseline": met.chi2_distribution_summary(chi2_bs, nu),
            "chi2_summary_finetuned": met.chi2_distribution_summary(chi2_f, nu),
            "median_abs_log_chi2_nu": {
                "baseline": float(np.median(np.abs(np.log10(chi2_bs)))),
                "finetuned": float(np.median(np.abs(np.log10(chi2_f)))),
            },
            "fraction_closer_to_1": float(
                np.mean(np.abs(np.log10(chi2_f)) < np.abs(np.log10(chi2_bs)))
            ),
            "log10_loss_baseline": _moments(loss_b[:m]),
            "log10_loss_finetuned": _moments(loss_f),
            "paired_log_loss": paired,
            "source_coherence_higher_fraction_of_k": float(higher[ok].mean()) if ok.any() else None,
            "source_coherence_mean_gain": float(np.nanmean(
                np.asarray(src_bands_f["mean"]) - np.asarray(src_bands_b["mean"]))),
            "kappa_coherence_mean_gain": float(np.nanmean(
                np.asarray(kap_bands_f["mean"]) - np.asarray(kap_bands_b["mean"]))),
            "coherence": {
                "source_baseline": _bands(src_bands_b),
                "source_finetuned": _bands(src_bands_f),
                "kappa_baseline": _bands(kap_bands_b),
                "kappa_finetuned": _bands(kap_bands_f),
            },
            "seconds_per_system": float(np.mean([r.seconds for r in ft_results])),
            "fisher_seconds_per_system": float(np.mean([r.fisher_seconds for r in ft_results])),
            "steps": [int(r.steps) for r in ft_results],
            "reached_target": int(sum(bool(r.reached_target) for r in ft_results)),
            "per_system": [r.summary() for r in ft_results],
        }  # fmt: skip
        figures.append(figs.plot_chi2_histograms(chi2_bs, chi2_f, nu, out / "chi2_nu.png"))
        figures.append(figs.plot_log_loss_difference(loss_b[:m], loss_f,
                                                     out / "log_loss_difference.png"))  # fmt: skip
        figures.append(figs.plot_coherence(
            {"source": k_src, "kappa": k_kap},
            {"source": {"baseline": g_src_b[:m], "fine-tuned": g_src_f},
             "kappa": {"baseline": g_kap_b[:m], "fine-tuned": g_kap_f}},
            out / "coherence.png",
        ))  # fmt: skip
    else:
        figures.append(figs.plot_coherence(
            {"source": k_src, "kappa": k_kap},
            {"source": {"baseline": g_src_b}, "kappa": {"baseline": g_kap_b}},
            out / "coherence.png",
        ))  # fmt: skip
    if snr_fit is not None:
        figures.append(figs.plot_chi2_vs_snr(chi2_b, snr, snr_fit, out / "chi2_vs_snr.png"))
    figures.append(_panel(out / "reconstructions.png", t, base, ft_results, lens,
                          min(int(panels), n)))  # fmt: skip

    tables = format_tables(result)
    result["tables"] = tables
    result["figures"] = [str(p) for p in figures]
    path = out / "strong_pixelated_eval.json"
    write_json_atomic(path, _json_safe(result))
    result["json"] = str(path)
    if print_table:
        _print_tables(tables)
    return result


def _moments(losses: Any) -> dict[str, float | None]:
    """Table 4's log10-normal (μ, σ) of the losses; None for fewer than two systems."""
    from lensml.pipelines.strong_pixelated_metrics import lognormal_moments

    if len(losses) < 2:
        return {"mu": None, "sigma": None}
    mu, sigma = lognormal_moments(losses)
    return {"mu": mu, "sigma": sigma}


def _bands(b: Mapping[str, Any]) -> dict[str, list[float]]:
    return {k: np.asarray(v, dtype=float).tolist() for k, v in b.items() if k != "n"}


def _panel(path: Path, t: Mapping[str, Any], base: Mapping[str, Any], ft: Sequence[Any],
           lens: Any, k: int) -> Path:  # fmt: skip
    import torch

    from lensml.pipelines.strong_pixelated_figures import plot_reconstructions

    k = max(1, k)
    idx = slice(0, k)
    maps: dict[str, Any] = {
        "observation": t["image"][idx],
        "source_true": t["source"][idx],
        "source_baseline": base["source"][idx],
        "kappa_true": t["kappa"][idx],
        "kappa_baseline": base["kappa"][idx],
    }
    with torch.no_grad():
        model_b = lens.forward(base["source"][idx], base["kappa"][idx], t["psf"][idx])
    sig = t["sigma"][idx].reshape(-1, 1, 1, 1)
    res_b = (t["image"][idx] - model_b) / sig
    res_f = None
    if len(ft) >= k:
        src_f = torch.cat([r.source_finetuned for r in ft[:k]])
        kap_f = torch.cat([r.kappa_finetuned for r in ft[:k]])
        maps["source_finetuned"] = src_f
        maps["kappa_finetuned"] = kap_f
        with torch.no_grad():
            res_f = (t["image"][idx] - lens.forward(src_f, kap_f, t["psf"][idx])) / sig
    labels = [f"SNR {1.0 / float(s):.0f}" for s in t["sigma"][idx]]
    return plot_reconstructions(maps, path, residual_baseline=res_b, residual_finetuned=res_f,
                                row_labels=labels)  # fmt: skip


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _g(v: Any, fmt: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return format(v, fmt)


def format_tables(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The summary tables (title, columns, rows) of an evaluation result."""
    b = result["baseline"]
    rows = [["baseline (all)", result["n"], _g(b["chi2_nu"]["median"]),
             f"{_g(b['chi2_nu']['p16'])}–{_g(b['chi2_nu']['p84'])}",
             _g(b["log10_loss"]["mu"]), _g(b["log10_loss"]["sigma"]),
             _g(b["seconds_per_system"], ".3f")]]  # fmt: skip
    ft = result.get("finetune")
    if ft:
        rows.append(["baseline (subset)", ft["n"], _g(ft["chi2_nu_baseline"]["median"]),
                     f"{_g(ft['chi2_nu_baseline']['p16'])}–{_g(ft['chi2_nu_baseline']['p84'])}",
                     _g(ft["log10_loss_baseline"]["mu"]), _g(ft["log10_loss_baseline"]["sigma"]),
                     "—"])  # fmt: skip
        rows.append(["fine-tuned (subset)", ft["n"], _g(ft["chi2_nu_finetuned"]["median"]),
                     f"{_g(ft['chi2_nu_finetuned']['p16'])}–{_g(ft['chi2_nu_finetuned']['p84'])}",
                     _g(ft["log10_loss_finetuned"]["mu"]),
                     _g(ft["log10_loss_finetuned"]["sigma"]),
                     _g(ft["seconds_per_system"], ".1f")])  # fmt: skip
    tables = [{
        "title": "Pixelated RIM: goodness of fit and Table 4 (log10-normal moments of the loss)",
        "columns": ["model", "n", "median χ²_ν", "χ²_ν 16–84 %", "μ(log10 L)", "σ(log10 L)",
                    "s / system"],
        "rows": rows,
    }]  # fmt: skip
    if ft:
        p = ft["paired_log_loss"]
        tables.append({
            "title": "Fine-tuning: paired change and coherence",
            "columns": ["quantity", "value"],
            "rows": [
                ["Δμ(log10 L) fine-tuned − baseline", _g(p.get("delta_mu"))],
                ["scatter of Δlog10 L", _g(p.get("scatter"))],
                ["paired Z / p", f"{_g(p.get('z'))} / {_g(p.get('p'))}"],
                ["paper's Z / p (Δμ / σ)", f"{_g(p.get('z_paper'))} / {_g(p.get('p_paper'))}"],
                ["χ²_ν closer to 1 (fraction)", _g(ft["fraction_closer_to_1"])],
                ["median |log10 χ²_ν| baseline → fine-tuned",
                 f"{_g(ft['median_abs_log_chi2_nu']['baseline'])} → "
                 f"{_g(ft['median_abs_log_chi2_nu']['finetuned'])}"],
                ["source coherence higher (fraction of k bins)",
                 _g(ft["source_coherence_higher_fraction_of_k"])],
                ["mean coherence gain source / κ",
                 f"{_g(ft['source_coherence_mean_gain'])} / {_g(ft['kappa_coherence_mean_gain'])}"],
                ["reached χ²_ν ≤ target", f"{ft['reached_target']} / {ft['n']}"],
            ],
        })  # fmt: skip
    return tables


def _print_tables(tables: Sequence[Mapping[str, Any]]) -> None:
    for tab in tables:
        print(f"\n{tab['title']}")
        widths = [max(len(str(c)), *(len(str(r[i])) for r in tab["rows"]))
                  for i, c in enumerate(tab["columns"])]  # fmt: skip
        print("  ".join(str(c).ljust(w) for c, w in zip(tab["columns"], widths, strict=True)))
        for r in tab["rows"]:
            print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)))
