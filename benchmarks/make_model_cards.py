"""Write ``card.json`` for every model shipped in ``src/lensml/models`` (the model zoo).

Each card records the training data (generator config, seed, size), the command that trained
the weights, the held-out metrics from that benchmark's results JSON, the intended inputs, and a
``ci_check``: a small seeded held-out set and the metrics measured on it now, which
``tests/test_model_zoo.py`` recomputes in CI.

Usage::

    python benchmarks/make_model_cards.py [--only strong/astrorim-small ...]
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TOLERANCE = {"rel": 0.02, "abs": 0.01}


_SHEAR_NETWORKS = {
    "shear-cnn": "shear-cnn (the paper's six-layer CNN, 107,866 parameters)",
    "shear-resnet": "shear-resnet (lensml's pre-activation ResNet preset, 399,602 parameters)",
}


def _shear_calibration_record(name: str) -> dict:
    """The shipped m/c calibration's provenance and its check on independent ring galaxies."""
    cal = json.loads((ROOT / "src" / "lensml" / "models" / "shear" / name
                      / "shear_calibration.json").read_text())  # fmt: skip
    out = {"m": cal["m"], "c": cal["c"], "m_err": cal["m_err"], "c_err": cal["c_err"],
           "fitted_on": cal.get("meta", {}).get("fitted_on")}  # fmt: skip
    path = RESULTS / "shear_calibration_ring_transfer.json"
    transfer = json.loads(path.read_text())["methods"] if path.is_file() else {}
    check = transfer.get(f"cnn:{name}", {}).get("transfer")
    if check is not None and "ring test" in str(out["fitted_on"]):
        out["residual_on_independent_ring_set"] = {
            k: check[k] for k in ("m", "m_err", "c", "c_err", "n_pairs")
        } | {"from": "benchmarks/results/shear_calibration_ring_transfer.json"}
    else:
        out["residual_on_independent_ring_set"] = None
    return out


def _shear_card(name: str = "shear-cnn") -> dict:
    res = json.loads((RESULTS / "shear_accuracy.json").read_text())
    ev = res["evaluation"]["methods"][f"cnn:{name}"]["metrics"]
    # a re-evaluated run keeps the training run's configuration under "evaluated_again"
    cfg = res.get("evaluated_again", {}).get("training_run_config") or res["config"]
    tr, speed = res["training"][name], res["evaluation"].get("speed", {})
    ratio = res["goals"].get("per_network", {}).get(f"cnn:{name}", {})
    if not ratio and name == "shear-cnn":
        ratio = {
            "rms_ratio_over_ksb": res["goals"]["rms_ratio_cnn_over_ksb"],
            "rms_ratio_over_regauss": res["goals"]["rms_ratio_cnn_over_regauss"],
        }
    epochs = cfg["epochs"] if name == "shear-cnn" else cfg["resnet_epochs"]
    flags = [f"--n-train {cfg['n_train']}", f"--n-test {cfg['n_test']}",
             f"--epochs {cfg['epochs']}", f"--resnet-epochs {cfg['resnet_epochs']}",
             f"--resnet-items {cfg['resnet_items']}",
             f"--threads {cfg['threads']}"]  # fmt: skip
    return {
        "name": name,
        "pipeline": "shear",
        "network": _SHEAR_NETWORKS[name],
        "trained_by": f"python benchmarks/shear_accuracy.py {' '.join(flags)} ({res['device']})",
        "training_data": {"generator": "shear", "config": "default (preset clash)",
                          "n_train_total": cfg["n_train"], "seed": cfg["seed"]},
        "training": tr | {"postprocess": "refit, symmetrise, calibrate"},
        "heldout_metrics": {"n": ev["n"], "sigma": ev["sigma"], "m": ev["m"], "c": ev["c"],
                            "m_err": ev["m_err"], "c_err": ev["c_err"]},
        "calibration": _shear_calibration_record(name),
        "intended_inputs": {"survey": "HST/ACS CLASH-like", "stamp": "32x32",
                            "pixel_scale_arcsec": 0.065,
                            "psf": "isotropic Gaussian FWHM 0.121 arcsec",
                            "snr": "10-100 (log-uniform)"},
        "limitations": f"CPU-scale training ({tr['n_train']} stamps, {epochs} epochs): "
                       f"calibrated RMS {ratio.get('rms_ratio_over_ksb', float('nan')):.2f}x "
                       f"KSB's, {ratio.get('rms_ratio_over_regauss', float('nan')):.2f}x "
                       "REGAUSS's on the benchmark's held-out stamps; symmetrised inference "
                       f"{speed.get(f'cnn:{name}+sym', float('nan')):.0f} stamps/s vs KSB "
                       f"{speed.get('ksb', float('nan')):.0f} in that run; outside S/N 10-100 "
                       "and the training PSF it degrades.",
    }  # fmt: skip


