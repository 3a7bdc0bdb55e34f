"""Benchmark: the CNN shear estimator vs KSB and REGAUSS on the same held-out stamps (issue 6).

CPU run (defaults aim at ≲ 25 min on 2 shared cores):

1. measure the ``shear`` generator's speed (recorded; ``--n-train auto`` sizes the training
   store to ``--gen-budget-s`` with it — the rate swings by 2–3× with the load of a shared
   machine, so the default is a fixed 24k), simulate the training store, a matched held-out
   test store (``--n-test``) and, for the centroid test, one store per offset range
   (``--shift-ranges``, in units of the galaxy half-light radius) that re-renders **the same
   galaxies** (same seed: same galaxies, shears and noise realisations; only the post-shear
   offset differs);
2. train ``shear-cnn`` (the paper's) and ``shear-resnet`` (lensml's preset; on CPU only a short
   run on ``--resnet-items`` stamps), each post-processed (last-layer refit, symmetrisation,
   m/c calibration) by :func:`lensml.pipelines.shear.train_shear`;
3. evaluate every CNN, KSB and REGAUSS on the test store with one calibration / test split
   (:func:`lensml.pipelines.shear_eval.evaluate_shear`): Table 4 analogue, Figs. 10–12, the
   effect of symmetrisation and the speeds (stamps/s) measured in the same run;
4. centroid sensitivity (the paper's Fig. 11 experiment): every method, calibrated once with the
   m, c of step 3, scored on the same galaxies with offsets of total extent 0 and ``r`` Reff
   (r = 1.0: shifts up to ±0.5 Reff per axis).

Goals (issue 6): calibrated CNN RMS ≤ 0.85 × KSB's and ≤ 0.85 × REGAUSS's; |m| < 0.01 and
|c| < 1e-3 after calibration; symmetrisation lowers the RMS; the CNN far less sensitive than the
moment methods to centroid shifts (its relative RMS increase less than half theirs); CNN with
symmetrisation at least as fast as KSB. Results: ``benchmarks/results/shear_accuracy.json``
(with the machine: CPU count, torch threads, load averages at start and end) and the trained
``shear-cnn`` model directory in ``benchmarks/results/shear_models/shear-cnn/`` (0.5 MB).

Usage::

    python benchmarks/shear_accuracy.py [--n-train 24000|auto] [--n-test 4000] [--epochs 12]
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

RESULTS = Path(__file__).resolve().parent / "results" / "shear_accuracy.json"


def _machine() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "load_average_start": list(os.getloadavg()),
    }


def _gen_rate(work: Path, n: int, seed: int, workers: int) -> float:
    """Stamps per second of the ``shear`` generator through the simulate runner."""
    _simulate(work / "rate_warmup", 16, seed, None, 1)
    seconds = _simulate(work / "rate", n, seed + 1, None, workers)
    shutil.rmtree(work / "rate", ignore_errors=True)
    shutil.rmtree(work / "rate_warmup", ignore_errors=True)
    return n / seconds


def _simulate(out: Path, n: int, seed: int, config: dict | None, workers: int) -> float:
    from lensml.data.runner import run_simulate

    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    run_simulate("shear", n, out, seed, config=config, shard_size=1024, workers=workers,
                 progress=False, backend="processes")  # fmt: skip
    return time.perf_counter() - t0


def _rms_fixed_calibration(g, ok, truth, cal) -> dict:
    """RMS per component of ``cal``-calibrated estimates over the ok rows (plus failures)."""
    import numpy as np

    use = ok & np.isfinite(g).all(axis=1)
    d = cal.apply(g[use]) - truth[use]
    rms = np.sqrt(np.mean(d**2, axis=0))
    err = np.sqrt(np.var(d**2, axis=0) / max(1, d.shape[0])) / (2 * rms)
    return {"sigma": rms.tolist(), "sigma_err": err.tolist(), "sigma_mean": float(rms.mean()),
            "n": int(use.sum()), "n_failed": int((~use).sum())}  # fmt: skip


def _centroid_test(stores: dict, models: dict, ev: dict, moments_workers: int) -> dict:
    """Every method on the same galaxies at each offset range, with the calibration of ``ev``."""
    import numpy as np

    from lensml.baselines.moments import measure_moments_shear
    from lensml.pipelines.shear import inspect_shear_store, load_shear_estimator, read_shear_arrays
    from lensml.pipelines.shear_calibration import AffineCalibration

    cals = {k: AffineCalibration.from_dict(v["calibration"]) for k, v in ev["methods"].items()}
    out: dict = {"ranges": {}}
    ests = {label: load_shear_estimator(path) for label, path in models.items()}
    for rng_value, store in stores.items():
        info = inspect_shear_store(store)
        arr = read_shear_arrays(info, ["image", "labels", "psf", "aux"])
        truth = arr["labels"].double().numpy()
        aux = arr["aux"].double().numpy()
        sky = aux[:, info.aux_names.index("noise_sigma")] ** 2
        img = arr["image"]
        row: dict = {}
        for label, est in ests.items():
            g = est.predict(img, calibrate=False)
            row[label] = _rms_fixed_calibration(g, np.ones(len(g), bool), truth, cals[label])
        psf = arr["psf"].double().numpy()[:1]
        for m in ("ksb", "regauss"):
            if m in cals:
                res = measure_moments_shear(img.double().numpy(), psf, m, sky, nan_policy="flag",
                                            n_workers=moments_workers)  # fmt: skip
                row[m] = _rms_fixed_calibration(res.g, res.ok, truth, cals[m])
        out["ranges"][str(rng_value)] = row
    keys = sorted(stores, key=float)
    lo, hi = str(keys[0]), str(keys[-1])
    rel = {
        k: out["ranges"][hi][k]["sigma_mean"] / out["ranges"][lo][k]["sigma_mean"] - 1.0
        for k in out["ranges"][lo]
    }
    out["relative_rms_increase"] = {"from_range": float(lo), "to_range": float(hi), **rel}
    return out


GOALS_RULES = 2  # version of the rules in _goals (1: the first run's, see the results file)


def _goals(ev: dict, centroid: dict, models: list[str]) -> dict:
    """The issue's goals from the stored measurements, judged on the paper's network.

    ``per_network`` gives the RMS ratios and the symmetrised speed ratio of every trained CNN
    (lensml's ``shear-resnet`` too) on the same stamps.

    A goal whose test is not decisive at the run's size is reported as None with a note, never
    as met: |m| < 0.01 and |c| < 1e-3 need errors well below those bounds; "the CNN is far less
    sensitive to centroid shifts" needs the moment methods to be sensitive (an RMS increase
    larger than twice its error) in the first place.
    """
    import math

    cnn = "cnn:shear-cnn" if "cnn:shear-cnn" in ev["methods"] else next(iter(models), None)
    goals: dict = {"rules_version": GOALS_RULES, "judged_network": cnn}
    if cnn is None:
        return goals
    s_cnn = ev["methods"][cnn]["table4"]["sigma_mean"]
    for m in ("ksb", "regauss"):
        ratio = s_cnn / ev["methods"][m]["table4"]["sigma_mean"]
        goals[f"rms_ratio_cnn_over_{m}"] = ratio
        goals[f"rms_goal_vs_{m}_met"] = bool(ratio <= 0.85)
    # every trained CNN on the same stamps (the paper's network is the one judged above)
    per: dict = {}
    for k in [k for k in ev["methods"] if k.startswith("cnn:")]:
        sig = ev["methods"][k]["table4"]["sigma_mean"]
        per[k] = {f"rms_ratio_over_{m}": sig / ev["methods"][m]["table4"]["sigma_mean"]
                  for m in ("ksb", "regauss")}  # fmt: skip
        per[k]["speed_sym_over_ksb"] = ev["speed"].get(k + "+sym", math.nan) / ev["speed"]["ksb"]
        worst = max(per[k]["rms_ratio_over_ksb"], per[k]["rms_ratio_over_regauss"])
        per[k]["rms_goals_met"] = bool(worst <= 0.85)
        common = ev.get("common", {}).get("methods", {})
        if k in common:  # exactly the same stamps: those every method measured
            per[k]["common_stamps"] = ev["common"]["n"]
            for m in ("ksb", "regauss"):
                a, b = common[k], common[m]
                r = a["sigma_mean"] / b["sigma_mean"]
                # error of a mean of two components' σ, propagated (independent: conservative)
                ea = 0.5 * math.hypot(*a["sigma_err"]) / a["sigma_mean"]
                eb = 0.5 * math.hypot(*b["sigma_err"]) / b["sigma_mean"]
                per[k][f"common_rms_ratio_over_{m}"] = r
                per[k][f"common_rms_ratio_over_{m}_err"] = r * math.hypot(ea, eb)
            worst = max(per[k]["common_rms_ratio_over_ksb"],
                        per[k]["common_rms_ratio_over_regauss"])  # fmt: skip
            per[k]["common_rms_goals_met"] = bool(worst <= 0.85)
    goals["per_network"] = per
    resid = ev["methods"][cnn]["residual_after_calibration"]
    goals["after_calibration"] = resid
    for key, bound in (("m", 0.01), ("c", 1e-3)):
        vals, errs = resid[key], resid[f"{key}_err"]
        goals[f"{key}_consistent_with_zero_2sigma"] = [
            bool(abs(v) < 2 * e) for v, e in zip(vals, errs, strict=True)
        ]
        if max(errs) < 0.5 * bound:
            goals[f"{key}_goal_met"] = bool(all(abs(v) < bound for v in vals))
        else:
            goals[f"{key}_goal_met"] = None
            goals[f"{key}_note"] = (
                f"not testable at this size: error {max(errs):.2g} vs the bound {bound:g}"
            )
    # the same galaxies for every method: a shape-noise fluctuation of the test split shows up
    # as the same residual c in all of them
    goals["residual_c_all_methods"] = {
        k: v["residual_after_calibration"]["c"] for k, v in ev["methods"].items()
    }
    sym = ev["symmetrisation"].get(cnn, {})
    goals["symmetrisation_relative_rms_change"] = sym.get("relative_change")
    goals["symmetrisation_lowers_rms"] = sym.get("lowers_rms")
    rel = dict(centroid["relative_rms_increase"])
    lo, hi = str(rel.pop("from_range")), str(rel.pop("to_range"))
    rows = centroid["ranges"]

    def change(k: str) -> tuple[float, float]:
        a, b = rows[lo][k], rows[hi][k]
        err = [0.5 * math.hypot(*r["sigma_err"]) for r in (a, b)]
        return b["sigma_mean"] - a["sigma_mean"], math.hypot(*err)

    detail = {k: {"relative_increase": rel[k], "delta_sigma": change(k)[0],
                  "delta_sigma_err": change(k)[1]} for k in rel}  # fmt: skip
    goals["centroid"] = {"from_range_reff": float(lo), "to_range_reff": float(hi), **detail}
    sensitive = [m for m in ("ksb", "regauss") if m in detail
                 and detail[m]["delta_sigma"] > 2 * detail[m]["delta_sigma_err"]]  # fmt: skip
    if sensitive:
        goals["centroid_goal_met"] = bool(all(rel[cnn] < 0.5 * rel[m] for m in sensitive))
    else:
        goals["centroid_goal_met"] = None
        goals["centroid_note"] = (
            "not testable: the moment methods are not sensitive to these shifts either (GalSim "
            "HSM iterates its own centroid, unlike the paper's RRG at a fixed SExtractor "
            "centroid); every change is within 2 sigma"
        )
    speed = ev["speed"]
    goals["speed_cnn_sym_over_ksb"] = speed[cnn + "+sym"] / speed["ksb"]
    goals["speed_cnn_over_ksb"] = speed[cnn] / speed["ksb"]
    goals["speed_goal_met"] = bool(goals["speed_cnn_sym_over_ksb"] >= 1.0)
    return goals


def recompute_goals(path: Path) -> dict:
    """Rewrite the goals of a results file from its stored measurements (no new run)."""
    from lensml.data.store import write_json_atomic

    record = json.loads(path.read_text())
    record["goals_first_rules"] = record.get("goals_first_rules", record["goals"])
    record["goals"] = _goals(record["evaluation"], record["centroid_test"],
                             list(record["evaluation"]["models"]))  # fmt: skip
    record["goals_recomputed"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json_atomic(path, record)
    return record["goals"]


def _reuse(args: argparse.Namespace, work: Path, previous: dict, timings: dict) -> tuple:
    """``--evaluate-only``: the trained models of ``work`` and the earlier run's record."""
    cfg = previous.get("config", {})
    timings.update({k: v for k, v in previous.get("timings_s", {}).items()
                    if k.startswith(("simulate", "train"))})  # fmt: skip
    models = {}
    for net in [x.strip() for x in args.networks.split(",") if x.strip()]:
        model = work / f"run_{net}" / "model"
        if not model.is_dir():
            raise SystemExit(f"--evaluate-only: no trained model {model}")
        models[f"cnn:{net}"] = str(model)
    return (cfg.get("n_train"), cfg.get("generator_rate_stamps_per_s"), models,
            previous.get("training", {}))  # fmt: skip


