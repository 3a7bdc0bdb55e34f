"""``lensml bench physics``: lensml's physics kernels timed against peer codes.

Every comparison runs in one process on one machine, so only the **ratios** are meaningful
across machines. Three cases (the names accepted by ``cases``):

``strong``
    96×96 SIE + external shear lens of an elliptical Sérsic source at 0.04"/px, without
    supersampling (``strong_ss1``) and with 4×4 supersampling (``strong_ss4``). lensml renders
    a batch with random parameters per image; lenstronomy's ``ImageModel`` (built once) renders
    one image at a time as its users do; caustics' ``LensSource`` simulator is timed one call at
    a time and ``torch.vmap``-ed over a batch.
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
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CASES", "TARGETS", "run_physics_bench", "time_rate"]

SCHEMA = "lensml.bench.physics/1"
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
STRONG_N, STRONG_SCALE = 96, 0.04
STAMP_N, STAMP_SCALE = 61, 0.2
FFT_N, FFT_PAD = 512, 2


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
class PeerMissing(RuntimeError):
    """A peer code is not installed: its comparison is skipped with this message."""


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except Exception as exc:  # not installed, or a broken install
        raise PeerMissing(
            f"{module} not importable ({type(exc).__name__}: {exc}); comparison skipped"
        ) from exc


def _skip_reason(label: str, exc: Exception) -> str:
    if isinstance(exc, PeerMissing):
        return str(exc)
    return f"{label} failed: {type(exc).__name__}: {str(exc)[:300]}"


Setup = Callable[[], tuple[Callable[[], Any], int, dict]]
"""Builds one contender: returns ``(run, items_per_call, metadata)``; not timed."""


def time_interleaved(setups: dict[str, Setup], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Time several contenders in interleaved rounds so that load changes hit all alike.

    Every setup runs first (untimed; an exception, e.g. :class:`PeerMissing`, turns that
    contender into ``{"skipped": reason}``), then ``warmup`` untimed calls of each, then
    ``repeats`` rounds in which each contender's ``run`` is timed once with
    :func:`time.perf_counter`. Rates are items / second of the median and the best call.
    """
    out: dict[str, dict] = {}
    ready: dict[str, tuple[Callable[[], Any], int, dict]] = {}
    for name, setup in setups.items():
        try:
            ready[name] = setup()
            for _ in range(warmup):
                ready[name][0]()
        except Exception as exc:
            ready.pop(name, None)
            out[name] = {"skipped": _skip_reason(name, exc)}
    times: dict[str, list[float]] = {name: [] for name in ready}
    for _ in range(max(1, repeats)):
        for name, (run, _, _) in list(ready.items()):
            t0 = time.perf_counter()
            try:
                run()
            except Exception as exc:
                del ready[name]
                out[name] = {"skipped": _skip_reason(name, exc)}
                continue
            times[name].append(time.perf_counter() - t0)
    for name, (_, items, meta) in ready.items():
        out[name] = {**meta, **_rates(times[name], items, warmup)}
    return {name: out[name] for name in setups}


def time_rate(fn: Callable[[], Any], items: int, repeats: int, warmup: int = 1) -> dict:
    """Time one function (``items`` items per call): ``warmup`` untimed calls, ``repeats`` timed."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return _rates(times, items, warmup)


def _rates(times: list[float], items: int, warmup: int) -> dict:
    med, best = statistics.median(times), min(times)
    return {
        "items_per_call": items,
        "repeats": len(times),
        "warmup": warmup,
        "times_s": [round(t, 6) for t in times],
        "rate_median": items / med,
        "rate_best": items / best,
    }


def _top_ops(fn: Callable[[], Any], k: int = 8) -> list[dict]:
    """The ``k`` torch operators with the largest self CPU time in one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1.0
    return [
        {
            "op": e.key,
            "self_ms": round(e.self_cpu_time_total / 1e3, 3),
            "share": round(e.self_cpu_time_total / total, 3),
            "calls": e.count,
        }
        for e in rows[:k]
    ]


