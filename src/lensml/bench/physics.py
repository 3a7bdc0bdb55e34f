"""``lensml bench physics``: lensml's physics kernels timed against peer codes.

Every comparison runs in one process on one machine, so only the **ratios** are meaningful
across machines. Three cases (the names accepted by ``cases``):

``strong``
    96×96 SIE + external shear lens of an elliptical Sérsic source at 0.04"/px, without
    supersampling (``strong_ss1``) and with 4×4 supersampling (``strong_ss4``). lensml renders
    a batch with random parameters per image through its fused fast path
    (:func:`lensml.physics.fused.render_sie_shear_sersic`, ``torch.compile``-d when a compiler
    works: compile time is reported as ``compile_s`` and excluded from the rates); the generic
    ``render_lensed`` is timed as a second lensml row (``lensml_generic``). lenstronomy's
    ``ImageModel`` (built once) renders one image at a time as its users do; caustics'
    ``LensSource`` simulator is timed one call at a time and ``torch.vmap``-ed over a batch.
``stamps``
    61×61 Sérsic ⊗ Moffat stamps at 0.2"/px with a random Sérsic index per stamp, vs GalSim
    ``Convolve(Sersic, Moffat).drawImage``.
``fft``
    512² convergence map → (γ1, γ2) with zero padding 2 (1024² transforms), vs the same
    Kaiser–Squires product written with ``numpy.fft`` (``fft2`` and ``rfft2``) and, for
    information, ``scipy.fft`` with all cores.

Protocol: lensml runs in float32 under ``torch.inference_mode``, peers in their native float64.
All contenders of a case are built first (untimed), make warm-up calls (untimed), then are
timed in interleaved rounds (each contender once per round, :func:`time.perf_counter`) so that
changes of machine load hit all alike. Rates are items per second of the median and the best
call; ratios are lensml's median rate over the peer's median rate from the same run. torch
uses all cores by default (``threads`` overrides; ``torch.get_num_threads()`` and the load
average are reported); numpy, lenstronomy and GalSim run single-threaded as they do by
default. A peer that is not installed is skipped with a note; GalSim gets fresh Sérsic
indices in every call (it caches tables per index). ``agreement`` entries check on one draw
that the codes render the same thing, and with the full plan ``lensml_profile`` says where
lensml's time goes.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib
import importlib.metadata
import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lensml.bench._harness import (  # noqa: F401  (re-exported for callers and tests)
    PeerMissing,
    Setup,
    _guard,
    _load,
    _print_table,
    _require,
    _skip_reason,
    _top_ops,
    _write_json,
    machine_info,
    time_interleaved,
    time_rate,
)
from lensml.bench.physics_peers import (
    FFT_N,
    FFT_PAD,
    STAMP_N,
    STAMP_SCALE,
    STRONG_N,
    STRONG_SCALE,
    _caustics_strong,
    _e1e2,
    _galsim_stamps,
    _lenstronomy_strong,
    _setup_caustics_strong,
    _setup_galsim_stamps,
    _setup_lenstronomy_strong,
    draw_stamps,
    draw_strong,
    numpy_shear_from_kappa,
    numpy_shear_from_kappa_rfft,
)

__all__ = ["CASES", "TARGETS", "run_physics_bench", "time_rate"]

SCHEMA = "lensml.bench.physics/1"
# lensml contenders of a case: the judged one first ("lensml": for ``strong`` the fused fast
# path), then, for transparency, the generic render_lensed and its torch.compile
LENSML_VARIANTS = ("lensml", "lensml_generic", "lensml_compiled")
CASES = ("strong", "stamps", "fft")
DEFAULT_OUT = Path("benchmarks/results/physics.json")
# (sub-case, peer) -> required lensml / peer speed ratio (from the issue)
TARGETS: dict[tuple[str, str], float] = {
    ("strong_ss1", "lenstronomy"): 5.0,
    ("strong_ss4", "lenstronomy"): 10.0,
    ("stamps", "galsim"): 50.0,
    ("fft", "numpy.fft2"): 2.0,
    ("fft", "numpy.rfft2"): 2.0,
}


@dataclass(frozen=True)
class Plan:
    """Iteration counts: lensml batch sizes, peer items per timed call, repeats."""

    repeats: int
    warmup: int
    batch_ss1: int
    batch_ss4: int
    batch_stamps: int
    batch_fft: int
    peer_ss1: int
    peer_ss4: int
    caustics_single: int
    caustics_vmap: int
    galsim: int
    numpy_fft: int
    profile: bool


FULL = Plan(
    repeats=7, warmup=1, batch_ss1=256, batch_ss4=64, batch_stamps=512, batch_fft=8,
    peer_ss1=100, peer_ss4=10, caustics_single=10, caustics_vmap=32, galsim=20, numpy_fft=5,
    profile=True,
)  # fmt: skip
QUICK = Plan(
    repeats=1, warmup=1, batch_ss1=4, batch_ss4=2, batch_stamps=4, batch_fft=1,
    peer_ss1=2, peer_ss4=1, caustics_single=1, caustics_vmap=2, galsim=2, numpy_fft=1,
    profile=False,
)  # fmt: skip


# ----------------------------------------------------------------------------- timing


# ----------------------------------------------------------------------------- case: strong


def _lensml_strong_params(p: dict[str, np.ndarray], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """lensml's parameters for the same draws (SIE via ``lenstronomy_to_sie``)."""
    from lensml.physics.mass.sie import lenstronomy_to_sie

    t = {k: torch.as_tensor(v, dtype=dtype) for k, v in p.items()}
    e1, e2 = (torch.as_tensor(v, dtype=dtype) for v in _e1e2(p["q_l"], p["phi_l"]))
    theta_e, q, phi = lenstronomy_to_sie(t["theta_E"], e1, e2)
    return {
        "theta_e": torch.as_tensor(theta_e, dtype=dtype).reshape(-1),
        "q": torch.as_tensor(q, dtype=dtype).reshape(-1),
        "phi": torch.as_tensor(phi, dtype=dtype).reshape(-1),
        "x0": t["x_l"],
        "y0": t["y_l"],
        "gamma1": t["gamma1"],
        "gamma2": t["gamma2"],
        "amp": t["amp"],
        "r_eff": t["R_circ"] / torch.sqrt(t["q_s"]),  # semi-major effective radius
        "n": t["n"],
        "q_s": t["q_s"],
        "phi_s": t["phi_s"],
        "x_s": t["x_s"],
        "y_s": t["y_s"],
    }


