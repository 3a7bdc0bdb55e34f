"""Property tests of every registered mass profile: finite differences, batching,
float32, gradients, bad input, registry and sums."""

from __future__ import annotations

import pytest
import torch

from lensml.physics import mass
from lensml.physics.mass import MASS_PROFILES, MassProfile, autograd_hessian, total_deflection

F64 = torch.float64

# one representative parameter set per profile, and a second for batching
PARAMS = {
    "sis": ({"theta_e": 1.2, "x0": 0.1, "y0": -0.2}, {"theta_e": 0.4, "x0": -0.3, "y0": 0.0}),
    "tsis": (
        {"theta_e": 1.2, "r_t": 2.0, "x0": 0.1, "y0": -0.2},
        {"theta_e": 0.5, "r_t": 0.7, "x0": 0.0, "y0": 0.3},
    ),
    "sie": (
        {"theta_e": 1.2, "q": 0.45, "phi": 0.7, "x0": 0.1, "y0": -0.2, "core": 0.0},
        {"theta_e": 0.8, "q": 1.0, "phi": -0.3, "x0": -0.1, "y0": 0.2, "core": 0.15},
    ),
    "shear": (
        {"gamma1": 0.05, "gamma2": -0.03, "x0": 0.1, "y0": 0.0},
        {"gamma1": -0.1, "gamma2": 0.02, "x0": 0.0, "y0": 0.4},
    ),
    "nfw": (
        {"r_s": 1.1, "alpha_rs": 0.8, "x0": 0.1, "y0": -0.2},
        {"r_s": 4.0, "alpha_rs": 1.5, "x0": -0.2, "y0": 0.1},
    ),
    "enfw": (
        {"r_s": 1.1, "alpha_rs": 0.8, "q": 0.7, "phi": 0.4, "x0": 0.1, "y0": -0.2},
        {"r_s": 3.0, "alpha_rs": 1.2, "q": 1.0, "phi": -1.0, "x0": 0.0, "y0": 0.1},
    ),
    "hernquist": (
        {"sigma0": 0.9, "r_s": 0.8, "x0": 0.1, "y0": -0.2},
        {"sigma0": 2.0, "r_s": 2.5, "x0": -0.1, "y0": 0.0},
    ),
}
NAMES = sorted(PARAMS)


def grid(n: int = 16, scale: float = 0.23, dtype=F64) -> tuple[torch.Tensor, torch.Tensor]:
    """Even grid (no pixel on a centre of PARAMS)."""
    ax = (torch.arange(n, dtype=dtype) - (n - 1) / 2) * scale + 0.011
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    return x, y


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    """|a − b| <= rel · max|b| everywhere."""
    err = float((a - b).abs().max())
    scale = float(b.abs().max())
    assert err <= rel * max(scale, 1e-300), f"max error {err:.3g} > {rel:g} × {scale:.3g}"


def test_registry_holds_every_profile():
    assert MASS_PROFILES.names() == NAMES
    for name in NAMES:
        cls = MASS_PROFILES.get(name)
        assert issubclass(cls, MassProfile) and cls.name == name
        assert set(cls.param_names()) == set(PARAMS[name][0])


