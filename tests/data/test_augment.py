"""Augmentations commute with rendering: T(render(labels)) == render(T(labels)).

The test renders an analytic elliptical Gaussian: a Gaussian of width ``sigma``
(arcsec) and axis ratio ``q`` at position angle ``pa`` (counter-clockwise from
+x), sheared by the reduced shear (g1, g2) with GalSim's matrix
``A = [[1 + g1, g2], [g2, 1 - g1]] / sqrt(1 - g²)`` and centred at (x0, y0)
arcsec; pixel (i, j) sits at (x_j, y_i), x right, y up.
"""

from __future__ import annotations

import math

import pytest
import torch

from lensml.data.augment import (
    Compose,
    LabelRules,
    RandomFlip,
    RandomRescale,
    RandomRot90,
    RandomShift,
    flip,
    rescale,
    rot90,
    shift,
)

NAMES = ("amp", "sigma", "q", "pa", "g1", "g2", "x0", "y0", "flux")
KINDS = {
    "sigma": "size",
    "pa": "angle",
    "g1": "spin2",
    "g2": "spin2",
    "x0": "position",
    "y0": "position",
    "flux": "flux",
}
SCALE = 0.1  # arcsec / pixel
RULES = LabelRules(NAMES, KINDS, position_scale=SCALE)
N = 48


def render(labels: torch.Tensor, n: int = N) -> torch.Tensor:
    """(B, 1, n, n) float64 image of the analytic profile for (B, 9) labels."""
    amp, sigma, q, pa, g1, g2, x0, y0, _ = labels.T
    c = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * SCALE
    y, x = torch.meshgrid(c, c, indexing="ij")
    dx = x[None] - x0[:, None, None]
    dy = y[None] - y0[:, None, None]
    # undo the shear: A^-1 = [[1 - g1, -g2], [-g2, 1 + g1]] / sqrt(1 - g²)
    norm = torch.sqrt(1 - g1**2 - g2**2)[:, None, None]
    g1_, g2_ = g1[:, None, None], g2[:, None, None]
    u = ((1 - g1_) * dx - g2_ * dy) / norm
    v = (-g2_ * dx + (1 + g1_) * dy) / norm
    cp, sp = torch.cos(pa)[:, None, None], torch.sin(pa)[:, None, None]
    xr = cp * u + sp * v
    yr = -sp * u + cp * v
    r2 = xr**2 + (yr / q[:, None, None]) ** 2
    return (amp[:, None, None] * torch.exp(-r2 / (2 * sigma[:, None, None] ** 2)))[:, None]


def labels_batch() -> torch.Tensor:
    rows = [
        [1.0, 0.35, 0.6, 0.4, 0.2, -0.1, 0.3, -0.2, 1.0],
        [2.0, 0.30, 0.8, 2.5, -0.15, 0.25, -0.4, 0.1, 1.0],
        [0.5, 0.40, 0.5, 1.2, 0.05, 0.3, 0.0, 0.5, 1.0],
    ]
    return torch.tensor(rows, dtype=torch.float64)


def assert_same(a: torch.Tensor, b: torch.Tensor, atol: float) -> None:
    err = (a - b).abs().max().item()
    assert err <= atol, f"max abs difference {err:.3g} > {atol}"