def _sersic_card(name: str) -> dict:
    res = json.loads((RESULTS / "sersic_accuracy.json").read_text())
    ev = res["evaluation"]["methods"][name]
    args, tr = res.get("training_args") or res["args"], res["training"][name]
    r2 = {p: round(v["r2"], 3) for p, v in ev["table2"].items()}
    return {
        "name": name,
        "pipeline": "sersic",
        "network": name,
        "trained_by": f"python benchmarks/sersic_accuracy.py --n-train {args['n_train']} "
                      f"--n-test {args['n_test']} --train-minutes {args['train_minutes']} "
                      f"({res['device']})",
        "training_data": {"generator": "sersic", "config": "default (KiDS r, Table-1 priors)",
                          "n_train_total": args["n_train"], "seed": args["seed"]},
        "training": tr,
        "heldout_metrics": {k: ev[k] for k in ev if k in ("table2", "r2", "outlier_fraction",
                                                         "nmad", "n")},
        "intended_inputs": {"survey": "KiDS r band", "stamp": "61x61",
                            "pixel_scale_arcsec": 0.2,
                            "psf": "25x25 image (galnet-2 only), FWHM ~0.7 arcsec",
                            "photometry": "ADU, zeropoint/exptime of the kids preset"},
        "limitations": f"CPU-scale training ({tr['epochs']} epochs of {tr['n_train']} stamps, "
                       f"against the paper's 200k on a GPU): held-out R^2 {r2}, below the "
                       "paper's Table 2 on most parameters.",
    }  # fmt: skip


def _clusters_calibration_record(res: dict) -> dict | None:
    """Where the shipped median calibration came from and what it did (benchmark JSON)."""
    cal = res.get("median_calibration")
    if not cal:
        return None
    cfg = res["config"]
    return {
        "file": "median_calibration.json",
        "labels": cal["labels"],
        "calibration_store": {"generator": "clusters", "config": cfg["generator_config"],
                              "n": cal["n"], "seed": cfg["seed"] + 3, "noise": cfg["noise"]},
        "heldout_metrics_without_it": {
            k: cal["goals_without_calibration"][k]
            for k in ("cnn_abs_median_bias_c", "concentration_goal_met",
                      "concentration_goal_fraction_of_resamples")
        },
    }  # fmt: skip


def _clusters_card() -> dict:
    res = json.loads((RESULTS / "clusters_accuracy.json").read_text())
    cfg = res["config"]
    return {
        "name": "vgg-small",
        "pipeline": "clusters",
        "network": "vgg-small (CPU preset of the paper's VGG), learns log10 c",
        "trained_by": f"python benchmarks/clusters_accuracy.py --n-train {cfg['n_train']} "
                      f"--n-test {cfg['n_test']} --epochs {cfg['epochs']} ({res['device']}, "
                      f"{res['machine']['torch_threads']} thread(s))",
        "training_data": {"generator": "clusters", "config": cfg["generator_config"],
                          "n_train_total": cfg["n_train"], "seed": cfg["seed"],
                          "noise": cfg["noise"]},
        "training": res["training"],
        "heldout_metrics": res["goals"],
        "median_calibration": _clusters_calibration_record(res),
        "intended_inputs": {"maps": "reduced shear g1, g2, 64x64 pixels of 16 arcsec "
                            "(17.1 arcmin field), or an integer multiple (block-averaged)",
                            "noise": "Euclid-like shape noise (sigma_e 0.3, 30 gal/arcmin^2)",
                            "redshifts": "z_l 0.2, z_s 1.0 (generator defaults)"},
        "limitations": "CPU-scale training; the paper-scale 512^2 Inception runs need a GPU.",
    }  # fmt: skip