def _simulate_and_train(
    args: argparse.Namespace, work: Path, shift_stores: dict, timings: dict
) -> tuple:
    """Simulate the stores (training, test, one per offset range) and train the networks."""
    import numpy as np

    from lensml.pipelines.shear import train_shear

    # one in-process worker: a short pool run is dominated by its start-up (~10 s of imports)
    rate = _gen_rate(work, 512, args.seed + 99, 1)
    if str(args.n_train).lower() == "auto":
        n_train = int(np.clip(rate * args.gen_budget_s, args.n_min, args.n_max))
    else:
        n_train = int(args.n_train)
    print(f"generator: {rate:.1f} stamps/s (one process) → n_train = {n_train}", flush=True)
    timings["simulate_train_s"] = _simulate(work / "train", n_train, args.seed, None, args.workers)
    timings["simulate_test_s"] = _simulate(work / "test", args.n_test, args.seed + 1, None,
                                           args.workers)  # fmt: skip
    for r, store in shift_stores.items():
        cfg = {"offset_unit": "hlr", "offset_range": r}
        timings[f"simulate_shift_{r:g}_s"] = _simulate(store, args.n_shift, args.seed + 2, cfg,
                                                       args.workers)  # fmt: skip
    n_sim = n_train + args.n_test + args.n_shift * len(shift_stores)
    sim_s = sum(v for k, v in timings.items() if k.startswith("simulate"))
    print(f"simulated {n_sim} stamps in {sim_s:.0f} s ({n_sim / sim_s:.1f}/s)", flush=True)

    models, training = {}, {}
    for net in [x.strip() for x in args.networks.split(",") if x.strip()]:
        resnet = net != "shear-cnn"
        run = work / f"run_{net}"
        if run.exists():
            shutil.rmtree(run)
        t0 = time.perf_counter()
        res = train_shear(
            work / "train", net, run, args.resnet_epochs if resnet else args.epochs,
            batch_size=args.batch_size, seed=args.seed, device=args.device, progress=False,
            max_items=args.resnet_items if resnet else None,
        )  # fmt: skip
        timings[f"train_{net}_s"] = time.perf_counter() - t0
        models[f"cnn:{net}"] = str(res["model_dir"])
        keep = ("epochs", "best_val_loss", "final_val_loss", "final_train_loss", "stopped_early",
                "n_train", "n_val", "n_refit", "n_calib", "train_seconds", "train_stamps_per_s",
                "n_parameters")  # fmt: skip
        training[net] = {k: res.get(k) for k in keep}
        training[net]["postprocess"] = res.get("postprocess")
        print(f"trained {net}: {training[net]['epochs']} epochs, val loss "
              f"{training[net]['best_val_loss']:.4f}, {timings[f'train_{net}_s']:.0f} s",
              flush=True)  # fmt: skip
    return n_train, rate, models, training


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", default="24000",
                    help="training stamps, or 'auto': measured rate × --gen-budget-s")  # fmt: skip
    ap.add_argument("--gen-budget-s", type=float, default=420.0,
                    help="seconds of training-set simulation (measured rate)")  # fmt: skip
    ap.add_argument("--n-min", type=int, default=6000)
    ap.add_argument("--n-max", type=int, default=100000)
    ap.add_argument("--n-test", type=int, default=4000)
    ap.add_argument("--n-shift", type=int, default=1500)
    ap.add_argument("--shift-ranges", default="0,1.0", help="offset ranges, units of Reff")
    ap.add_argument("--networks", default="shear-cnn,shear-resnet")
    ap.add_argument("--epochs", type=int, default=12, help="shear-cnn epochs")
    ap.add_argument("--resnet-epochs", type=int, default=2)
    ap.add_argument("--resnet-items", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2, help="simulation processes")
    ap.add_argument("--moments-workers", type=int, default=1)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: no OpenMP oversubscription on shared cores; 0: torch default)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--save-models", default="shear-cnn",
                    help="networks whose trained model directory is copied next to --out "
                    "(shear_models/<network>; '' for none)")  # fmt: skip
    ap.add_argument("--evaluate-only", action="store_true",
                    help="reuse --workdir's stores and trained models (no simulation or "
                    "training); the training record is carried over from --out")  # fmt: skip
    ap.add_argument("--recompute-goals", default=None, metavar="JSON",
                    help="only re-judge the goals of an existing results file")  # fmt: skip
    args = ap.parse_args()
    if args.recompute_goals:
        print(json.dumps(recompute_goals(Path(args.recompute_goals)), indent=1))
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from lensml.data.store import write_json_atomic
    from lensml.pipelines.shear_eval import evaluate_shear

    machine = _machine()
    t_start = time.perf_counter()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lensml-shear-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    timings: dict = {}
    shift_ranges = [float(r) for r in args.shift_ranges.split(",") if r.strip()]
    shift_stores = {r: work / f"shift_{r:g}" for r in shift_ranges}
    previous: dict = {}
    if args.evaluate_only:
        if args.workdir is None:
            raise SystemExit("--evaluate-only needs the --workdir of an earlier run")
        previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
        n_train, rate, models, training = _reuse(args, work, previous, timings)
    else:
        n_train, rate, models, training = _simulate_and_train(args, work, shift_stores, timings)

    t0 = time.perf_counter()
    ev = evaluate_shear(work / "test", list(models.values()), work / "eval", seed=args.seed,
                        device=args.device, moments_workers=args.moments_workers)  # fmt: skip
    timings["evaluate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    centroid = _centroid_test(shift_stores, models, ev, args.moments_workers)
    timings["centroid_test_s"] = time.perf_counter() - t0

    goals = _goals(ev, centroid, list(models))
    print(json.dumps(goals, indent=1, default=str))
    machine["load_average_end"] = list(os.getloadavg())
    record = {
        "benchmark": "shear_accuracy",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine,
        "device": args.device,
        "config": {**vars(args), "n_train": n_train, "generator_rate_stamps_per_s": rate},
        "timings_s": {**timings, "total": time.perf_counter() - t_start},
        "training": training,
        "goals": goals,
        "centroid_test": centroid,
        "evaluation": json.loads(Path(ev["json"]).read_text()),
    }
    if args.evaluate_only:
        first = previous.get("evaluated_again", {})  # re-evaluated before: keep the training run's
        record["evaluated_again"] = {
            "training_run_created": first.get("training_run_created", previous.get("created")),
            "training_run_config": first.get("training_run_config", previous.get("config")),
            "note": "evaluation re-run on the same stores and trained models; the training "
            "record and its timings are the earlier run's",
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for net in [x.strip() for x in args.save_models.split(",") if x.strip()]:
        if f"cnn:{net}" in models:
            dest = out.parent / "shear_models" / net
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(models[f"cnn:{net}"], dest)
            record.setdefault("saved_models", {})[net] = str(dest)
    write_json_atomic(out, record)
    print(f"wrote {out} ({record['timings_s']['total'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
