"""The fused SIE + shear + Sérsic renderer equals render_lensed (eager and compiled)."""

from __future__ import annotations

import functools
import logging

import pytest
import torch

from lensml.physics import fused
from lensml.physics.grids import PixelGrid
from lensml.physics.light import sersic
from lensml.physics.mass import shear, sie
from lensml.physics.psf import gaussian_psf
from lensml.physics.raytrace import render_lensed

GRID = PixelGrid.square(20, 0.1)


def _params(batched: bool, core: bool, dtype=torch.float64):
    def v(*xs):
        return torch.tensor(xs, dtype=dtype) if batched else xs[0]

    lens = {"theta_e": v(0.8, 1.1), "q": v(0.7, 1.0), "phi": v(0.3, -1.0), "x0": v(0.05, -0.1)}
    lens["y0"] = v(-0.02, 0.1)
    if core:
        lens["core"] = v(0.05, 0.1)
    ext = {"gamma1": v(0.03, -0.05), "gamma2": v(-0.02, 0.04)}
    src = {"amp": v(10.0, 3.0), "r_eff": v(0.3, 0.5), "n": v(1.5, 4.0), "q": v(0.6, 0.9)}
    src |= {"phi": v(1.0, 0.2), "x0": v(0.1, -0.05), "y0": v(0.0, 0.08)}
    light = {"amp": v(2.0, 1.0), "r_eff": v(0.8, 1.0), "n": v(4.0, 2.5), "q": v(0.8, 0.7)}
    return lens, ext, src, light


def _reference(lens, ext, src, ss, psf=None, light=None, dtype=torch.float64):
    ll = None if light is None else functools.partial(sersic.surface_brightness, **light)
    deflect = [
        functools.partial(sie.deflection, **lens),
        functools.partial(shear.deflection, **ext),
    ]
    source = functools.partial(sersic.surface_brightness, **src)
    return render_lensed(GRID, deflect, source, ss, psf, ll, dtype=dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
@pytest.mark.parametrize("ss", [1, 3])
@pytest.mark.parametrize("core", [False, True])
@pytest.mark.parametrize("extras", [False, True])
def test_eager_equals_render_lensed(dtype, tol, ss, core, extras):
    batched = extras or core
    lens, ext, src, light = _params(batched, core, dtype)
    psf = gaussian_psf(0.25, 7, 0.1, dtype=dtype) if extras else None
    light = light if extras else None
    ref = _reference(lens, ext, src, ss, psf, light, dtype)
    got = fused.render_sie_shear_sersic(
        GRID, lens, ext, src, ss, psf, light, compile=False, dtype=dtype
    )
    assert got.shape == ref.shape == ((2 if batched else 1), 1, 20, 20)
    assert got.dtype == dtype
    assert _rel(got, ref) <= tol
    if dtype == torch.float64:  # same formulas: agreement to rounding, not just tolerance
        assert _rel(got, ref) < 1e-11


def test_compiled_equals_eager_and_reference(monkeypatch):
    lens, ext, src, light = _params(True, True, torch.float32)
    fused.clear_compile_cache()
    # force several equal row blocks per image (one compilation serves them all)
    monkeypatch.setattr(fused, "_BLOCK_ELEMENTS", 1)
    assert fused._block_rows(torch.zeros(GRID.ny * 2, GRID.nx * 2), 3, 2) == 1  # 20 blocks
    try:
        got = fused.render_sie_shear_sersic(
            GRID, lens, ext, src, 2, None, light, compile=True, dtype=torch.float32
        )
        assert len(fused._COMPILED) == 1
    except Exception as exc:  # pragma: no cover - only where no compiler works
        pytest.skip(f"torch.compile unavailable: {type(exc).__name__}: {exc}")
    eager = fused.render_sie_shear_sersic(
        GRID, lens, ext, src, 2, None, light, compile=False, dtype=torch.float32
    )
    ref = _reference(lens, ext, src, 2, None, light, torch.float32)
    assert _rel(got, eager) <= 1e-5
    assert _rel(got, ref) <= 1e-4


def test_gradients_finite_for_every_parameter():
    lens, ext, src, light = _params(True, True)
    groups = (lens, ext, src, light)
    leaves = []
    for g in groups:
        for key, val in g.items():
            g[key] = val.clone().requires_grad_(True)
            leaves.append(g[key])
    img = fused.render_sie_shear_sersic(GRID, lens, ext, src, 2, None, light, compile=False)
    (img * img).sum().backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    # the lens and source parameters really move the image (q = 1 uses the series branch)
    assert lens["theta_e"].grad.abs().min() > 0 and src["n"].grad.abs().min() > 0
    assert lens["q"].grad.abs().min() > 0


def test_bad_parameters_raise_the_profiles_errors():
    lens, ext, src, _ = _params(False, False)

    def message(fn, **kw):
        with pytest.raises(ValueError) as info:
            fn(torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64), **kw)
        return str(info.value)

    for group, key, value, fn in (
        ("lens", "q", 0.0, sie.deflection),
        ("lens", "theta_e", float("nan"), sie.deflection),
        ("ext", "gamma1", 2.0, shear.deflection),
        ("src", "n", 10.0, sersic.surface_brightness),
    ):
        parts = {"lens": dict(lens), "ext": dict(ext), "src": dict(src)}
        parts[group][key] = value
        expected = message(fn, **parts[group])
        with pytest.raises(ValueError) as info:
            fused.render_sie_shear_sersic(
                GRID, parts["lens"], parts["ext"], parts["src"], compile=False
            )
        assert str(info.value) == expected
    bad_batch = dict(src, amp=torch.ones(3))
    lens_b = dict(lens, theta_e=torch.ones(2))
    with pytest.raises(ValueError, match="different batch sizes"):
        fused.render_sie_shear_sersic(GRID, lens_b, ext, bad_batch, compile=False)
    with pytest.raises(ValueError, match="compile"):
        fused.render_sie_shear_sersic(GRID, lens, ext, src, compile="yes")
    with pytest.raises(ValueError, match="supersample"):
        fused.render_sie_shear_sersic(GRID, lens, ext, src, 0, compile=False)
    with pytest.raises(ValueError, match="dict"):
        fused.render_sie_shear_sersic(GRID, lens, None, src, compile=False)


