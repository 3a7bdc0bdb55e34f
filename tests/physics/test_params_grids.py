"""Parameter validation, pixel grids and block downsampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lensml.physics.grids import PixelGrid, downsample, upsample
from lensml.physics.params import AXIS_RATIO, ParamSpec, as_param, as_params, check_coords
from lensml.registry import Registry


def test_as_param_shapes_and_dtype():
    like = torch.zeros(3, 3, dtype=torch.float64)
    p = as_param(0.5, AXIS_RATIO, "SIE", like=like)
    assert p.shape == (1, 1, 1) and p.dtype == torch.float64
    p = as_param(torch.tensor([0.2, 0.9]), AXIS_RATIO, "SIE", like=like, ndim=4)
    assert p.shape == (2, 1, 1, 1) and p.dtype == torch.float64


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, math.nan, math.inf])
def test_as_param_rejects_out_of_range(bad):
    with pytest.raises(
        ValueError, match=r"SIE: parameter 'q' must be in \(0, 1\]|'q' contains NaN"
    ):
        as_param(bad, AXIS_RATIO, "SIE")


def test_as_param_rejects_bad_shape_and_type():
    with pytest.raises(ValueError, match="'q' must be a number or a \\(B,\\) tensor; got shape"):
        as_param(torch.full((2, 2), 0.5), AXIS_RATIO, "SIE")
    with pytest.raises(ValueError, match="'q' must be a number"):
        as_param("0.5", AXIS_RATIO, "SIE")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'q' must be a number"):
        as_param(True, AXIS_RATIO, "SIE")  # type: ignore[arg-type]


def test_as_params_batch_mismatch_and_missing():
    specs = (AXIS_RATIO, ParamSpec("theta_e", "arcsec", 0, math.inf, low_open=True))
    with pytest.raises(ValueError, match="different batch sizes"):
        as_params({"q": torch.full((2,), 0.5), "theta_e": torch.ones(3)}, specs, "SIE")
    with pytest.raises(ValueError, match="missing parameter 'theta_e'"):
        as_params({"q": 0.5}, specs, "SIE")
    out = as_params({"q": torch.full((4,), 0.5), "theta_e": 1.0}, specs, "SIE")
    assert out["q"].shape == (4, 1, 1) and out["theta_e"].shape == (1, 1, 1)


def test_range_string():
    assert AXIS_RATIO.range_str == "(0, 1]"
    assert ParamSpec("a", "arcsec").range_str == "(-inf, inf)"
    assert ParamSpec("b", "arcsec", 0.0).range_str == "[0, inf)"


def test_check_coords():
    x = torch.zeros(4, 4)
    check_coords(x, x, "f")
    with pytest.raises(ValueError, match="same shape"):
        check_coords(x, torch.zeros(4, 5), "f")
    with pytest.raises(ValueError, match=r"shape \(H, W\) or \(B, H, W\)"):
        check_coords(torch.zeros(4), torch.zeros(4), "f")
    with pytest.raises(ValueError, match="floating-point"):
        check_coords(torch.zeros(4, 4, dtype=torch.int64), x, "f")


def test_grid_coordinates_centred_and_oriented():
    g = PixelGrid(nx=5, ny=3, pixel_scale=0.2, center=(1.0, -1.0))
    x, y = g.coordinates(dtype=torch.float64)
    assert x.shape == (3, 5)
    np.testing.assert_allclose(x[0].numpy(), 1.0 + 0.2 * np.arange(-2, 3), atol=1e-15)
    np.testing.assert_allclose(y[:, 0].numpy(), -1.0 + 0.2 * np.arange(-1, 2), atol=1e-15)
    assert torch.all(x[:, 1:] > x[:, :-1]) and torch.all(y[1:] > y[:-1])  # x right, y up
    assert g.extent == pytest.approx((0.5, 1.5, -1.3, -0.7))
    assert g.pixel_area == pytest.approx(0.04)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_supersampled_coordinates_average_to_pixel_centres(k):
    g = PixelGrid.square(6, 0.04)
    x, y = g.coordinates(dtype=torch.float64)
    xs, ys = g.coordinates(supersample=k, dtype=torch.float64)
    assert xs.shape == (6 * k, 6 * k)
    torch.testing.assert_close(downsample(xs, k), x, rtol=0, atol=1e-15)
    torch.testing.assert_close(downsample(ys, k), y, rtol=0, atol=1e-15)
    assert g.supersampled(k).pixel_scale == pytest.approx(0.04 / k)


def test_downsample_block_mean_and_upsample_inverse():
    img = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).reshape(2, 3, 4, 6)
    d = downsample(img, 2)
    assert d.shape == (2, 3, 2, 3)
    assert d[0, 0, 0, 0] == pytest.approx(img[0, 0, :2, :2].mean().item())
    torch.testing.assert_close(downsample(upsample(d, 2), 2), d)
    assert img.sum() == pytest.approx(4 * d.sum().item())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nx": 0, "ny": 4, "pixel_scale": 0.1}, "'nx' must be an integer >= 1"),
        ({"nx": 4, "ny": 4, "pixel_scale": 0.0}, "'pixel_scale' must be a finite number > 0"),
        ({"nx": 4, "ny": 4, "pixel_scale": -0.1}, "'pixel_scale' must be a finite number > 0"),
        ({"nx": 4, "ny": 4, "pixel_scale": math.nan}, "'pixel_scale' must be a finite number > 0"),
        ({"nx": 4.0, "ny": 4, "pixel_scale": 0.1}, "'nx' must be an integer"),
    ],
)
def test_grid_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PixelGrid(**kwargs)


def test_downsample_rejects_bad_factor():
    with pytest.raises(ValueError, match="not divisible by factor 3"):
        downsample(torch.zeros(1, 4, 4), 3)
    with pytest.raises(ValueError, match="'factor' must be an integer >= 1"):
        downsample(torch.zeros(1, 4, 4), 0)
    with pytest.raises(ValueError, match="'supersample' must be an integer >= 1"):
        PixelGrid.square(4, 0.1).coordinates(supersample=2.5)  # type: ignore[arg-type]


def test_registry():
    reg: Registry[type] = Registry("thing")

    @reg.register("Foo")
    class Foo:
        pass

    assert reg.get("foo") is Foo and "FOO" in reg and len(reg) == 1 and list(reg) == ["foo"]
    with pytest.raises(KeyError, match="unknown thing 'bar'; known: foo"):
        reg.get("bar")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("foo")(int)


def test_check_pixel_scale_and_as_maps():
    from lensml.physics.params import as_maps, check_pixel_scale

    assert check_pixel_scale(torch.tensor(0.5), "f") == 0.5
    for bad in (0.0, -1.0, math.inf, math.nan, True, "0.1"):
        with pytest.raises(ValueError, match=r"f: 'pixel_scale' must be a finite number in"):
            check_pixel_scale(bad, "f")  # type: ignore[arg-type]
    assert as_maps(torch.zeros(4, 5), "kappa", "f").shape == (1, 4, 5)
    with pytest.raises(ValueError, match="'kappa' contains NaN"):
        as_maps(torch.full((3, 3), math.nan), "kappa", "f")
    with pytest.raises(ValueError, match="H, W >= 2"):
        as_maps(torch.zeros(1, 5), "kappa", "f", min_size=2)
    with pytest.raises(ValueError, match="floating-point"):
        as_maps(torch.zeros(3, 3, dtype=torch.int32), "kappa", "f")