def lensml_strong_renderer(
    supersample: int, dtype: torch.dtype = torch.float32, label: bool = False
) -> Callable:
    """``render(params) -> (B, 1, 96, 96)``: the lensml side of the ``strong`` case.

    With ``label`` the deflectors and the source run inside ``torch.profiler.record_function``
    ranges named after them (for :func:`_strong_profile`).
    """
    from lensml.physics.grids import PixelGrid
    from lensml.physics.light import sersic
    from lensml.physics.mass import shear, sie
    from lensml.physics.raytrace import render_lensed

    grid = PixelGrid.square(STRONG_N, STRONG_SCALE)

    def render(t: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = {
            "sie.deflection": functools.partial(
                sie.deflection, theta_e=t["theta_e"], q=t["q"], phi=t["phi"], x0=t["x0"], y0=t["y0"]
            ),
            "shear.deflection": functools.partial(
                shear.deflection, gamma1=t["gamma1"], gamma2=t["gamma2"]
            ),
            "sersic.surface_brightness": functools.partial(
                sersic.surface_brightness,
                amp=t["amp"],
                r_eff=t["r_eff"],
                n=t["n"],
                q=t["q_s"],
                phi=t["phi_s"],
                x0=t["x_s"],
                y0=t["y_s"],
            ),
        }
        if label:
            parts = {k: _labelled(k, f) for k, f in parts.items()}
        lens = (parts["sie.deflection"], parts["shear.deflection"])
        src = parts["sersic.surface_brightness"]
        return render_lensed(grid, lens, src, supersample=supersample, dtype=dtype)

    return render


def _labelled(name: str, fn: Callable) -> Callable:
    def wrapped(*args, **kwargs):
        with torch.profiler.record_function(name):
            return fn(*args, **kwargs)

    return wrapped


def lensml_fused_renderer(
    supersample: int, dtype: torch.dtype = torch.float32, compile: bool | str = "auto"
) -> Callable:
    """``render(params) -> (B, 1, 96, 96)`` through the fused fast path
    :func:`lensml.physics.fused.render_sie_shear_sersic` (same scene as
    :func:`lensml_strong_renderer`)."""
    from lensml.physics.fused import render_sie_shear_sersic
    from lensml.physics.grids import PixelGrid

    grid = PixelGrid.square(STRONG_N, STRONG_SCALE)

    def render(t: dict[str, torch.Tensor]) -> torch.Tensor:
        lens = {k: t[k] for k in ("theta_e", "q", "phi", "x0", "y0")}
        ext = {"gamma1": t["gamma1"], "gamma2": t["gamma2"]}
        src = {"amp": t["amp"], "r_eff": t["r_eff"], "n": t["n"], "q": t["q_s"]}
        src |= {"phi": t["phi_s"], "x0": t["x_s"], "y0": t["y_s"]}
        return render_sie_shear_sersic(
            grid, lens, ext, src, supersample, compile=compile, dtype=dtype
        )

    return render


def _setup_lensml_strong(ss: int, p: dict[str, np.ndarray], variant: str = "fused") -> Setup:
    """``variant``: ``"fused"`` (the fast path, compiled when possible; compile time measured on
    the first, untimed call), ``"generic"`` (``render_lensed`` with the profile functions) or
    ``"jit"`` (``torch.compile`` of the generic render)."""

    def setup():
        t = _lensml_strong_params(p, torch.float32)
        meta = {"code": "lensml", "dtype": "float32", "batch": len(p["n"])}
        if variant == "fused":
            from lensml.physics import fused

            render = lensml_fused_renderer(ss, torch.float32)
            t0 = time.perf_counter()
            render(t)
            compiled = not fused._COMPILE_FAILED
            meta |= {
                "code": "lensml fused" + (" (torch.compile)" if compiled else " (eager)"),
                "compile_s": round(time.perf_counter() - t0, 3),
            }
            if not compiled:
                meta["note"] = f"compile failed: {fused._COMPILE_FAILED[0][:200]}"
            return functools.partial(render, t), len(p["n"]), meta
        render = lensml_strong_renderer(ss, torch.float32)
        meta["code"] = "lensml render_lensed"
        if variant == "jit":  # torch.compile of the whole generic per-batch render
            render = torch.compile(render, dynamic=False)
            t0 = time.perf_counter()
            render(t)
            meta |= {"code": "lensml render_lensed+torch.compile",
                     "compile_s": round(time.perf_counter() - t0, 3)}  # fmt: skip
        return functools.partial(render, t), len(p["n"]), meta

    return setup


def _strong_profile(ss: int, p: dict[str, np.ndarray]) -> dict:
    """Where one lensml strong render spends its time (torch.profiler, float32).

    ``functions``: inclusive CPU ms of the SIE, shear and Sérsic calls and their share of the
    whole ``render_lensed`` call (the rest is ray shooting, block means, chunking and
    validation); ``top_ops``: the torch operators with the most self time.
    """
    from torch.profiler import ProfilerActivity, profile

    render = lensml_strong_renderer(ss, torch.float32, label=True)
    t = _lensml_strong_params(p, torch.float32)
    render(t)

    def call() -> None:
        with torch.profiler.record_function("render (total)"):
            render(t)

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    totals = {e.key: e.cpu_time_total / 1e3 for e in prof.key_averages()}
    whole = totals.get("render (total)", float("nan"))
    names = ("sie.deflection", "shear.deflection", "sersic.surface_brightness", "render (total)")
    return {
        "batch": len(p["n"]),
        "functions": {
            k: {"ms": round(totals.get(k, 0.0), 3), "share": round(totals.get(k, 0.0) / whole, 3)}
            for k in names
        },
        "top_ops": _top_ops(call),
    }


def _bench_strong(plan: Plan, rng: np.random.Generator, batch: int | None, compile: bool) -> list:
    results = []
    for ss in (1, 4):
        b = batch or (plan.batch_ss1 if ss == 1 else plan.batch_ss4)
        n_peer = plan.peer_ss1 if ss == 1 else plan.peer_ss4
        n_single = plan.caustics_single if ss == 1 else max(1, plan.caustics_single // 4)
        n_vmap = plan.caustics_vmap if ss == 1 else max(1, plan.caustics_vmap // 4)
        p_lens = draw_strong(rng, b)
        p_peer = draw_strong(rng, max(n_peer, n_single, n_vmap))
        setups = {"lensml": _setup_lensml_strong(ss, p_lens, "fused")}
        setups["lensml_generic"] = _setup_lensml_strong(ss, p_lens, "generic")
        if compile:
            setups["lensml_compiled"] = _setup_lensml_strong(ss, p_lens, "jit")
        setups["lenstronomy"] = _setup_lenstronomy_strong(ss, p_peer, n_peer)
        setups["caustics"] = _setup_caustics_strong(ss, p_peer, n_single, vmap=False)
        setups["caustics vmap"] = _setup_caustics_strong(ss, p_peer, n_vmap, vmap=True)
        with torch.inference_mode():
            timed = time_interleaved(setups, plan.repeats, plan.warmup)
        res: dict[str, Any] = {
            "name": f"strong_ss{ss}",
            "unit": "img/s",
            "description": f"{STRONG_N}x{STRONG_N} SIE+shear lens, elliptical Sersic source, "
            f'{STRONG_SCALE}"/px, supersampling {ss}',
            **{k: timed.pop(k) for k in LENSML_VARIANTS if k in timed},
            "peers": timed,
        }
        if ss == 1:
            res["agreement"] = _guard("agreement", functools.partial(_strong_agreement, p_peer))
        if plan.profile:
            with torch.inference_mode():
                res["lensml_profile"] = _guard(
                    "profile", functools.partial(_strong_profile, ss, p_lens)
                )
        results.append(res)
    return results


def _strong_agreement(p: dict[str, np.ndarray]) -> dict:
    """lensml (float64) vs lenstronomy (and caustics) on one draw: max |Δ| / max |image|.

    Checks that every code renders the same lens, so the timings compare the same work.
    """
    model, kwargs = _lenstronomy_strong(1)
    one = {k: v[:1] for k, v in p.items()}
    lens, source = kwargs(one, 0)
    ref = np.asarray(model.image(kwargs_lens=lens, kwargs_source=source))
    out: dict[str, Any] = {"reference": "lenstronomy", "supersample": 1}
    with torch.inference_mode():
        img = lensml_strong_renderer(1, torch.float64)(_lensml_strong_params(one, torch.float64))
        out["lensml_max_rel_diff"] = float(np.abs(img[0, 0].numpy() - ref).max() / ref.max())
        fast = lensml_fused_renderer(1, torch.float64, compile=False)
        img = fast(_lensml_strong_params(one, torch.float64))
        out["lensml_fused_max_rel_diff"] = float(np.abs(img[0, 0].numpy() - ref).max() / ref.max())
        if importlib.util.find_spec("caustics") is not None:
            sim, matrix = _caustics_strong(1)
            sb = sim(matrix(one)[0]).numpy() * STRONG_SCALE**2  # caustics returns flux/arcsec²
            out["caustics_max_rel_diff"] = float(np.abs(sb - ref).max() / ref.max())
    return out


# ----------------------------------------------------------------------------- case: fft
def _lensml_shear(kappa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import inspect

    from lensml.physics.fft_lensing import shear_from_kappa

    if "pixel_scale" in inspect.signature(shear_from_kappa).parameters:
        return shear_from_kappa(kappa, pixel_scale=0.1, pad_factor=FFT_PAD)
    return shear_from_kappa(kappa, pad_factor=FFT_PAD)


def _kappa_maps(rng: np.random.Generator, b: int) -> np.ndarray:
    """``(b, 512, 512)`` smooth positive convergence maps: a few random elliptical blobs."""
    y, x = np.mgrid[:FFT_N, :FFT_N] / FFT_N
    maps = np.zeros((b, FFT_N, FFT_N))
    for i in range(b):
        for _ in range(5):
            cx, cy, w = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.02, 0.1)
            maps[i] += rng.uniform(0.1, 0.5) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * w**2))
    return maps + 0.01 * rng.standard_normal((b, FFT_N, FFT_N))


def _setup_fft(label: str, maps: np.ndarray) -> Setup:
    def setup():
        if label == "lensml":
            k = torch.as_tensor(maps, dtype=torch.float32)
            return functools.partial(_lensml_shear, k), len(maps), {"code": "lensml",
                                                                    "dtype": "float32",
                                                                    "batch": len(maps)}  # fmt: skip
        if label == "numpy.fft2":
            fn = functools.partial(numpy_shear_from_kappa, pad_factor=FFT_PAD)
        elif label == "numpy.rfft2":
            fn = functools.partial(numpy_shear_from_kappa_rfft, pad_factor=FFT_PAD)
        else:
            sfft = _require("scipy.fft")
            fn = functools.partial(numpy_shear_from_kappa_rfft, pad_factor=FFT_PAD, fft=sfft,
                                   workers=-1)  # fmt: skip

        def run() -> None:  # one map at a time, as a numpy user loops
            for m in maps:
                fn(m)

        code = "scipy.fft.rfft2 workers=-1" if label.startswith("scipy") else label
        return run, len(maps), {"code": code, "dtype": "float64"}

    return setup


FFT_PEERS = ("numpy.fft2", "numpy.rfft2", "scipy workers")


def _bench_fft(plan: Plan, rng: np.random.Generator, batch: int | None) -> list:
    b = batch or plan.batch_fft
    maps = _kappa_maps(rng, max(b, plan.numpy_fft))
    setups = {"lensml": _setup_fft("lensml", maps[:b])}
    setups |= {label: _setup_fft(label, maps[: plan.numpy_fft]) for label in FFT_PEERS}
    with torch.inference_mode():
        timed = time_interleaved(setups, plan.repeats, plan.warmup)
    return [
        {
            "name": "fft",
            "unit": "maps/s",
            "description": f"{FFT_N}^2 kappa -> gamma1, gamma2, zero padding {FFT_PAD} "
            f"({FFT_PAD * FFT_N}^2 FFTs); numpy kernels cached per shape",
            "lensml": timed.pop("lensml"),
            "peers": timed,
            "agreement": _guard("agreement", functools.partial(_fft_agreement, maps[0])),
        }
    ]


def _fft_agreement(kappa: np.ndarray) -> dict:
    ref = numpy_shear_from_kappa(kappa, FFT_PAD)
    with torch.inference_mode():
        got = _lensml_shear(torch.as_tensor(kappa, dtype=torch.float32))
    diffs = [
        float(np.abs(g.reshape(r.shape).numpy() - r).max() / np.abs(r).max())
        for g, r in zip(got, ref, strict=True)
    ]
    return {"peer": "numpy.fft2", "max_rel_diff": max(diffs), "note": "lensml float32 vs float64"}


# ----------------------------------------------------------------------------- case: stamps


def lensml_stamps_renderer(dtype: torch.dtype = torch.float32) -> Callable:
    """``render(params) -> (B, 1, 61, 61)``: the lensml side of the ``stamps`` case."""
    from lensml.physics.grids import PixelGrid
    from lensml.physics.stamps import render_sersic_stamps

    grid = PixelGrid.square(STAMP_N, STAMP_SCALE)

    def render(t: dict[str, torch.Tensor]) -> torch.Tensor:
        return render_sersic_stamps(
            grid,
            r_eff=t["hlr"] / torch.sqrt(t["q"]),  # semi-major from GalSim's circularised hlr
            n=t["n"],
            q=t["q"],
            phi=t["phi"],
            x0=t["x0"],
            y0=t["y0"],
            flux=t["flux"],
            psf={"kind": "moffat", "fwhm": t["fwhm"], "beta": t["beta"]},
            dtype=dtype,
        )

    return render


def _setup_lensml_stamps(p: dict[str, np.ndarray]) -> Setup:
    def setup():
        render = lensml_stamps_renderer(torch.float32)
        t = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in p.items()}
        b = len(p["n"])
        return functools.partial(render, t), b, {"code": "lensml", "dtype": "float32", "batch": b}

    return setup


