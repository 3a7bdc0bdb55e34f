"""Benchmark: cluster CNN vs the NFW tangential-shear fit on the same noisy test set.

CPU small run (minutes): simulate ``--n-train`` + ``--n-test`` clusters with the ``clusters``
generator at ``--size`` pixels over the same 17.1′ field as the paper preset (64² pixels of
16″ by default: the ``small`` preset's 128² × 8″ block-averaged, simulated directly at the
coarse grid because the 128² generator runs at ~5 clusters/s on the shared 2-core CPU), train
``--network`` (``vgg-small``, 64² input) for ``--epochs`` with Euclid shape noise, and
evaluate it and the ``nfw-tangential-fit`` baseline on one noisy realisation of the test set.

Also measured: simulated clusters per second at 512² (the paper preset, a few clusters) and at
the benchmark size, CNN maps per second (inference) and the fit's maps per second.

Goal (issue 4): CNN |median bias| in c_vir <= half the fit's, and CNN RMS in log10 M_vir <= the
fit's. The c goal only counts when the CNN's c also ranks the clusters at least as well as the
fit's (Spearman ρ with the truth): a network that returns the prior median for every cluster
has no median bias and measures nothing. The median biases get bootstrap 68 % intervals
(``--n-boot`` resamples of the test set), because at a few thousand clusters the median bias of
an unbiased method is noise of order 1.25 σ / sqrt(N). The network learns log10 c by default
(``--linear-concentration`` trains on c as the paper does) with the paper's MSE; ``--loss l1``
fits conditional medians instead, which makes the median bias of every label tend to 0 (a
median-unbiased estimator). With ``--n-calibration`` > 0 (default 3000) a separate store is
simulated and the trained network gets a median calibration of c_vir and c_smooth
(:mod:`lensml.pipelines.clusters_calibration`): a monotone map from its output to the median
truth, which keeps its ranking; the goals are scored with it, and without it under
``median_calibration.goals_without_calibration``. Results:
``benchmarks/results/clusters_accuracy.json`` (``--out`` to write elsewhere).

Usage::

    python benchmarks/clusters_accuracy.py [--n-train 2400] [--n-test 600] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "clusters_accuracy.json"


def _machine() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "load_average_1min": os.getloadavg()[0],
        "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def _predicted_and_true_c(npz: Path, cnn: str) -> tuple:
    """c_vir of the CNN, of the fit and the truth from an evaluation's predictions file."""
    import numpy as np

    data = np.load(npz)
    true_c = data["truth"][:, list(data["labels"]).index("c_vir")]
    return data[f"{cnn}/c_vir"], data["nfw-tangential-fit/c_vir"], true_c


def _bootstrap_median_bias(c: tuple, n_boot: int, seed: int) -> dict:
    """68 % bootstrap intervals of the median bias in c_vir of the CNN, the fit and their
    difference of absolute values (same resampled clusters for both); ``c`` is
    :func:`_predicted_and_true_c`'s (CNN, fit, truth)."""
    import numpy as np

    cnn_c, fit_c, true_c = c
    d_cnn = cnn_c - true_c
    d_fit = fit_c - true_c
    ok = np.isfinite(d_cnn) & np.isfinite(d_fit)
    d_cnn, d_fit = d_cnn[ok], d_fit[ok]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d_cnn), size=(n_boot, len(d_cnn)))
    m_cnn = np.median(d_cnn[idx], axis=1)
    m_fit = np.median(d_fit[idx], axis=1)

    def band(v):
        lo, hi = np.percentile(v, [16, 84])
        return [float(lo), float(hi)]

    return {
        "bootstrap_n": int(n_boot),
        "cnn_median_bias_c_68": band(m_cnn),
        "fit_median_bias_c_68": band(m_fit),
        "abs_cnn_minus_half_abs_fit_68": band(np.abs(m_cnn) - 0.5 * np.abs(m_fit)),
        "concentration_goal_fraction_of_resamples": float(
            np.mean(np.abs(m_cnn) <= 0.5 * np.abs(m_fit))
        ),
    }