@pytest.mark.parametrize("name", NAMES)
def test_deflection_is_gradient_of_potential(name):
    cls, kw, h = MASS_PROFILES.get(name), PARAMS[name][0], 1e-5
    x, y = grid()
    ax, ay = cls.deflection(x, y, **kw)
    fx = (cls.potential(x + h, y, **kw) - cls.potential(x - h, y, **kw)) / (2 * h)
    fy = (cls.potential(x, y + h, **kw) - cls.potential(x, y - h, **kw)) / (2 * h)
    assert_close_rel(fx, ax, 1e-7)
    assert_close_rel(fy, ay, 1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_shear_and_convergence_from_jacobian_of_deflection(name):
    cls, kw, h = MASS_PROFILES.get(name), PARAMS[name][0], 1e-5
    x, y = grid()
    axp, ayp = cls.deflection(x + h, y, **kw)
    axm, aym = cls.deflection(x - h, y, **kw)
    bxp, byp = cls.deflection(x, y + h, **kw)
    bxm, bym = cls.deflection(x, y - h, **kw)
    fxx, fyy = (axp - axm) / (2 * h), (byp - bym) / (2 * h)
    fxy, fyx = (bxp - bxm) / (2 * h), (ayp - aym) / (2 * h)
    assert_close_rel(fxy, fyx, 1e-7)  # curl-free
    kappa = cls.convergence(x, y, **kw)
    g1, g2 = cls.shear(x, y, **kw)
    ref_scale = float((fxx.abs() + fyy.abs()).max())
    for got, ref in ((kappa, 0.5 * (fxx + fyy)), (g1, 0.5 * (fxx - fyy)), (g2, fxy)):
        assert float((got - ref).abs().max()) <= 1e-7 * ref_scale
    # the autograd fallback agrees with the analytic Hessian to rounding
    hxx, hxy, hyy = (h.detach() for h in autograd_hessian(cls.deflection, x, y, **kw))
    assert float((hxx - (kappa + g1)).abs().max()) <= 1e-12 * ref_scale
    assert float((hxy - g2).abs().max()) <= 1e-12 * ref_scale
    assert float((hyy - (kappa - g1)).abs().max()) <= 1e-12 * ref_scale


def _stack(name: str) -> dict[str, torch.Tensor]:
    a, b = PARAMS[name]
    return {k: torch.tensor([a[k], b[k]], dtype=F64) for k in a}


@pytest.mark.parametrize("name", NAMES)
def test_batched_equals_looped(name):
    cls = MASS_PROFILES.get(name)
    x, y = grid()
    batched = _stack(name)
    outs = [cls.deflection, cls.convergence, cls.shear, cls.potential]
    for fn in outs:
        got = fn(x, y, **batched)
        got = got if isinstance(got, tuple) else (got,)
        for i in range(2):
            one = fn(x, y, **PARAMS[name][i])
            one = one if isinstance(one, tuple) else (one,)
            for g, o in zip(got, one, strict=True):
                assert g.shape == (2, *x.shape)
                torch.testing.assert_close(g[i], o[0], rtol=1e-13, atol=1e-15)
    # only one parameter batched, the others numbers
    a, b = PARAMS[name]
    for key in a:
        mixed = dict(a, **{key: torch.tensor([a[key], b[key]], dtype=F64)})
        got = cls.deflection(x, y, **mixed)
        other = cls.deflection(x, y, **dict(a, **{key: b[key]}))
        torch.testing.assert_close(got[0][1], other[0][0], rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(got[1][1], other[1][0], rtol=1e-13, atol=1e-15)
    # (B, H, W) coordinates with (B,) parameters
    xb, yb = x.expand(2, -1, -1), y.expand(2, -1, -1)
    torch.testing.assert_close(
        cls.deflection(xb, yb, **batched)[0], cls.deflection(x, y, **batched)[0]
    )


@pytest.mark.parametrize("name", NAMES)
def test_float32_close_to_float64(name):
    cls, kw = MASS_PROFILES.get(name), PARAMS[name][0]
    x64, y64 = grid(24, 0.19)
    x32, y32 = x64.float(), y64.float()
    for fn in (cls.deflection, cls.convergence, cls.shear, cls.potential):
        a, b = fn(x32, y32, **kw), fn(x64, y64, **kw)
        a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
        for u, v in zip(a, b, strict=True):
            assert u.dtype == torch.float32
            assert_close_rel(u.double(), v, 1e-4 if fn is not cls.potential else 3e-4)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_finite_for_every_parameter(name):
    cls = MASS_PROFILES.get(name)
    # a grid that holds the centre itself and, for NFW-like profiles, x = R / r_s = 1 exactly
    ax = torch.tensor([-1.1, -0.5, 0.0, 0.3, 1.1], dtype=F64)
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    for kw in PARAMS[name]:
        kw = dict(kw, x0=0.0, y0=0.0)
        if "r_s" in kw:
            kw["r_s"] = 1.1
        params = {k: torch.tensor([v], dtype=F64, requires_grad=True) for k, v in kw.items()}
        total = 0
        for fn in (cls.deflection, cls.convergence, cls.shear, cls.potential):
            out = fn(x, y, **params)
            for o in out if isinstance(out, tuple) else (out,):
                assert bool(torch.isfinite(o).all())
                total = total + o.sum()
        grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
        for key, g in zip(params, grads, strict=True):
            assert g is not None, key
            assert bool(torch.isfinite(g).all()), f"{name}: d/d{key} not finite"


def test_sie_gradient_at_q_one_matches_finite_difference():
    x, y = grid(8)
    q = torch.tensor([1.0], dtype=F64, requires_grad=True)
    ax, ay = mass.sie.deflection(x, y, theta_e=1.0, q=q, phi=0.3)
    (g,) = torch.autograd.grad((ax + 2 * ay).sum(), q)
    h = 1e-6
    ax2, ay2 = mass.sie.deflection(x, y, theta_e=1.0, q=1 - h, phi=0.3)
    fd = ((ax - ax2) + 2 * (ay - ay2)).sum() / h  # one-sided: q <= 1
    assert float(g.detach()) == pytest.approx(float(fd.detach()), rel=1e-4)


def test_nfw_gradient_at_x_equal_one_matches_finite_difference():
    x = torch.tensor([[1.0]], dtype=F64)
    y = torch.zeros_like(x)
    r_s = torch.tensor([1.0], dtype=F64, requires_grad=True)
    kappa = mass.nfw.convergence(x, y, r_s, 0.7)
    (g,) = torch.autograd.grad(kappa.sum(), r_s)
    h = 1e-6
    fd = (mass.nfw.convergence(x, y, 1 + h, 0.7) - mass.nfw.convergence(x, y, 1 - h, 0.7)) / (2 * h)
    assert float(g.detach()) == pytest.approx(float(fd.detach()), rel=1e-6)


BAD = [
    ("sie", {"q": 0.0}, "'q'"),
    ("sie", {"q": -0.3}, "'q'"),
    ("sie", {"q": 1.2}, "'q'"),
    ("sie", {"theta_e": float("nan")}, "'theta_e'"),
    ("sie", {"core": -0.1}, "'core'"),
    ("sis", {"theta_e": torch.ones(2, 2)}, "'theta_e'"),
    ("nfw", {"r_s": -1.0}, "'r_s'"),
    ("nfw", {"alpha_rs": float("inf")}, "'alpha_rs'"),
    ("enfw", {"q": 0.0}, "'q'"),
    ("hernquist", {"r_s": 0.0}, "'r_s'"),
    ("tsis", {"r_t": -2.0}, "'r_t'"),
    ("shear", {"gamma1": 1.5}, "'gamma1'"),
]


@pytest.mark.parametrize(("name", "change", "match"), BAD)
def test_bad_parameters_raise_value_error_naming_them(name, change, match):
    x, y = grid(4)
    cls = MASS_PROFILES.get(name)
    kw = dict(PARAMS[name][0], **change)
    for fn in (cls.deflection, cls.convergence, cls.potential, cls.shear):
        with pytest.raises(ValueError, match=match):
            fn(x, y, **kw)


def test_mismatched_batches_and_coordinates_raise():
    x, y = grid(4)
    with pytest.raises(ValueError, match="batch"):
        mass.sie.deflection(x, y, theta_e=torch.ones(3), q=torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="batch"):
        mass.nfw.deflection(x.expand(4, -1, -1), y.expand(4, -1, -1), torch.ones(3), 1.0)
    with pytest.raises(ValueError, match="'x'"):
        mass.sis.deflection(x.long(), y, 1.0)
    with pytest.raises(ValueError, match="same shape"):
        mass.sis.deflection(x, y[:2], 1.0)
    with pytest.raises(ValueError, match="missing"):
        mass.base.prepare(x, y, {"theta_e": 1.0}, mass.sie.PARAMS, "sie")


def test_total_deflection_and_convergence_sum_components():
    x, y = grid(8)
    sie_kw = PARAMS["sie"][0]
    shear_kw = PARAMS["shear"][0]
    nfw_kw = {"r_s": torch.tensor([1.0, 2.0], dtype=F64), "alpha_rs": 0.5}
    comps = [("sie", sie_kw), (mass.ExternalShear, shear_kw), ("NFW", nfw_kw)]
    ax, ay = total_deflection(x, y, comps)
    assert ax.shape == (2, 8, 8)
    parts = [
        mass.sie.deflection(x, y, **sie_kw),
        mass.shear.deflection(x, y, **shear_kw),
        mass.nfw.deflection(x, y, **nfw_kw),
    ]
    torch.testing.assert_close(ax, sum(p[0] for p in parts))
    torch.testing.assert_close(ay, sum(p[1] for p in parts))
    kappa = mass.total_convergence(x, y, comps)
    ref = mass.sie.convergence(x, y, **sie_kw) + mass.nfw.convergence(x, y, **nfw_kw)
    torch.testing.assert_close(kappa, ref)
    with pytest.raises(KeyError, match="unknown mass profile"):
        total_deflection(x, y, [("nope", {})])
    with pytest.raises(ValueError, match="at least one"):
        total_deflection(x, y, [])


def test_mass_profile_hessian_and_fallback_shear():
    x, y = grid(6)
    kw = PARAMS["nfw"][0]

    class NoAnalyticShear(mass.NFW):
        _shear = None

    g_fallback = NoAnalyticShear.shear(x, y, **kw)
    g_analytic = mass.NFW.shear(x, y, **kw)
    for a, b in zip(g_fallback, g_analytic, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    fxx, fxy, fyy = mass.NFW.hessian(x, y, **kw)
    torch.testing.assert_close(0.5 * (fxx + fyy), mass.NFW.convergence(x, y, **kw))
    torch.testing.assert_close(fxy, g_analytic[1])


def test_no_in_place_change_of_inputs():
    x, y = grid(6)
    x0, y0 = x.clone(), y.clone()
    q = torch.tensor([0.5, 1.0], dtype=F64)
    mass.sie.deflection(x, y, theta_e=1.0, q=q)
    mass.enfw.shear(x, y, 1.0, 0.5, q)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert torch.equal(q, torch.tensor([0.5, 1.0], dtype=F64))


@pytest.mark.parametrize("name", NAMES)
def test_autograd_gradients_match_finite_differences(name):
    cls = MASS_PROFILES.get(name)
    x, y = grid(3, 0.7)
    keys = list(PARAMS[name][0])
    for kw in PARAMS[name]:
        if kw.get("q") == 1.0:  # q = 1 is the edge of the domain: one-sided, tested above
            kw = dict(kw, q=0.97)
        if kw.get("core") == 0.0:  # likewise core = 0
            kw = dict(kw, core=0.05)
        inputs = tuple(torch.tensor([kw[k]], dtype=F64, requires_grad=True) for k in keys)

        def f(*vals, fn):
            out = fn(x, y, **dict(zip(keys, vals, strict=True)))
            return out if isinstance(out, tuple) else (out,)

        for fn in (cls.deflection, cls.convergence, cls.shear):
            assert torch.autograd.gradcheck(lambda *v, fn=fn: f(*v, fn=fn), inputs)


def test_sie_cpu_chunking_matches_single_pass(monkeypatch):
    x, y = grid(8)
    kw = {k: torch.stack([torch.tensor(v, dtype=F64)] * 5) for k, v in PARAMS["sie"][0].items()}
    kw["theta_e"] = torch.linspace(0.5, 1.5, 5, dtype=F64, requires_grad=True)
    ref = mass.sie.deflection(x, y, **kw)
    monkeypatch.setattr(mass.sie, "_CPU_CHUNK", 64)  # one image per chunk
    for xx, yy in ((x, y), (x.expand(5, -1, -1), y.expand(5, -1, -1))):
        got = mass.sie.deflection(xx, yy, **kw)
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    (g,) = torch.autograd.grad(got[0].sum(), kw["theta_e"])
    (g_ref,) = torch.autograd.grad(ref[0].sum(), kw["theta_e"])
    torch.testing.assert_close(g, g_ref)