def _bench_stamps(plan: Plan, rng: np.random.Generator, batch: int | None) -> list:
    b = batch or plan.batch_stamps
    repeats = min(plan.repeats, 3)  # GalSim is slow
    p_lens = draw_stamps(rng, b)
    p_peer = draw_stamps(rng, plan.galsim * (plan.warmup + repeats))
    setups = {
        "lensml": _setup_lensml_stamps(p_lens),
        "galsim": _setup_galsim_stamps(p_peer, plan.galsim),
    }
    with torch.inference_mode():
        timed = time_interleaved(setups, repeats, plan.warmup)
    res = {
        "name": "stamps",
        "unit": "stamps/s",
        "description": f'{STAMP_N}x{STAMP_N} Sersic (x) Moffat stamps at {STAMP_SCALE}"/px, '
        "random Sersic index per stamp",
        "lensml": timed.pop("lensml"),
        "peers": timed,
        "agreement": _guard("agreement", functools.partial(_stamps_agreement, p_peer)),
    }
    if plan.profile:
        render = lensml_stamps_renderer(torch.float32)
        t = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in p_lens.items()}
        with torch.inference_mode():
            res["lensml_profile"] = _guard(
                "profile", lambda: {"top_ops": _top_ops(lambda: render(t))}
            )
    return [res]