# ----------------------------------------------------------------------------- case: strong
def draw_strong(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Random SIE + shear + Sérsic parameters (lenstronomy's conventions plus q, phi).

    ``theta_E`` is lenstronomy's SIE Einstein radius, ``R_circ`` the circularised Sérsic
    half-light radius, ``amp`` the surface brightness at it (flux / arcsec²).
    """
    u = rng.uniform
    return {
        "theta_E": u(0.8, 1.6, n),
        "q_l": u(0.5, 0.95, n),
        "phi_l": u(0.0, math.pi, n),
        "x_l": u(-0.05, 0.05, n),
        "y_l": u(-0.05, 0.05, n),
        "gamma1": u(-0.05, 0.05, n),
        "gamma2": u(-0.05, 0.05, n),
        "amp": u(5.0, 20.0, n),
        "R_circ": u(0.1, 0.4, n),
        "n": u(1.0, 4.0, n),
        "q_s": u(0.5, 0.95, n),
        "phi_s": u(0.0, math.pi, n),
        "x_s": u(-0.2, 0.2, n),
        "y_s": u(-0.2, 0.2, n),
    }


def _e1e2(q: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e = (1.0 - q) / (1.0 + q)
    return e * np.cos(2 * phi), e * np.sin(2 * phi)


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


def _lenstronomy_strong(supersample: int):
    """``(image_model, kwargs_list(params))``: lenstronomy's ImageModel built once."""
    from lenstronomy.Data.pixel_grid import PixelGrid as LtGrid
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    c0 = -(STRONG_N - 1) / 2 * STRONG_SCALE
    grid = LtGrid(
        nx=STRONG_N,
        ny=STRONG_N,
        ra_at_xy_0=c0,
        dec_at_xy_0=c0,
        transform_pix2angle=np.eye(2) * STRONG_SCALE,
    )
    model = ImageModel(
        grid,
        PSF(psf_type="NONE"),
        lens_model_class=LensModel(["SIE", "SHEAR"]),
        source_model_class=LightModel(["SERSIC_ELLIPSE"]),
        kwargs_numerics={"supersampling_factor": supersample},
    )

    def kwargs(p: dict[str, np.ndarray], i: int) -> tuple[list, list]:
        e1, e2 = _e1e2(p["q_l"][i], p["phi_l"][i])
        es1, es2 = _e1e2(p["q_s"][i], p["phi_s"][i])
        lens = [
            {"theta_E": p["theta_E"][i], "e1": e1, "e2": e2, "center_x": p["x_l"][i],
             "center_y": p["y_l"][i]},
            {"gamma1": p["gamma1"][i], "gamma2": p["gamma2"][i], "ra_0": 0.0, "dec_0": 0.0},
        ]  # fmt: skip
        source = [
            {"amp": p["amp"][i], "R_sersic": p["R_circ"][i], "n_sersic": p["n"][i], "e1": es1,
             "e2": es2, "center_x": p["x_s"][i], "center_y": p["y_s"][i]},
        ]  # fmt: skip
        return lens, source

    return model, kwargs


_CAUSTICS_ORDER = ("x0", "y0", "q", "phi", "Rein", "gamma_1", "gamma_2")
_CAUSTICS_ORDER += ("x0", "y0", "q", "phi", "n", "Re", "Ie")


@functools.lru_cache(maxsize=2)
def _caustics_strong(supersample: int):
    """``(simulator, params_matrix(p))``: caustics' LensSource with SIE + shear, float64."""
    import caustics

    cosmo = caustics.FlatLambdaCDM(name="cosmo")
    sie = caustics.SIE(cosmology=cosmo, name="sie")
    shear = caustics.ExternalShear(cosmology=cosmo, x0=0.0, y0=0.0, name="shear")
    lens = caustics.SinglePlane(cosmology=cosmo, lenses=[sie, shear], z_l=0.5, z_s=1.0, name="lens")
    src = caustics.Sersic(name="src")
    sim = caustics.LensSource(
        lens=lens,
        source=src,
        pixelscale=STRONG_SCALE,
        pixels_x=STRONG_N,
        upsample_factor=supersample,
        name="sim",
    )
    sim.to(dtype=torch.float64)
    names = tuple(prm.name for prm in sim.dynamic_params)
    if names != _CAUSTICS_ORDER:
        raise RuntimeError(f"unexpected caustics parameter order {names}")

    def matrix(p: dict[str, np.ndarray]) -> torch.Tensor:
        cols = [p["x_l"], p["y_l"], p["q_l"], p["phi_l"], p["theta_E"], p["gamma1"], p["gamma2"]]
        cols += [p["x_s"], p["y_s"], p["q_s"], p["phi_s"], p["n"], p["R_circ"] / np.sqrt(p["q_s"])]
        cols += [p["amp"]]
        return torch.as_tensor(np.stack(cols, axis=-1), dtype=torch.float64)

    return sim, matrix


def _setup_lensml_strong(ss: int, p: dict[str, np.ndarray], compile: bool = False) -> Setup:
    def setup():
        render = lensml_strong_renderer(ss, torch.float32)
        t = _lensml_strong_params(p, torch.float32)
        meta = {"code": "lensml", "dtype": "float32", "batch": len(p["n"])}
        if compile:  # optional fast path: torch.compile of the whole per-batch render
            render = torch.compile(render, dynamic=False)
            t0 = time.perf_counter()
            render(t)
            meta |= {"code": "lensml+torch.compile", "compile_s": time.perf_counter() - t0}
        return functools.partial(render, t), len(p["n"]), meta

    return setup


def _setup_lenstronomy_strong(ss: int, p: dict[str, np.ndarray], n: int) -> Setup:
    def setup():
        _require("lenstronomy")
        model, kwargs = _lenstronomy_strong(ss)
        kw = [kwargs(p, i) for i in range(n)]

        def run() -> None:  # one image at a time, as lenstronomy users do
            for lens, source in kw:
                model.image(kwargs_lens=lens, kwargs_source=source)

        return run, n, {"code": "lenstronomy", "dtype": "float64"}

    return setup


def _setup_caustics_strong(ss: int, p: dict[str, np.ndarray], n: int, vmap: bool) -> Setup:
    def setup():
        _require("caustics")
        sim, matrix = _caustics_strong(ss)
        rows = matrix(p)[:n]
        if vmap:
            batched = torch.vmap(sim)
            return functools.partial(batched, rows), n, {"code": "caustics", "dtype": "float64",
                                                         "batch": n}  # fmt: skip

        def run() -> None:
            for row in rows:
                sim(row)

        return run, n, {"code": "caustics", "dtype": "float64"}

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
        setups = {"lensml": _setup_lensml_strong(ss, p_lens)}
        if compile:
            setups["lensml_compiled"] = _setup_lensml_strong(ss, p_lens, compile=True)
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
            **{k: timed.pop(k) for k in ("lensml", "lensml_compiled") if k in timed},
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


def _guard(label: str, fn: Callable[[], dict]) -> dict:
    """Run an optional diagnostic; an exception becomes ``{"skipped": reason}``."""
    try:
        return fn()
    except Exception as exc:
        return {"skipped": _skip_reason(label, exc)}


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
        if importlib.util.find_spec("caustics") is not None:
            sim, matrix = _caustics_strong(1)
            sb = sim(matrix(one)[0]).numpy() * STRONG_SCALE**2  # caustics returns flux/arcsec²
            out["caustics_max_rel_diff"] = float(np.abs(sb - ref).max() / ref.max())
    return out


# ----------------------------------------------------------------------------- case: fft
@functools.lru_cache(maxsize=8)
def _ks_kernels(ny: int, nx: int, real: bool, fft=np.fft) -> tuple[np.ndarray, np.ndarray]:
    """Kaiser–Squires multipliers ``(kx² − ky²)/k²`` and ``2 kx ky / k²`` (zero mode → 0).

    Cached per shape, as a careful user computes them once for repeated calls.
    """
    kx = (fft.rfftfreq(nx) if real else fft.fftfreq(nx))[None, :]
    ky = fft.fftfreq(ny)[:, None]
    k2 = kx**2 + ky**2
    k2[0, 0] = 1.0
    d1, d2 = (kx**2 - ky**2) / k2, 2.0 * kx * ky / k2
    d1[0, 0] = d2[0, 0] = 0.0
    return d1, d2


def numpy_shear_from_kappa(kappa: np.ndarray, pad_factor: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Peer baseline: Kaiser–Squires κ → (γ1, γ2) with ``numpy.fft.fft2``, zero padded.

    ``γ̂1 = (kx² − ky²) / k² κ̂``, ``γ̂2 = 2 kx ky / k² κ̂``: the map is placed in the corner
    of a ``pad_factor`` times larger zero array, transformed, multiplied, transformed back
    and cropped.
    """
    ny, nx = kappa.shape
    padded = np.zeros((pad_factor * ny, pad_factor * nx))
    padded[:ny, :nx] = kappa
    d1, d2 = _ks_kernels(*padded.shape, real=False)
    kappa_hat = np.fft.fft2(padded)
    g1 = np.fft.ifft2(kappa_hat * d1).real[:ny, :nx]
    g2 = np.fft.ifft2(kappa_hat * d2).real[:ny, :nx]
    return g1, g2


def numpy_shear_from_kappa_rfft(
    kappa: np.ndarray, pad_factor: int = 2, fft=np.fft, **fft_kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`numpy_shear_from_kappa` with real transforms (``rfft2(s=...)`` pads).

    ``fft`` may be ``scipy.fft`` (with e.g. ``workers=-1``) instead of ``numpy.fft``.
    """
    ny, nx = kappa.shape
    shape = (pad_factor * ny, pad_factor * nx)
    d1, d2 = _ks_kernels(*shape, real=True, fft=fft)
    kappa_hat = fft.rfft2(kappa, s=shape, **fft_kwargs)
    g1 = fft.irfft2(kappa_hat * d1, s=shape, **fft_kwargs)[:ny, :nx]
    g2 = fft.irfft2(kappa_hat * d2, s=shape, **fft_kwargs)[:ny, :nx]
    return g1, g2


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
def draw_stamps(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Random Sérsic ⊗ Moffat stamp parameters; ``hlr`` is the circularised half-light radius."""
    u = rng.uniform
    return {
        "flux": u(100.0, 1000.0, n),
        "hlr": u(0.3, 1.2, n),
        "n": u(0.5, 4.5, n),
        "q": u(0.4, 1.0, n),
        "phi": u(0.0, math.pi, n),
        "x0": u(-0.3, 0.3, n),
        "y0": u(-0.3, 0.3, n),
        "fwhm": u(0.6, 1.0, n),
        "beta": np.full(n, 3.5),
    }


def _galsim_stamps(p: dict[str, np.ndarray], n: int) -> Callable[[], list]:
    import galsim

    def run() -> list:
        out = []
        for i in range(n):
            gal = galsim.Sersic(n=p["n"][i], half_light_radius=p["hlr"][i], flux=p["flux"][i])
            gal = gal.shear(q=p["q"][i], beta=p["phi"][i] * galsim.radians)
            gal = gal.shift(p["x0"][i], p["y0"][i])
            psf = galsim.Moffat(beta=p["beta"][i], fwhm=p["fwhm"][i])
            img = galsim.Convolve(gal, psf).drawImage(nx=STAMP_N, ny=STAMP_N, scale=STAMP_SCALE)
            out.append(img.array)
        return out

    return run


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


def _setup_galsim_stamps(p: dict[str, np.ndarray], n: int) -> Setup:
    """GalSim draws ``n`` stamps per call, each call with fresh parameters from ``p``.

    GalSim caches its Sérsic tables per index n, so re-drawing the same n would not measure
    "random n per stamp"; ``p`` must hold ``n`` × (warm-up + repeats) draws.
    """

    def setup():
        _require("galsim")
        calls = iter(range(len(p["n"]) // n))

        def run() -> None:
            i = next(calls) * n
            _galsim_stamps({k: v[i : i + n] for k, v in p.items()}, n)()

        return run, n, {"code": "galsim", "dtype": "float64"}

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
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_info() -> dict:
    """Platform, CPU, core and thread counts, and the versions of every code timed."""
    dists = ("lensml", "torch", "numpy", "scipy", "lenstronomy", "caustics", "galsim")
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": _load(),
        "versions": {d: _version(d) for d in dists},
    }


def _comparisons(cases: list[dict]) -> list[dict]:
    """One row per (lensml variant, peer) pair: median rates, ratio, target, pass.

    ``ratio`` (the one judged against the target) is from the medians; ``ratio_best`` from the
    best calls is given as well, a steadier figure on a machine shared with other jobs.
    """
    rows = []
    for case in cases:
        for variant in ("lensml", "lensml_compiled"):
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


def _write_json(data: dict, out: Path) -> None:
    """Write ``data`` to ``out`` atomically (temp file in the same folder, then replace)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fmt_rate(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v / 1e3:.2f}k" if v >= 1e4 else f"{v:.1f}"


def _print_table(data: dict, console) -> None:
    from rich import box
    from rich.table import Table

    m = data["machine"]
    units = sorted({f"{r['case'].split('_')[0]}: {r['unit']}" for r in data["comparisons"]})
    table = Table(
        box=box.SIMPLE_HEAD,
        title="lensml bench physics: speed ratios (lensml float32 vs peers float64)",
        caption=f"{m['cpu_model']}, {m['cores']} cores, torch threads {m['torch_threads']}, "
        f"load {m['load_average_1min_before']}→{m['load_average_1min']}; median rates "
        f"({', '.join(units)}); ratio of medians (judged), best = ratio of best calls",
    )
    for col in ("case", "vs", "lensml", "peer", "ratio", "best", "target", "pass"):
        if col in ("case", "vs"):
            table.add_column(col, overflow="fold")
        else:  # numbers never truncated
            table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    for r in data["comparisons"]:
        passed = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: "-"}[r["passed"]]
        ratio = f"{r['ratio']:.1f}×" if r["ratio"] is not None else "skipped"
        best = f"{r['ratio_best']:.1f}×" if r["ratio_best"] is not None else "-"
        compiled = " jit" if r["lensml"] == "lensml_compiled" else ""
        table.add_row(
            r["case"].replace("strong_", "strong ") + compiled,
            r["peer"],
            _fmt_rate(r["lensml_rate"]),
            _fmt_rate(r["peer_rate"]),
            ratio,
            best,
            f"≥{r['target']:g}×" if r["target"] else "-",
            passed,
        )
    console.print(table)
    for r in data["comparisons"]:
        if r["ratio"] is None:
            console.print(f"[yellow]{r['case']} vs {r['peer']}: {r.get('note')}[/]")


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