def test_compile_failure_falls_back_once(monkeypatch, caplog):
    lens, ext, src, _ = _params(False, False, torch.float32)

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    fused.clear_compile_cache()
    monkeypatch.setattr(fused.torch, "compile", broken)
    try:
        with caplog.at_level(logging.WARNING, logger="lensml.physics.fused"):
            a = fused.render_sie_shear_sersic(GRID, lens, ext, src, compile="auto")
            b = fused.render_sie_shear_sersic(GRID, lens, ext, src, 2, compile="auto")
        warnings = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
        assert len(warnings) == 1 and "no compiler here" in warnings[0].getMessage()
        ref = fused.render_sie_shear_sersic(GRID, lens, ext, src, compile=False)
        torch.testing.assert_close(a, ref, rtol=0, atol=0)
        assert b.shape == a.shape
        with pytest.raises(RuntimeError, match="no compiler"):
            fused.render_sie_shear_sersic(GRID, lens, ext, src, compile=True)
    finally:
        fused.clear_compile_cache()


def test_render_lensed_validates_bound_profiles_once(monkeypatch):
    """render_lensed binds partials of profile functions: validation runs once, not per block."""
    import lensml.physics.mass.sie as sie_mod

    calls = []
    real = sie_mod.deflection_args
    monkeypatch.setattr(
        sie_mod, "deflection_args", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    lens, ext, src, _ = _params(False, False)
    deflect = [
        functools.partial(sie.deflection, **lens),
        functools.partial(shear.deflection, **ext),
    ]
    source = functools.partial(sersic.surface_brightness, **src)
    img = render_lensed(GRID, deflect, source, 2, dtype=torch.float64, chunk_elements=200)
    assert len(calls) == 1 and img.shape == (1, 1, 20, 20)
    with pytest.raises(ValueError, match="'q'"):
        render_lensed(GRID, functools.partial(sie.deflection, theta_e=1.0, q=1.5), source)


def test_block_rows_are_equal_divisors_within_budget():
    ss1 = torch.zeros(96, 96)
    ss4 = torch.zeros(384, 384)
    assert fused._block_rows(ss1, 256, 1) == 96  # k = 1: one fused loop, no blocks
    assert fused._block_rows(ss4, 64, 4) == 8  # 64·(8·4)·384 = 786k ≤ 2**20 values
    assert fused._block_rows(torch.zeros(97 * 2, 97 * 2), 4096, 2) == 1  # prime height
    assert 96 % fused._block_rows(torch.zeros(192, 192), 512, 2) == 0