def test_render_follows_galsim_sign_convention():
    # g1 > 0 stretches along x: the profile is wider along x than along y
    lab = torch.tensor([[1.0, 0.3, 1.0, 0.0, 0.3, 0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    img = render(lab)[0, 0]
    assert img[N // 2, :].sum() > img[:, N // 2].sum()
    # g2 > 0 stretches along the diagonal x = y
    lab[0, 4:6] = torch.tensor([0.0, 0.3])
    img = render(lab)[0, 0]
    diag = torch.diagonal(img).sum()
    anti = torch.diagonal(img.flip(-1)).sum()
    assert diag > anti


@pytest.mark.parametrize("axis", ["x", "y"])
def test_flip_commutes_with_rendering(axis):
    lab = labels_batch()
    img, new = flip(render(lab), lab, RULES, axis)
    assert_same(img, render(new), 1e-12)
    assert (new[:, 5] == -lab[:, 5]).all() and (new[:, 4] == lab[:, 4]).all()
    if axis == "x":
        assert torch.allclose(new[:, 3], torch.remainder(math.pi - lab[:, 3], math.pi))


@pytest.mark.parametrize("k", [1, 2, 3, -1])
def test_rot90_commutes_with_rendering(k):
    lab = labels_batch()
    img, new = rot90(render(lab), lab, RULES, k)
    assert_same(img, render(new), 1e-12)


def test_rot90_is_counter_clockwise():
    # a blob at +x moves to +y under a 90° counter-clockwise rotation
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 2, 4] = 1.0  # row 2 (y = 0), column 4 (x = +2)
    out, _ = rot90(img, None, None, 1)
    assert out[0, 0, 4, 2] == 1.0  # row 4 (y = +2), column 2 (x = 0)


def test_rot90_spin2_rotates_by_twice_the_angle():
    lab = labels_batch()
    _, new = rot90(render(lab), lab, RULES, 1)
    assert torch.allclose(new[:, 4], -lab[:, 4]) and torch.allclose(new[:, 5], -lab[:, 5])
    assert torch.allclose(new[:, 6], -lab[:, 7]) and torch.allclose(new[:, 7], lab[:, 6])


def test_integer_shift_is_exact_and_moves_positions():
    lab = labels_batch()
    lab[:, 6:8] = 0.0  # keep the profile away from the periodic edge
    img, new = shift(render(lab), lab, RULES, torch.tensor([3.0, -2.0, 0.0]), 4.0)
    assert_same(img, render(new), 1e-5)  # roll wraps the far tails (< 1e-5) round the edge
    assert torch.allclose(new[:, 6], torch.tensor([0.3, -0.2, 0.0], dtype=torch.float64))
    assert torch.allclose(new[:, 7], torch.full((3,), 0.4, dtype=torch.float64))


def test_subpixel_shift_matches_rendering():
    lab = labels_batch()
    lab[:, 6:8] = 0.0
    img, new = shift(render(lab), lab, RULES, 0.37, -1.61)
    assert_same(img, render(new), 1e-6)


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_rescale_matches_rendering(factor):
    lab = labels_batch()
    lab[:, 6:8] *= 0.5
    img, new = rescale(render(lab), lab, RULES, factor)
    assert torch.allclose(new[:, 1], lab[:, 1] * factor)
    assert torch.allclose(new[:, 8], lab[:, 8] * factor**2)
    assert torch.equal(new[:, 4:6], lab[:, 4:6]) and torch.equal(new[:, 3], lab[:, 3])
    # bicubic interpolation of a Gaussian with a minor-axis sigma of ~1.5 pixels
    assert_same(img, render(new), 0.02 * float(img.max()))


def test_random_compose_is_seeded_per_item_and_commutes():
    lab = labels_batch()
    aug = Compose(
        [RandomFlip("x"), RandomFlip("y"), RandomRot90(), RandomShift(2.0, integer=True)],
        rules=RULES,
    )
    lab[:, 6:8] = 0.0
    img1, new1 = aug(render(lab), lab, torch.Generator().manual_seed(5))
    img2, new2 = aug(render(lab), lab, torch.Generator().manual_seed(5))
    assert torch.equal(img1, img2) and torch.equal(new1, new2)
    assert_same(img1, render(new1), 1e-5)
    img3, _ = aug(render(lab), lab, torch.Generator().manual_seed(6))
    assert not torch.equal(img1, img3)
    # single items (C, H, W) work too
    one, lab_one = aug(render(lab)[0], lab[0], torch.Generator().manual_seed(1))
    assert one.shape == (1, N, N) and lab_one.shape == (9,)


def test_random_rescale_draws_within_range():
    t = RandomRescale(0.9, 1.1, rules=RULES)
    p = t.draw(1000, torch.Generator().manual_seed(0))["factor"]
    assert p.min() >= 0.9 and p.max() <= 1.1


def test_transforms_refuse_global_randomness_and_bad_rules():
    with pytest.raises(ValueError, match=r"torch.Generator"):
        RandomFlip("x")(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"pairs"):
        LabelRules(("g1",), {"g1": "spin2"})
    with pytest.raises(ValueError, match=r"unknown kind"):
        LabelRules(("a",), {"a": "vector"})
    with pytest.raises(ValueError, match=r"LabelRules"):
        flip(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2), None, "x")
    with pytest.raises(ValueError, match=r"square"):
        rot90(torch.zeros(1, 1, 4, 5), None, None, 1)


def test_for_samples_adapter():
    aug = Compose([RandomRot90()], rules=RULES)
    fn = aug.for_samples()
    lab = labels_batch()[0].float()
    sample = {"image": render(labels_batch())[0].float(), "labels": lab, "meta": torch.tensor(1)}
    out = fn(sample, torch.Generator().manual_seed(0))
    assert set(out) == {"image", "labels", "meta"} and out["image"].shape == (1, N, N)


def test_angle_deg_labels_follow_the_radian_rule():
    """``angle_deg`` (the sersic generator's PA in degrees) transforms like ``angle``."""
    rad = LabelRules(("pa",), {"pa": "angle"})
    deg = LabelRules(("pa",), {"pa": "angle_deg"})
    img = torch.zeros(5, 1, 8, 8)
    phi = torch.tensor([[0.1], [0.7], [1.5], [2.2], [3.0]], dtype=torch.float64)
    for axis in ("x", "y"):
        _, a = flip(img, phi, rad, axis=axis)
        _, b = flip(img, torch.rad2deg(phi), deg, axis=axis)
        torch.testing.assert_close(torch.rad2deg(a), b)
    for k in range(4):
        _, a = rot90(img, phi, rad, k)
        _, b = rot90(img, torch.rad2deg(phi), deg, k)
        torch.testing.assert_close(torch.rad2deg(a), b)


@pytest.mark.parametrize("k", [-1, 0, 1, 2, 3, 5])
def test_batch_wide_flip_and_rotation_match_the_per_item_path(k):
    """A plain bool / int (one transform for the whole batch) takes a fast path: same result."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn((4, 2, 6, 6), generator=g)
    lab = torch.randn((4, 2), generator=g)
    rules = LabelRules(("g1", "g2"), {"g1": "spin2", "g2": "spin2"})
    for mirror in (False, True):
        fast = flip(x, lab, rules, "y", mask=mirror)
        slow = flip(x, lab, rules, "y", mask=torch.full((4,), mirror))
        torch.testing.assert_close(fast[0], slow[0], rtol=0, atol=0)
        torch.testing.assert_close(fast[1], slow[1], rtol=0, atol=0)
        # a fresh tensor in every case, never the input itself
        assert fast[0].data_ptr() != x.data_ptr() and fast[1].data_ptr() != lab.data_ptr()
    fast = rot90(x, lab, rules, k)
    slow = rot90(x, lab, rules, torch.full((4,), k))
    torch.testing.assert_close(fast[0], slow[0], rtol=0, atol=0)
    torch.testing.assert_close(fast[1], slow[1], rtol=0, atol=0)
    assert fast[0].data_ptr() != x.data_ptr()
