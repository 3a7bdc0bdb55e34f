"""Benchmark: AstroRIM source reconstruction and lens parameters vs the parametric lens fit.

CPU small run (≈ 20 min on 2 cores by default): simulate ``--n-train`` training and
``--n-test`` held-out lenses of each of the six ``strong`` variants (v1 … v6), train
``astrorim-small`` for ``--train-seconds`` (the paper's recipe, with lr ``--lr`` and one
warm-up epoch because a CPU run lasts a few epochs), evaluate it on every held-out lens
(:func:`lensml.pipelines.strong_eval.evaluate_strong`: Table 2 per variant, θ_E errors,
σ_SIS and M(<θ_E)), and the ``lens-fit`` baseline (its default settings) on ``--fit-max``
of them, timed in the same run. The network is scored as ``lensml evaluate/predict strong``
run it by default — symmetrised, each reconstruction averaged over the image's eight mirrors
and quarter turns — and again without (``evaluation_plain``, ``goals.without_symmetrisation``).
``--evaluate-only`` re-scores the model kept in ``--keep`` without training.

Speed: the **paper-size** ``astrorim`` (T = 10) reconstructing a batch of ``--speed-batch``
96 × 96 images on ``--threads`` CPU threads (untrained weights: the cost does not depend on
them), best of ``--speed-repeats``, in ms per image, plain and symmetrised, with the ratio
to the fit's time per system; and the trained small model, plain and symmetrised.

Goals (issue 7): mean SSIM >= 0.95 (paper 0.927 ± 0.067), median |Δθ_E| / θ_E < 5 %,
<= 75 ms per image. Results: ``benchmarks/results/strong_accuracy.json`` (machine noted).

Usage::

    nice -n 5 python benchmarks/strong_accuracy.py [--n-train 150] [--train-seconds 480]
    python benchmarks/strong_accuracy.py --keep WORK --evaluate-only   # re-score WORK/run
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

RESULTS = Path(__file__).resolve().parent / "results" / "strong_accuracy.json"
VARIANTS = ("v1", "v2", "v3", "v4", "v5", "v6")


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


def _ms_per_image(net, x, repeats: int, symmetrise: bool) -> float:
    import torch

    with torch.no_grad():
        net(x[:2], symmetrise=symmetrise)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            net(x, symmetrise=symmetrise)
            best = min(best, time.perf_counter() - t0)
    return 1e3 * best / len(x)


def _speed(batch: int, repeats: int, seed: int, small_model: Path | None = None) -> dict:
    """ms per image of the paper-size AstroRIM (T = 10) on a batch of 96² images, plain and
    symmetrised (8 mirrors / quarter turns), and of the trained ``small_model`` symmetrised
    (the configuration the accuracy goals are scored with)."""
    import torch

    from lensml.train import build_network

    net = build_network("astrorim", {"core": 0.0}, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, 96, 96, generator=g)
    n_params = sum(p.numel() for p in net.parameters())
    out = {
        "network": "astrorim",
        "steps": int(net.config["steps"]),
        "parameters": n_params,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "ms_per_image": _ms_per_image(net, x, repeats, False),
        "ms_per_image_symmetrised": _ms_per_image(net, x, repeats, True),
    }
    if small_model is not None:
        from lensml.pipelines.strong_eval import load_astrorim

        small, _ = load_astrorim(small_model)
        out["small_model_ms_per_image"] = _ms_per_image(small, x, repeats, False)
        out["small_model_ms_per_image_symmetrised"] = _ms_per_image(small, x, repeats, True)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=150, help="training lenses per variant")
    p.add_argument("--n-test", type=int, default=50, help="held-out lenses per variant")
    p.add_argument("--train-seconds", type=float, default=480.0, help="training time budget")
    p.add_argument("--epochs", type=int, default=200, help="epoch cap (the budget usually ends)")
    p.add_argument(
        "--lambda-label",
        type=float,
        default=None,
        help="supervised lens-parameter weight (default: train_strong's)",
    )
    p.add_argument("--lr", type=float, default=2e-3, help="RIM learning rate")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--fit-max", type=int, default=6, help="systems fitted by lens-fit")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--speed-batch", type=int, default=16)
    p.add_argument("--speed-repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--keep", type=Path, default=None, help="keep the work directory here")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the training in --keep's run/ for another --train-seconds",
    )
    p.add_argument(
        "--evaluate-only",
        action="store_true",
        help="re-score the model kept in --keep's run/ (no training); the training record is "
        "carried over from --out",
    )
    args = p.parse_args(argv)
    if args.resume and not (args.keep and (Path(args.keep) / "run").is_dir()):
        p.error("--resume needs --keep DIR holding the earlier run (DIR/run)")
    if args.evaluate_only and not (args.keep and (Path(args.keep) / "run" / "model").is_dir()):
        p.error("--evaluate-only needs --keep DIR holding a trained run (DIR/run/model)")
    if args.evaluate_only and args.resume:
        p.error("--evaluate-only and --resume exclude each other")

    import torch

    torch.set_num_threads(args.threads)
    from lensml.data.runner import run_simulate
    from lensml.pipelines.strong import train_strong
    from lensml.pipelines.strong_eval import evaluate_strong

    t_start = time.perf_counter()
    resumed_from = _earlier_run(args.out) if args.resume else None
    earlier = _read_json(args.out) if args.evaluate_only else None
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="strong-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    try:
        train_dirs, test_dirs = [], []
        t0 = time.perf_counter()
        for k, v in enumerate(VARIANTS):
            splits = (("train", args.n_train, args.seed + k, train_dirs),
                      ("test", args.n_test, args.seed + 100 + k, test_dirs))  # fmt: skip
            for split, n, seed, dirs in splits:
                path = work / f"{split}-{v}"
                run_simulate("strong", n, path, seed, config={"variant": v}, shard_size=256,
                             progress=False)  # fmt: skip
                dirs.append(path)
        timings["simulate_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if args.evaluate_only:
            model_dir = work / "run" / "model"
            training = (earlier or {}).get("training")
        else:
            train = train_strong(
                train_dirs, "astrorim-small", work / "run", args.epochs, lr=args.lr,
                batch_size=args.batch_size, seed=args.seed, warmup_epochs=1,
                time_budget_s=args.train_seconds, resume=args.resume,
                **({} if args.lambda_label is None else {"lambda_label": args.lambda_label}),
                device=None if args.device == "cpu" else args.device, progress=False,
            )  # fmt: skip
            model_dir = train["model_dir"]
            training = {k: train[k] for k in _TRAINING_KEYS} | {
                "network": "astrorim-small", "gpu_run": False}  # fmt: skip
            timings["train_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ev = evaluate_strong(
            test_dirs, model_dir, work / "eval", fit_max=args.fit_max, seed=args.seed,
            device=args.device, print_table=True, symmetrise=True,
        )  # fmt: skip
        timings["evaluate_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain = evaluate_strong(
            test_dirs, model_dir, work / "eval-plain", include_fit=False, seed=args.seed,
            device=args.device, plots=False, print_table=False, symmetrise=False,
        )  # fmt: skip
        timings["evaluate_plain_s"] = time.perf_counter() - t0
        speed = _speed(args.speed_batch, args.speed_repeats, args.seed, model_dir)
        rim_all = ev["source_metrics"]["astrorim"]["all"]
        fit_s = ev["timing"].get("fit_s_per_system")
        speed["fit_s_per_system"] = fit_s
        speed["speedup_vs_fit"] = None if not fit_s else 1e3 * fit_s / speed["ms_per_image"]
        median_te = ev["lens"]["astrorim"]["b_rel"]["median"]
        goals = {
            "scored_with": "astrorim-small, symmetrised (8 mirrors / quarter turns, the "
                           "evaluate/predict default)",
            "mean_ssim_ge_0.95": {"value": rim_all["ssim"]["mean"],
                                  "met": rim_all["ssim"]["mean"] >= 0.95},
            "median_theta_e_error_lt_5pct": {"value": median_te, "met": median_te < 0.05},
            "ms_per_image_le_75": {"value": speed["ms_per_image"],
                                   "met": speed["ms_per_image"] <= 75.0,
                                   "what": "paper-size astrorim, T = 10, plain"},
            "without_symmetrisation": {
                "mean_ssim": plain["source_metrics"]["astrorim"]["all"]["ssim"]["mean"],
                "median_theta_e_error": plain["lens"]["astrorim"]["b_rel"]["median"],
            },
        }  # fmt: skip
        result = {
            "benchmark": "strong_accuracy",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": _machine(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "training": training,
            "evaluation": {k: ev[k] for k in _EVAL_KEYS},
            "evaluation_plain": {k: plain[k] for k in _EVAL_KEYS if k in plain},
            "resumed_from": resumed_from
            if not args.evaluate_only
            else (earlier or {}).get("resumed_from"),
            "speed": speed,
            "goals": goals,
            "timings_s": timings,
            "total_s": time.perf_counter() - t_start,
        }
        if args.evaluate_only and earlier is not None:
            result["evaluated_again"] = {
                "note": "--evaluate-only: the model of the run recorded under 'training', "
                "re-scored",
                "earlier_created": earlier.get("created"),
                "earlier_args": earlier.get("args"),
                "earlier_goals": earlier.get("goals"),
            }
            for key in _CARRIED_KEYS:  # written by hand after a run: kept, not re-measured
                if key in earlier:
                    result[key] = earlier[key]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(_safe(result), indent=1), encoding="utf-8")
        tmp.replace(args.out)
        print(json.dumps(_safe({"goals": goals, "speed": speed, "timings_s": timings}), indent=1))
        return result
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


_TRAINING_KEYS = ("epochs", "global_step", "n_train", "n_val", "best_val_loss",
                  "final_train_loss", "pairs_per_s", "network_config")  # fmt: skip
#: Top-level entries of an earlier results file that ``--evaluate-only`` carries over.
_CARRIED_KEYS = ("previous_shipped_model", "note")
_EVAL_KEYS = ("n", "symmetrised", "variants", "source_metrics", "lens", "forward", "timing",
              "fit")  # fmt: skip


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _earlier_run(path: Path) -> dict | None:
    """What the results JSON at ``path`` says of the run that ``--resume`` continues."""
    old = _read_json(path)
    if old is None:
        return None
    earlier = old.get("resumed_from")
    return {
        "created": old.get("created"),
        "train_seconds": old["args"]["train_seconds"] + (earlier or {}).get("train_seconds", 0),
        "global_step": old["training"]["global_step"],
        "epochs": old["training"]["epochs"],
        "mean_ssim": old["goals"]["mean_ssim_ge_0.95"]["value"],
        "median_theta_e_error": old["goals"]["median_theta_e_error_lt_5pct"]["value"],
    }


def _safe(obj):
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    return obj


if __name__ == "__main__":
    main()
