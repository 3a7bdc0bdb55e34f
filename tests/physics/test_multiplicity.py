"""Tests of :mod:`lensml.physics.multiplicity` (image finding by triangle mapping)."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from lensml.physics.mass import shear, sie, sis
from lensml.physics.multiplicity import count_images, find_images, is_multiply_imaged


def test_sis_two_images_inside_one_outside_with_analytic_positions():
    te = 1.0
    d = functools.partial(sis.deflection, theta_e=te, x0=0.1, y0=-0.2)
    bx = torch.tensor([[0.1 + 0.3, 0.1 + 0.6, 0.1 + 1.3, 0.1 - 0.2]])
    by = torch.tensor([[-0.2 + 0.1, -0.2 - 0.5, -0.2 + 0.4, -0.2 - 2.0]])
    res = find_images(d, bx, by, half_size=3.0, n_cells=200, center=(0.1, -0.2))
    assert res.count.tolist() == [[2, 2, 1, 1]]
    for s in range(4):
        beta = math.hypot(float(bx[0, s]) - 0.1, float(by[0, s]) + 0.2)
        radii = sorted(
            math.hypot(float(res.x[0, s, k]) - 0.1, float(res.y[0, s, k]) + 0.2)
            for k in range(int(res.count[0, s]))
        )
        expected = sorted([beta + te] + ([te - beta] if beta < te else []))
        assert radii == pytest.approx(expected, abs=1e-7)
        mus = sorted(float(m) for m in res.magnification[0, s, : int(res.count[0, s])])
        assert mus == pytest.approx(sorted(1 / (1 - te / r) for r in expected), rel=1e-5)


def test_sie_quad_near_centre_double_further_single_far():
    d = functools.partial(sie.deflection, theta_e=1.0, q=0.7, phi=0.4)
    bx = torch.tensor([0.02, 0.3, 2.0])[None]
    by = torch.tensor([0.01, 0.2, 0.0])[None]
    counts = count_images(d, bx, by, half_size=3.5, n_cells=256)
    assert counts.tolist() == [[4, 2, 1]]
    assert is_multiply_imaged(d, bx[:, 1:], by[:, 1:], half_size=3.5).tolist() == [True]
    assert is_multiply_imaged(d, bx[:, 2:], by[:, 2:], half_size=3.5).tolist() == [False]
    # every image outside the searched square: none found
    assert count_images(d, 10.0, 0.0, half_size=2.0, n_cells=32).tolist() == [[0]]


def test_batched_equals_looped():
    te = torch.tensor([0.8, 1.2, 0.5], dtype=torch.float64)
    q = torch.tensor([0.9, 0.6, 0.75], dtype=torch.float64)
    d = functools.partial(sie.deflection, theta_e=te, q=q, phi=0.2)
    bx = torch.tensor([[0.05, 0.6], [0.01, 1.0], [0.2, 0.01]], dtype=torch.float64)
    by = torch.tensor([[0.0, 0.1], [0.03, 0.4], [0.1, 0.0]], dtype=torch.float64)
    both = count_images(d, bx, by, half_size=2.5, n_cells=160)
    for i in range(3):
        di = functools.partial(sie.deflection, theta_e=float(te[i]), q=float(q[i]), phi=0.2)
        one = count_images(di, bx[i : i + 1], by[i : i + 1], half_size=2.5, n_cells=160)
        assert one.tolist() == both[i : i + 1].tolist()


def test_min_magnification_drops_faint_images():
    d = functools.partial(sis.deflection, theta_e=1.0)
    res = find_images(d, 0.95, 0.0, half_size=2.5, n_cells=200, min_magnification=0.1)
    assert res.count.tolist() == [[1]]  # the counter-image has |μ| = 1/19


@pytest.mark.peer
def test_against_lenstronomy_lens_equation_solver():
    pytest.importorskip("lenstronomy")
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LensModel.Solver.lens_equation_solver import LensEquationSolver

    lm = LensModel(["SIE", "SHEAR"])
    solver = LensEquationSolver(lm)
    cases = [
        (1.0, 0.7, 0.3, 0.05, -0.02),
        (1.3, 0.5, -1.0, -0.03, 0.06),
        (0.6, 0.85, 2.0, 0.1, 0.0),
    ]
    sources = [(0.02, 0.01), (0.05, -0.04), (0.3, 0.1), (0.9, -0.6)]
    for te, q, phi, g1, g2 in cases:
        t_l, e1, e2 = sie.sie_to_lenstronomy(te, q, phi)
        kw = [
            {
                "theta_E": float(t_l),
                "e1": float(e1),
                "e2": float(e2),
                "center_x": 0.0,
                "center_y": 0.0,
            },
            {"gamma1": g1, "gamma2": g2, "ra_0": 0.0, "dec_0": 0.0},
        ]
        defl = [
            functools.partial(sie.deflection, theta_e=te, q=q, phi=phi),
            functools.partial(shear.deflection, gamma1=g1, gamma2=g2),
        ]
        bx = torch.tensor([[s[0] for s in sources]], dtype=torch.float64)
        by = torch.tensor([[s[1] for s in sources]], dtype=torch.float64)
        res = find_images(defl, bx, by, half_size=3.0, n_cells=256)
        for s, (sx, sy) in enumerate(sources):
            k = int(res.count[0, s])
            xs, ys = res.x[0, s, :k].numpy(), res.y[0, s, :k].numpy()
            # every image we find solves lenstronomy's lens equation
            bx_l, by_l = lm.ray_shooting(xs, ys, kw)
            assert float(np.max(np.hypot(bx_l - sx, by_l - sy))) < 1e-8
            np.testing.assert_allclose(
                res.magnification[0, s, :k].numpy(), lm.magnification(xs, ys, kw), rtol=1e-3
            )
            # lenstronomy's grid search finds the same images; it may miss faint central ones
            # (e.g. |mu| = 0.036 at 0.06" for theta_E = 1.3, q = 0.5), so compare |mu| >= 0.1
            xi, yi = solver.image_position_from_source(
                sx,
                sy,
                kw,
                min_distance=0.05,
                search_window=6.0,
                precision_limit=1e-10,
                num_iter_max=100,
            )
            bright_ref = np.abs(lm.magnification(xi, yi, kw)) >= 0.1
            bright = np.abs(res.magnification[0, s, :k].numpy()) >= 0.1
            assert int(bright.sum()) == int(bright_ref.sum()), (te, q, phi, sx, sy)
            for x_ref, y_ref in zip(xi[bright_ref], yi[bright_ref], strict=True):
                assert float(np.min(np.hypot(xs - x_ref, ys - y_ref))) < 1e-5


def test_bad_input():
    d = functools.partial(sis.deflection, theta_e=1.0)
    with pytest.raises(ValueError, match="half_size"):
        find_images(d, 0.1, 0.0, half_size=0.0)
    with pytest.raises(ValueError, match="beta_x"):
        find_images(d, torch.zeros(2), torch.zeros(3), half_size=2.0)
    with pytest.raises(ValueError, match="n_cells"):
        find_images(d, 0.1, 0.0, half_size=2.0, n_cells=4)
    with pytest.raises(ValueError, match="deflect"):
        find_images([], 0.1, 0.0, half_size=2.0)
