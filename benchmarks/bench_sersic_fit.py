"""Benchmark: lensml's batched ``sersic-fit`` against AstroPhot on the same Sérsic stamps.

Stamps come from the ``sersic`` generator (KiDS r preset, GaLNet Table-1 priors, S/N > 50,
61 × 61 at 0.2″, 25 × 25 PSFs); neighbours and stars are switched off by default because
neither fitter masks them (``--neighbours`` keeps the generator's defaults). If the generator
is not importable, stamps are rendered here from the same priors with
:func:`lensml.physics.stamps.render_sersic_stamps` and Gaussian noise of the expected variance.

Protocol, on ``--threads`` torch threads for both codes (both run on torch; default 1: on the
shared 2-core machine, loaded by other jobs, 2 threads per process made lensml 2.5× slower
than 1 — measured 4.3 against 11.3 galaxies/s — and AstroPhot 5× slower):

* lensml: one untimed warm-up fit of 8 stamps, then all ``--n-lensml`` stamps in one call
  (batched in chunks of 256); galaxies per second = N / wall time.
* AstroPhot 0.18: one untimed warm-up fit (its first fit compiles), then ``--n-astrophot``
  stamps one by one (``TargetImage`` with the variance map and the PSF image, a
  ``"sersic galaxy model"`` initialised by AstroPhot, ``ap.fit.LM``); galaxies per second
  = n / total wall time.
* lensml again on just those ``--n-astrophot`` stamps (small-batch rate), and the two fits
  compared parameter by parameter in units of their combined 1σ errors.

Printed: a table of rates and the throughput ratio; written: ``--out`` (JSON with the
machine, load averages, settings and every number). Usage::

    python benchmarks/bench_sersic_fit.py [--n-lensml 256] [--n-astrophot 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "sersic_fit.json"
LABELS = ("x", "y", "mag", "r_eff", "q", "pa", "n")


def _stamps(n: int, seed: int, neighbours: bool) -> dict:
    """``image, psf, variance, labels, zeropoint, exptime, pixel_scale, source`` for n items."""
    rng = torch.Generator().manual_seed(seed)
    try:
        from lensml.sims.sersic import SersicGenerator
    except ImportError:
        return _simple_stamps(n, rng)
    gen = SersicGenerator()
    extra = {} if neighbours else {"neighbour_density": 0.0, "close_companion_prob": 0.0}
    if not neighbours:
        extra["star_density"] = 0.0
    cfg = gen.Config(**extra)
    out = gen.generate(n, rng, cfg)
    names = gen.aux_names(cfg)
    aux = out["aux"].double()
    return {
        "image": out["image"],
        "psf": out["psf"],
        "variance": out["variance"],
        "labels": out["labels"].double(),
        "zeropoint": aux[:, names.index("zeropoint")],
        "exptime": aux[:, names.index("exptime")],
        "pixel_scale": gen.pixel_scale(cfg),
        "source": "lensml.sims.sersic (KiDS preset" + (")" if neighbours else ", no neighbours)"),
    }


def _simple_stamps(n: int, rng: torch.Generator) -> dict:
    """Fallback: Table-1-like priors, Moffat PSFs, sky + Poisson-like Gaussian noise."""
    from lensml.physics.grids import PixelGrid
    from lensml.physics.psf import moffat_psf
    from lensml.physics.stamps import render_sersic_stamps

    f64 = torch.float64

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=rng, dtype=f64)

    log_r = (-0.1 + 0.4 * torch.randn(n, generator=rng, dtype=f64)).clamp(math.log10(0.2), 0.6)
    labels = torch.stack(
        [u(-0.3, 0.3), u(-0.3, 0.3), u(17, 21), 10**log_r, u(0.2, 1), u(0, 180), u(0.5, 6)], 1
    )
    fwhm = (0.7 + 0.11 * torch.randn(n, generator=rng, dtype=f64)).clamp(0.45, 1.0)
    psf = moffat_psf(fwhm, 3.0, 25, 0.2, dtype=f64)
    psf = psf / psf.sum((-2, -1), keepdim=True)
    zp = torch.full((n,), 30.0, dtype=f64)
    model = render_sersic_stamps(
        PixelGrid.square(61, 0.2), r_eff=labels[:, 3], n=labels[:, 6], q=labels[:, 4],
        phi=torch.deg2rad(labels[:, 5]), x0=labels[:, 0], y0=labels[:, 1],
        flux=10 ** (-0.4 * (labels[:, 2] - zp)), psf=psf, dtype=f64,
    )  # fmt: skip
    var = 25.0 + model.clamp_min(0)
    image = model + var.sqrt() * torch.randn(model.shape, generator=rng, dtype=f64)
    return {
        "image": image.float(), "psf": psf.float(), "variance": var.float(), "labels": labels,
        "zeropoint": zp, "exptime": torch.ones(n, dtype=f64), "pixel_scale": 0.2,
        "source": "render_sersic_stamps + Gaussian noise (fallback)",
    }  # fmt: skip


def _lensml_fit(data: dict, sl: slice):
    from lensml.baselines.sersic_fit import SersicFit

    return SersicFit()(
        data["image"][sl], data["psf"][sl], data["variance"][sl],
        pixel_scale=data["pixel_scale"], zeropoint=data["zeropoint"][sl],
        exptime=data["exptime"][sl],
    )  # fmt: skip


def _astrophot_fit(ap, data: dict, i: int) -> tuple[np.ndarray, np.ndarray, str]:
    """AstroPhot fit of stamp i → (values, errors) in LABELS columns and its message."""
    ps = data["pixel_scale"]
    zp, et = float(data["zeropoint"][i]), float(data["exptime"][i])
    size = data["image"].shape[-1]
    target = ap.TargetImage(
        data=data["image"][i, 0].double().numpy(), variance=data["variance"][i, 0].double().numpy(),
        pixelscale=ps, zeropoint=zp,
        psf=ap.PSFImage(data=data["psf"][i, 0].double().numpy()),
    )  # fmt: skip
    model = ap.Model(name=f"galaxy{i}", model_type="sersic galaxy model", target=target)
    model.initialize()
    result = ap.fit.LM(model, verbose=0).fit()
    off = (size - 1) / 2 * ps  # AstroPhot's plane origin: centre of pixel (0, 0)
    cx, cy = (float(v) for v in model.center.value)
    flux, dflux = float(model.total_flux()), float(model.total_flux_uncertainty())
    vals = [
        cx - off, cy - off, zp - 2.5 * math.log10(flux / et), float(model.Re.value),
        float(model.q.value), (math.degrees(float(model.PA.value)) - 90.0) % 180.0,
        float(model.n.value),
    ]  # fmt: skip
    errs = [
        float(model.center.uncertainty[0]), float(model.center.uncertainty[1]),
        2.5 / math.log(10) * dflux / flux, float(model.Re.uncertainty),
        float(model.q.uncertainty), math.degrees(float(model.PA.uncertainty)),
        float(model.n.uncertainty),
    ]  # fmt: skip
    return np.array(vals), np.array(errs), str(result.message)


def _accuracy(res, labels: torch.Tensor) -> dict:
    err = res.params - labels
    err[:, 5] = (err[:, 5] + 90.0) % 180.0 - 90.0
    pull = (err / res.errors)[res.converged]
    nmad = 1.4826 * (pull - pull.median(0).values).abs().median(0).values
    return {
        "converged_fraction": float(res.converged.double().mean()),
        "at_bound_fraction": float(res.at_bound.double().mean()),
        "mean_iterations": float(res.n_iter.double().mean()),
        "median_abs_error": {
            k: float(v) for k, v in zip(LABELS, err.abs().median(0).values, strict=True)
        },
        "pull_nmad": {k: float(v) for k, v in zip(LABELS, nmad, strict=True)},
        "median_reduced_chi2": float(res.reduced_chi2.median()),
        "median_reduced_chi2_reff": float(res.reduced_chi2_reff.nanmedian()),
    }


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-lensml", type=int, default=256, help="stamps fitted by lensml")
    parser.add_argument("--n-astrophot", type=int, default=5, help="stamps fitted by AstroPhot")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--neighbours", action="store_true", help="keep generator neighbours")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from lensml.bench._harness import machine_info

    n_ap = min(args.n_astrophot, args.n_lensml)
    data = _stamps(args.n_lensml + 1, args.seed, args.neighbours)  # +1: AstroPhot warm-up
    load_before = _load()
    _lensml_fit(data, slice(0, 8))  # warm-up
    t0 = time.perf_counter()
    res = _lensml_fit(data, slice(0, args.n_lensml))
    t_lensml = time.perf_counter() - t0
    t0 = time.perf_counter()
    _lensml_fit(data, slice(0, n_ap))
    t_small = time.perf_counter() - t0

    astro: dict = {"skipped": None}
    try:
        import astrophot as ap
    except Exception as exc:  # not installed or broken
        astro = {"skipped": f"astrophot not importable: {type(exc).__name__}: {exc}"}
    if astro["skipped"] is None:
        _astrophot_fit(ap, data, args.n_lensml)  # warm-up on the extra stamp, untimed
        times, rows, messages = [], [], []
        for i in range(n_ap):
            t0 = time.perf_counter()
            vals, errs, msg = _astrophot_fit(ap, data, i)
            times.append(time.perf_counter() - t0)
            ours, ours_err = res.params[i].numpy(), res.errors[i].numpy()
            diff = ours - vals
            diff[5] = (diff[5] + 90.0) % 180.0 - 90.0
            rows.append(diff / np.sqrt(ours_err**2 + errs**2))
            messages.append(msg)
        z = np.array(rows)
        astro = {
            "version": ap.__version__,
            "seconds_per_galaxy": [round(t, 4) for t in times],
            "galaxies_per_s": n_ap / sum(times),
            "median_seconds_per_galaxy": float(np.median(times)),
            "messages": messages,
            "lensml_minus_astrophot_over_combined_sigma": {
                k: [round(float(v), 3) for v in z[:, j]] for j, k in enumerate(LABELS)
            },
            "max_abs_combined_sigma": float(np.abs(z).max()),
        }
    rate = args.n_lensml / t_lensml
    out = {
        "schema": 1,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "load_average_1min_before": load_before},
        "settings": {
            "n_lensml": args.n_lensml,
            "n_astrophot": n_ap,
            "threads": args.threads,
            "seed": args.seed,
            "stamps": data["source"],
            "stamp_size": data["image"].shape[-1],
            "psf_size": data["psf"].shape[-1],
            "pixel_scale": data["pixel_scale"],
        },
        "lensml": {
            "seconds": t_lensml,
            "galaxies_per_s": rate,
            "small_batch_galaxies_per_s": n_ap / t_small,
            **_accuracy(res, data["labels"][: args.n_lensml]),
        },
        "astrophot": astro,
    }
    if astro.get("galaxies_per_s"):
        out["ratio_lensml_over_astrophot"] = rate / astro["galaxies_per_s"]
        out["ratio_small_batch_over_astrophot"] = (n_ap / t_small) / astro["galaxies_per_s"]
        # AstroPhot's time varies ×20 between stamps (fits that hit its iteration limit are
        # the slow ones): the ratio of typical times is given too
        out["ratio_lensml_over_astrophot_median"] = astro["median_seconds_per_galaxy"] * rate
    _print(out)
    _write(out, args.out)
    return out


def _print(out: dict) -> None:
    m, lm, ap_ = out["machine"], out["lensml"], out["astrophot"]
    print(f"\nsersic-fit benchmark — {out['settings']['stamps']}")
    print(f"{m['cpu_model']}, {m['cores']} cores, {m['torch_threads']} torch threads, "
          f"load {m['load_average_1min_before']} → {m['load_average_1min']}")  # fmt: skip
    print(f"{'fitter':<34}{'galaxies':>9}{'gal/s':>10}{'s/gal':>10}")
    n = out["settings"]["n_lensml"]
    print(f"{'lensml sersic-fit (batched)':<34}{n:>9}{lm['galaxies_per_s']:>10.2f}"
          f"{1 / lm['galaxies_per_s']:>10.4f}")  # fmt: skip
    k = out["settings"]["n_astrophot"]
    small = lm["small_batch_galaxies_per_s"]
    print(f"{'lensml sersic-fit (same few)':<34}{k:>9}{small:>10.2f}{1 / small:>10.4f}")
    if ap_.get("galaxies_per_s"):
        r = ap_["galaxies_per_s"]
        print(f"{'AstroPhot ' + ap_['version'] + ' LM':<34}{k:>9}{r:>10.2f}{1 / r:>10.4f}")
        ratio, few = out["ratio_lensml_over_astrophot"], out["ratio_small_batch_over_astrophot"]
        worst = ap_["max_abs_combined_sigma"]
        med = out["ratio_lensml_over_astrophot_median"]
        print(f"throughput ratio lensml / AstroPhot: {ratio:.1f}× (same few: {few:.1f}×; "
              f"against AstroPhot's median time: {med:.1f}×); "
              f"largest |Δ| between the two: {worst:.2f} combined σ")  # fmt: skip
    else:
        print(f"AstroPhot skipped: {ap_['skipped']}")
    print(f"lensml: converged {lm['converged_fraction']:.3f}, "
          f"{lm['mean_iterations']:.1f} LM iterations on average, "
          f"pull NMAD {', '.join(f'{k} {v:.2f}' for k, v in lm['pull_nmad'].items())}")  # fmt: skip


def _write(out: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(out, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