def _pixelated_cards() -> dict:
    """The strong-pixelated RIM and its two VAEs, from benchmarks/rim_pixelated.py."""
    res = json.loads((RESULTS / "rim_pixelated.json").read_text())
    args, ev = res["args"], res["evaluation"]
    data = {"generator": "strong-pixelated", "config": {"preset": "small"},
            "n_train_total": args["n_train"], "n_vae_extra": args["n_vae"],
            "seed": args["seed"]}  # fmt: skip
    inputs = {"image": "64x64 pixels over 7.69 arcsec (0.12 arcsec/pixel), source units "
              "(peak-1 source), white noise sigma 0.001-0.1, Gaussian PSF FWHM 0.06-0.3 arcsec",
              "source_grid": "64x64 over 3 arcsec"}  # fmt: skip
    base = {"pipeline": "strong-pixelated", "training_data": data, "intended_inputs": inputs,
            "trained_by": "python benchmarks/rim_pixelated.py (defaults, CPU)"}  # fmt: skip
    ft = ev.get("finetune") or {}
    rim = base | {
        "name": "rim-pixelated-small",
        "network": "rim-pixelated-small (U-net [8, 16, 32] with ConvGRU memories, T = 8)",
        "training": res["rim_training"],
        "heldout_metrics": {"n": ev["n"], "baseline": ev["baseline"],
                            "finetune": {k: ft.get(k) for k in (
                                "n", "chi2_nu_baseline", "chi2_nu_finetuned",
                                "log10_loss_baseline", "log10_loss_finetuned",
                                "source_coherence_higher_fraction_of_k")} if ft else None},
        "limitations": "CPU-scale training (minutes; the paper trains 10 days on an A100): "
                       "a demonstration of the method at 64 px, not a usable lens model.",
    }  # fmt: skip
    cards = {("strong-pixelated", "rim-pixelated-small"): rim}
    for kind in ("source", "kappa"):
        cards[("strong-pixelated", f"vae-{kind}-small")] = base | {
            "name": f"vae-{kind}-small",
            "network": f"vae-{kind}-small (Appendix B architecture at 64 px)",
            "training": {"seconds": res["timings"].get(f"vae_{kind}_s"),
                         "lr": args.get("vae_lr")},
            "heldout_metrics": {"note": "reconstruction error in ci_check"},
            "limitations": "CPU-scale training (minutes): blurry samples; used for the "
                           "fine-tuning's Fisher samples and the quickstart.",
        }  # fmt: skip
    return cards