def _stamps_agreement(p: dict[str, np.ndarray]) -> dict:
    """lensml (float64) vs GalSim on one stamp: max |Δ| / max |stamp| and flux ratio."""
    one = {k: v[:1] for k, v in p.items()}
    ref = _galsim_stamps(one, 1)()[0]
    with torch.inference_mode():
        t = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in one.items()}
        got = lensml_stamps_renderer(torch.float64)(t)[0, 0].numpy()
    return {
        "peer": "galsim",
        "max_rel_diff": float(np.abs(got - ref).max() / np.abs(ref).max()),
        "flux_ratio": float(got.sum() / ref.sum()),
    }


# ----------------------------------------------------------------------------- harness


def _comparisons(cases: list[dict]) -> list[dict]:
    """One row per (lensml variant, peer) pair: median rates, ratio, target, pass.

    ``ratio`` (the one judged against the target) is from the medians; ``ratio_best`` from the
    best calls is given as well, a steadier figure on a machine shared with other jobs.
    """
    rows = []
    for case in cases:
        for variant in LENSML_VARIANTS:
            mine = case.get(variant)
            if mine is None:
                continue
            for peer, theirs in case["peers"].items():
                target = TARGETS.get((case["name"], peer)) if variant == "lensml" else None
                row = {
                    "case": case["name"],
                    "lensml": variant,
                    "peer": peer,
                    "unit": case["unit"],
                    "lensml_rate": mine.get("rate_median"),
                    "peer_rate": theirs.get("rate_median"),
                    "ratio": None,
                    "ratio_best": None,
                    "target": target,
                    "passed": None,
                }
                if row["lensml_rate"] and row["peer_rate"]:
                    row["ratio"] = row["lensml_rate"] / row["peer_rate"]
                    row["ratio_best"] = mine["rate_best"] / theirs["rate_best"]
                    row["passed"] = None if target is None else row["ratio"] >= target
                else:
                    row["note"] = mine.get("skipped") or theirs.get("skipped")
                rows.append(row)
    return rows


