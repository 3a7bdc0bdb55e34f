"""Sérsic, Gaussian and composite light profiles: analytic checks, lenstronomy, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lensml.physics.grids import PixelGrid
from lensml.physics.light import LIGHT_PROFILES, composite, gaussian, sersic

F64 = torch.float64


def test_b_n_matches_exact_root():
    n = np.array([0.8, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0])
    approx = sersic.b_n(torch.tensor(n, dtype=F64)).numpy()
    np.testing.assert_allclose(approx, sersic.b_n_exact(n), rtol=1e-4)
    # near the series' limit of validity the asymptotic series is less accurate (measured 5e-4)
    n_low = np.array([0.36, 0.4, 0.5, 0.6, 0.7])
    approx = sersic.b_n(torch.tensor(n_low, dtype=F64)).numpy()
    np.testing.assert_allclose(approx, sersic.b_n_exact(n_low), rtol=6e-4)
    n_poly = np.array([0.1, 0.2, 0.3])  # MacArthur et al. quartic
    approx = sersic.b_n(torch.tensor(n_poly, dtype=F64)).numpy()
    np.testing.assert_allclose(approx, sersic.b_n_exact(n_poly), rtol=5e-2)


def test_flux_amp_mag_round_trips():
    amp = torch.tensor([0.3, 2.0, 11.0], dtype=F64)
    r_eff, n, q = (
        torch.tensor([0.4, 1.0, 2.5], dtype=F64),
        torch.tensor([0.5, 2.0, 6.0], dtype=F64),
        0.7,
    )
    flux = sersic.total_flux(amp, r_eff, n, q)
    torch.testing.assert_close(sersic.amp_from_flux(flux, r_eff, n, q), amp, rtol=1e-12, atol=0)
    mag = sersic.mag_from_flux(flux, 30.0)
    torch.testing.assert_close(sersic.flux_from_mag(mag, 30.0), flux, rtol=1e-12, atol=0)
    assert sersic.mag_from_flux(1.0, 25.0).item() == pytest.approx(25.0)
    rc = sersic.circularised_radius(r_eff, 0.49)
    torch.testing.assert_close(rc, r_eff * 0.7)
    torch.testing.assert_close(sersic.major_axis_radius(rc, 0.49), r_eff)


@pytest.mark.parametrize("n", [0.5, 1.0, 2.5, 4.0])
def test_integral_equals_total_flux(n):
    grid = PixelGrid.square(1600, 0.0125)  # 20" box, even size: no sample at the centre
    x, y = grid.coordinates(dtype=F64)
    r_eff, q = 0.25, 0.6
    sb = sersic.surface_brightness(x, y, 1.0, r_eff, n, q, 0.4, 0.01, -0.02)
    total = float(sb.sum()) * grid.pixel_area
    assert total == pytest.approx(float(sersic.total_flux(1.0, r_eff, n, q)), rel=5e-3)


@pytest.mark.peer
def test_sersic_matches_lenstronomy(monkeypatch):
    from lenstronomy.LensModel.Profiles.sersic_utils import SersicUtil
    from lenstronomy.LightModel.light_model import LightModel

    # lenstronomy uses b_n = 1.9992 n - 0.3271; give it our b_n to compare the conventions
    monkeypatch.setattr(
        SersicUtil,
        "b_n",
        staticmethod(lambda n: float(sersic.b_n(torch.tensor(float(n), dtype=F64)))),
    )
    grid = PixelGrid.square(40, 0.1)
    x, y = grid.coordinates(dtype=F64)
    model = LightModel(["SERSIC_ELLIPSE"])
    for amp, r_eff, n, q, phi, x0, y0 in [
        (2.0, 0.8, 1.0, 0.5, 0.3, 0.1, -0.2),
        (0.7, 1.5, 4.0, 0.8, -1.1, 0.0, 0.05),
        (5.0, 0.4, 0.6, 0.3, 2.0, -0.3, 0.2),
    ]:
        e = (1 - q) / (1 + q)
        kw = {
            "amp": amp,
            "R_sersic": r_eff * math.sqrt(q),
            "n_sersic": n,
            "e1": e * math.cos(2 * phi),
            "e2": e * math.sin(2 * phi),
            "center_x": x0,
            "center_y": y0,
        }
        ref = model.surface_brightness(x.numpy().ravel(), y.numpy().ravel(), [kw])
        ours = sersic.surface_brightness(x, y, amp, r_eff, n, q, phi, x0, y0)[0].numpy().ravel()
        np.testing.assert_allclose(ours, ref, rtol=1e-4)


def test_gaussian_normalised_and_oriented():
    grid = PixelGrid.square(200, 0.05)
    x, y = grid.coordinates(dtype=F64)
    sb = gaussian.surface_brightness(x, y, 3.0, 0.4, 0.5, math.pi / 2, 0.1, 0.0)
    assert float(sb.sum()) * grid.pixel_area == pytest.approx(3.0, rel=1e-6)
    # major axis along +y: the profile is wider in y than in x
    i0, j0 = 100, 101
    assert sb[0, i0 + 10, j0] > sb[0, i0, j0 + 10]


def test_bulge_disk_and_sum_components():
    grid = PixelGrid.square(300, 0.05)
    x, y = grid.coordinates(dtype=F64)
    bd = composite.bulge_disk(x, y, 10.0, 0.3, 0.3, 4.0, 0.8, 0.2, 1.0, 0.5, 1.0)
    assert float(bd.sum()) * grid.pixel_area == pytest.approx(10.0, rel=2e-2)
    amp_b = sersic.amp_from_flux(3.0, 0.3, 4.0, 0.8)
    bulge = sersic.surface_brightness(x, y, amp_b, 0.3, 4.0, 0.8, 0.2)
    comps = [
        ("sersic", {"amp": amp_b, "r_eff": 0.3, "n": 4.0, "q": 0.8, "phi": 0.2}),
        (
            "sersic",
            {
                "amp": sersic.amp_from_flux(7.0, 1.0, 1.0, 0.5),
                "r_eff": 1.0,
                "n": 1.0,
                "q": 0.5,
                "phi": 1.0,
            },
        ),
    ]
    torch.testing.assert_close(composite.sum_components(x, y, comps), bd, rtol=1e-5, atol=0)
    clumps = composite.sum_components(
        x, y, [*comps, ("gaussian", {"flux": 1.0, "sigma": 0.1, "x0": 1.0})]
    )
    assert float((clumps - bd).sum()) * grid.pixel_area == pytest.approx(1.0, rel=1e-3)
    assert torch.equal(bulge, sersic.surface_brightness(x, y, amp_b, 0.3, 4.0, 0.8, 0.2))
    assert set(LIGHT_PROFILES.names()) >= {"sersic", "gaussian", "bulge_disk"}
    assert LIGHT_PROFILES.get("sersic").params[2].name == "n"


def test_batched_equals_looped_and_dtypes():
    x, y = PixelGrid.square(16, 0.1).coordinates(dtype=F64)
    n = torch.tensor([0.7, 2.0, 5.0], dtype=F64)
    r = torch.tensor([0.3, 0.6, 1.2], dtype=F64)
    batched = sersic.surface_brightness(x, y, 1.0, r, n, 0.6, 0.5, 0.05, 0.0)
    for i in range(3):
        single = sersic.surface_brightness(x, y, 1.0, float(r[i]), float(n[i]), 0.6, 0.5, 0.05)
        torch.testing.assert_close(batched[i], single[0])
    x32, y32 = x.float(), y.float()
    out32 = sersic.surface_brightness(x32, y32, 1.0, r.float(), n.float(), 0.6, 0.5, 0.05, 0.0)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), batched, rtol=2e-5, atol=0)


def test_gradients_finite_at_centre():
    x, y = PixelGrid.square(9, 0.1).coordinates(dtype=F64)  # has a sample at R = 0
    params = [
        torch.tensor([v], dtype=F64, requires_grad=True)
        for v in (1.0, 0.5, 3.0, 0.7, 0.2, 0.0, 0.0)
    ]
    sb = sersic.surface_brightness(x, y, *params)
    sb.sum().backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert params[2].grad.abs() > 0 and params[1].grad.abs() > 0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n": 0.0}, "'n'"),
        ({"n": 20.0}, "'n'"),
        ({"q": 0.0}, "'q'"),
        ({"amp": math.nan}, "'amp'"),
        ({"r_eff": -1.0}, "'r_eff'"),
    ],
)
def test_bad_input(kwargs, name):
    x, y = PixelGrid.square(4, 0.1).coordinates()
    base = {"amp": 1.0, "r_eff": 1.0, "n": 1.0, "q": 0.5}
    with pytest.raises(ValueError, match=name):
        sersic.surface_brightness(x, y, **{**base, **kwargs})
    with pytest.raises(ValueError, match="'flux'"):
        sersic.amp_from_flux(math.nan, 1.0, 1.0, 1.0)