def _strong_card() -> dict:
    """AstroRIM (astrorim-small), from benchmarks/strong_accuracy.py (run with --keep)."""
    res = json.loads((RESULTS / "strong_accuracy.json").read_text())
    ev = res["evaluation"]
    # a --evaluate-only re-score keeps the training run's arguments under evaluated_again
    args = (res.get("evaluated_again") or {}).get("earlier_args") or res["args"]
    rim = ev["source_metrics"]["astrorim"]
    lens = ev["lens"]["astrorim"]
    cmd = (f"python benchmarks/strong_accuracy.py --n-train {args['n_train']} "
           f"--n-test {args['n_test']} --train-seconds {args['train_seconds']:g} "
           "--keep WORK")  # fmt: skip
    prev = res.get("resumed_from")
    if prev:
        cmd = cmd.replace(f"--train-seconds {args['train_seconds']:g}",
                          f"--train-seconds {prev['train_seconds']:g}")  # fmt: skip
        cmd += f", then again with --resume --train-seconds {args['train_seconds']:g}"
    cmd += "; WORK/run/model is the shipped directory (CPU)"
    card = {
        "name": "astrorim-small",
        "pipeline": "strong",
        "network": "astrorim-small (encoder [16, 32, 48, 64], RIM T = 4, 96 x 96)",
        "trained_by": cmd,
        "training_data": {"generator": "strong", "variants": list(ev["variants"]),
                          "n_train_per_variant": args["n_train"],
                          "n_train_total": res["training"]["n_train"],
                          "seeds": "seed + k for variant k (seed 0)"},
        "training": res["training"],
        "heldout_metrics": {
            "n": ev["n"], "n_per_variant": args["n_test"],
            "ssim": rim["all"]["ssim"], "mse": rim["all"]["mse"],
            "ssim_mean_per_variant": {v: rim[v]["ssim"]["mean"] for v in ev["variants"]},
            "theta_e_rel_error": lens["b_rel"], "q_abs_error": lens["q_abs"],
            "reduced_chi2": ev["forward"]["astrorim"]["reduced_chi2"],
            "symmetrised": bool(ev.get("symmetrised", False)),
        },
        "intended_inputs": {"image": "96x96 pixels, sky-subtracted counts; trained at 0.04 "
                                     "arcsec/pixel (HST-like) and, in v3-v4, 0.08 and 0.2 "
                                     "arcsec/pixel; lensml predict strong resamples other "
                                     "scales",
                            "psf": "learned global Moffat + residual (the observation's PSF "
                                   "is not an input)",
                            "lenses": "SIE + shear (+ NFW, subhalos) of the strong "
                                      "generator's v1-v6 priors: theta_E 0.16-2.1 arcsec "
                                      "(5-95 %, median 1.08)"},
        "limitations": "CPU-scale training (tens of minutes; the paper trains 500k pairs on "
                       "a GPU); see docs/benchmarks.md for the measured goals.",
    }  # fmt: skip
    plain = res.get("evaluation_plain")
    if plain:  # the same held-out lenses without the 8-fold symmetrisation
        card["heldout_metrics_plain"] = {
            "ssim": plain["source_metrics"]["astrorim"]["all"]["ssim"],
            "theta_e_rel_error": plain["lens"]["astrorim"]["b_rel"],
        }
    return card


def main(argv: list[str] | None = None) -> int:
    import argparse

    from lensml.models import ROOT as MODELS
    from lensml.models import ShippedModel, check_model

    cards = {("shear", "shear-cnn"): _shear_card(), ("clusters", "vgg-small"): _clusters_card()}
    if (MODELS / "shear" / "shear-resnet").is_dir():
        cards[("shear", "shear-resnet")] = _shear_card("shear-resnet")
    for name in ("galnet-1-small", "galnet-2-small"):
        cards[("sersic", name)] = _sersic_card(name)
    if (MODELS / "strong-pixelated").is_dir():
        cards.update(_pixelated_cards())
    if (MODELS / "strong" / "astrorim-small").is_dir():
        cards[("strong", "astrorim-small")] = _strong_card()
    checks = {
        "shear": {"generator": "shear", "config": {}, "seed": 20261121, "n": 512},
        "sersic": {"generator": "sersic", "config": {}, "seed": 20261121, "n": 256},
        "clusters": {"generator": "clusters", "config": {"size": 64, "pixel_scale": 16.0},
                     "noise": "euclid", "seed": 20261121, "n": 256},
        "strong-pixelated": {"generator": "strong-pixelated", "config": {"preset": "small"},
                             "seed": 20261121, "n": 8},
        "strong": {"generator": "strong", "variants": ["v1", "v2", "v3", "v4", "v5", "v6"],
                   "config": {}, "seed": 20261121, "n": 4},
    }  # fmt: skip
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=None, metavar="PIPELINE/NAME",
                   help="rewrite only these cards (default: all)")  # fmt: skip
    only = p.parse_args(argv).only
    for (pipeline, name), card in cards.items():
        if only and f"{pipeline}/{name}" not in only:
            continue
        path = MODELS / pipeline / name
        check = dict(checks[pipeline])
        card["ci_check"] = check
        check["metrics"] = check_model(ShippedModel(pipeline, name, path, card))
        check["tolerance"] = TOLERANCE
        (path / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        print(pipeline, name, check["metrics"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