def run_physics_bench(
    quick: bool = False,
    out: Path = DEFAULT_OUT,
    cases: list[str] | None = None,
    batch: int | None = None,
    console=None,
    compile: bool = False,
    seed: int = 0,
    threads: int | None = None,
) -> dict:
    """Time lensml's physics against peer codes and write the ratios to ``out`` as JSON.

    Parameters
    ----------
    quick : bool
        Tiny batches and iteration counts (smoke tests, CI); the ratios are then noisy.
    out : Path
        JSON file to write (atomically); its folder is created.
    cases : list of str, optional
        Subset of ``("strong", "stamps", "fft")``; default all.
    batch : int, optional
        lensml batch size for every case (default: 256 / 64 strong ss1 / ss4, 512 stamps,
        8 fft maps; tiny with ``quick``).
    console : rich.console.Console, optional
        Where the table goes (default: a new console on stdout).
    compile : bool
        Also time the ``strong`` render through ``torch.compile`` (compile time reported apart).
    seed : int
        Seed of the parameter draws.
    threads : int, optional
        torch intra-op threads during the run (default: all cores, ``os.cpu_count()``). On a
        machine loaded by other jobs, fewer threads than cores avoids OpenMP barrier stalls.

    Returns
    -------
    dict
        The JSON document: ``schema``, ``date``, ``machine``, ``settings``, ``cases`` (rates per
        code) and ``comparisons`` (one row per lensml/peer pair: rates, ratio, target, passed).
    """
    names = list(CASES) if cases is None else [c.lower() for c in cases]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise ValueError(f"unknown bench case(s) {unknown}; choose from {list(CASES)}")
    for label, value in (("batch", batch), ("threads", threads)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"{label} must be an integer >= 1 or None; got {value!r}")
    if console is None:
        from rich.console import Console

        console = Console()
    plan = QUICK if quick else FULL
    rng = np.random.default_rng(seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or previous_threads)
    try:
        load_before = _load()
        if load_before is not None and load_before > (os.cpu_count() or 1):
            console.print(
                f"[yellow]warning: load average {load_before} exceeds {os.cpu_count()} cores; "
                "timings (multi-threaded torch especially) will be noisy[/]"
            )
        results: list[dict] = []
        for name in names:
            console.log(f"bench physics: {name} ...")
            if name == "strong":
                results += _bench_strong(plan, rng, batch, compile)
            elif name == "stamps":
                results += _bench_stamps(plan, rng, batch)
            else:
                results += _bench_fft(plan, rng, batch)
        data = {
            "schema": SCHEMA,
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "quick": quick,
            "machine": {**machine_info(), "load_average_1min_before": load_before},
            "settings": {
                "lensml_dtype": "float32",
                "peer_dtype": "float64",
                "lensml_mode": "torch.inference_mode",
                "ratio": "lensml median rate / peer median rate, same process, "
                "contenders timed in interleaved rounds",
                "seed": seed,
                "plan": plan.__dict__,
            },
            "cases": results,
            "comparisons": _comparisons(results),
        }
    finally:
        torch.set_num_threads(previous_threads)
    _write_json(data, Path(out))
    _print_table(data, console)
    if quick:
        console.print(
            "[yellow]quick mode: tiny batches and repeats; the ratios are not a measurement[/]"
        )
    console.print(f"wrote {out}")
    return data