def _concentration_information(c: tuple) -> dict:
    """Does each method measure c at all? Spearman ρ of predicted vs true c_vir and the
    5–50–95 % points of the predictions (``c``: :func:`_predicted_and_true_c`'s). A median bias
    near 0 means little for a method whose c barely varies: a constant at the prior median has
    none."""
    import numpy as np
    from scipy.stats import spearmanr

    cnn_c, fit_c, true_c = c
    out = {}
    for pred, name in ((cnn_c, "cnn"), (fit_c, "fit")):
        ok = np.isfinite(pred)
        out[f"{name}_spearman_c"] = float(spearmanr(pred[ok], true_c[ok]).statistic)
        out[f"{name}_c_percentiles_5_50_95"] = [
            float(v) for v in np.percentile(pred[ok], [5, 50, 95])
        ]
    out["true_c_percentiles_5_50_95"] = [float(v) for v in np.percentile(true_c, [5, 50, 95])]
    out["cnn_measures_c_at_least_as_well_as_fit"] = bool(
        out["cnn_spearman_c"] >= out["fit_spearman_c"]
    )
    return out


def _goals(ev: dict, args: argparse.Namespace, cnn: str) -> dict:
    """The issue's goals from one evaluation, with bootstrap bands and the c-information check."""
    methods = ev["conditions"][args.noise]["methods"]
    fit, cnn_m = methods["nfw-tangential-fit"], methods[cnn]
    c_cnn = abs(cnn_m["labels"]["c_vir"]["overall"]["median_bias"])
    c_fit = abs(fit["labels"]["c_vir"]["overall"]["median_bias"])
    m_cnn = cnn_m["labels"]["log10_mvir"]["overall"]["rms"]
    m_fit = fit["labels"]["log10_mvir"]["overall"]["rms"]
    goals = {
        "cnn_abs_median_bias_c": c_cnn,
        "fit_abs_median_bias_c": c_fit,
        "concentration_goal_met": bool(c_cnn <= 0.5 * c_fit),
        "cnn_rms_log10_mvir": m_cnn,
        "fit_rms_log10_mvir": m_fit,
        "mass_goal_met": bool(m_cnn <= m_fit),
    }
    c = _predicted_and_true_c(Path(ev["json"]).with_name(f"predictions_{args.noise}.npz"), cnn)
    goals.update(_bootstrap_median_bias(c, args.n_boot, args.seed))
    goals.update(_concentration_information(c))
    # a median bias near 0 only counts when the CNN's c carries information on the truth
    goals["all_goals_met"] = (
        goals["concentration_goal_met"]
        and goals["cnn_measures_c_at_least_as_well_as_fit"]
        and goals["mass_goal_met"]
    )
    return goals


def _gen_speed(size: int, pixel_scale: float, n: int, seed: int) -> float:
    import torch

    from lensml.sims.clusters import ClusterGenerator, cluster_config

    gen = ClusterGenerator()
    cfg = cluster_config("paper", size=size, pixel_scale=pixel_scale)
    t0 = time.perf_counter()
    gen.generate(n, torch.Generator().manual_seed(seed), cfg)
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=2400)
    ap.add_argument("--n-test", type=int, default=600)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--pixel-scale", type=float, default=16.0)
    ap.add_argument("--network", default="vgg-small")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--noise", default="euclid")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-512", type=int, default=4, help="clusters timed at 512² (0: skip)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument(
        "--linear-concentration",
        action="store_true",
        help="train on c itself (the paper) instead of log10 c",
    )
    ap.add_argument(
        "--loss",
        choices=("mse", "l1"),
        default="mse",
        help="training loss: mse (the paper, conditional mean) or l1 (conditional median)",
    )
    ap.add_argument(
        "--n-calibration",
        type=int,
        default=3000,
        help="clusters in a separate store for the median calibration of c (0: none)",
    )
    args = ap.parse_args()

    from lensml.data.runner import run_simulate
    from lensml.data.store import write_json_atomic
    from lensml.pipelines.clusters import evaluate_clusters, train_clusters
    from lensml.pipelines.clusters_calibration import calibrate_clusters

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lensml-clusters-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    gen_cfg = {"size": args.size, "pixel_scale": args.pixel_scale}
    timings = {}
    stores = {}
    splits = [("train", args.n_train, args.seed), ("test", args.n_test, args.seed + 1)]
    if args.n_calibration > 0:
        splits.append(("calibration", args.n_calibration, args.seed + 3))
    for split, n, seed in splits:
        out = work / split
        if out.exists():
            shutil.rmtree(out)
        t0 = time.perf_counter()
        run_simulate("clusters", n, out, seed, config=gen_cfg, shard_size=512, progress=False)
        timings[f"simulate_{split}_s"] = time.perf_counter() - t0
        stores[split] = out
    sim_rate = (args.n_train + args.n_test) / (
        timings["simulate_train_s"] + timings["simulate_test_s"]
    )  # the calibration store is left out: same generator, fewer maps
    rate_512 = _gen_speed(512, 2.0, args.n_512, 123) if args.n_512 > 0 else None
    print(f"simulated clusters/s at {args.size}²: {sim_rate:.2f}")
    if rate_512 is not None:
        print(f"simulated clusters/s at 512² (paper preset, {args.n_512} clusters): {rate_512:.3f}")

    run_dir = work / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train = train_clusters(
        stores["train"],
        args.network,
        run_dir,
        noise=args.noise,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        progress=False,
        log_concentration=not args.linear_concentration,
        loss=args.loss,
    )
    print(
        f"trained {args.network}: {train['epochs']} epochs in {train['train_seconds']:.0f} s "
        f"(best val loss {train['best_val_loss']:.4f})"
    )

    def evaluate(out: str, calibrated: bool) -> tuple[dict, str, dict]:
        ev = evaluate_clusters(
            stores["test"],
            [train["model_dir"]],
            work / out,
            noise=args.noise,
            seed=args.seed + 2,
            device=args.device,
            apply_calibration=calibrated,
        )
        cnn = next(k for k in ev["conditions"][args.noise]["methods"] if k.startswith("cnn:"))
        return ev, cnn, _goals(ev, args, cnn)

    calibration = None
    if args.n_calibration > 0:
        _, _, goals_raw = evaluate("eval_uncalibrated", False)
        cal = calibrate_clusters(
            train["model_dir"], stores["calibration"], noise=args.noise, seed=args.seed + 4,
            device=args.device,
        )  # fmt: skip
        calibration = {
            "n": cal["n"],
            "labels": list(cal["calibration"].knots),
            "median_bias_on_calibration_set_before": cal["median_bias_before"],
            "median_bias_on_calibration_set_after": cal["median_bias_after"],
            "goals_without_calibration": goals_raw,
        }
        print("median bias on the calibration set after:", cal["median_bias_after"])
    ev, cnn, goals = evaluate("eval", True)
    cond = ev["conditions"][args.noise]
    fit = cond["methods"]["nfw-tangential-fit"]
    cnn_m = cond["methods"][cnn]
    print(f"CNN maps/s (inference): {cnn_m['maps_per_s']:.1f}; fit maps/s: {fit['maps_per_s']:.1f}")
    print(json.dumps(goals, indent=1))
    record = {
        "benchmark": "clusters_accuracy",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": _machine(),
        "device": args.device,
        "config": {**vars(args), "generator_config": gen_cfg, "fit_on": "native maps"},
        "throughput": {
            "simulated_clusters_per_s": sim_rate,
            "simulated_clusters_per_s_size": args.size,
            "simulated_clusters_per_s_512": rate_512,
            "cnn_maps_per_s": cnn_m["maps_per_s"],
            "cnn_train_maps_per_s": train["train_maps_per_s"],
            "fit_maps_per_s": fit["maps_per_s"],
        },
        "training": {
            k: train.get(k)
            for k in (
                "epochs",
                "best_val_loss",
                "final_val_loss",
                "stopped_early",
                "train_seconds",
                "n_train",
                "n_val",
                "input_size",
                "downsample",
            )
        },
        "timings_s": {**timings, "total": time.perf_counter() - t_start},
        "goals": goals,
        "median_calibration": calibration,
        "evaluation": json.loads(Path(ev["json"]).read_text()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, record)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
