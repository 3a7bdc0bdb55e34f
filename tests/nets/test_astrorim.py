"""AstroRIM networks (lensml.nets.astrorim, .astrorim_forward, .rim).

Checks: the encoder's nine heads stay inside the paper's ranges (eqs. 7–15) for any input;
parameter counts (encoder, paper-size RIM ≈ 300 k); the forward operator's deflection against
lenstronomy (SIE + SHEAR + NFW) and its Moffat kernel against GalSim; the operator equals
``lensml.physics.raytrace.lens_pixelated_source`` + PSF convolution with the true parameters;
it reproduces the ``strong`` generator's noiseless image to noise level; the adjoint passes the
dot-product test; gradients (finite, and against finite differences); the paper's loss
decreases in a tiny overfit; flux-scale equivariance; engine integration; bad input.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

import lensml.nets.rim  # noqa: F401  (registers "astrorim" and "astrorim-small")
from lensml.nets.astrorim import (
    DIHEDRAL,
    PAPER_RANGES,
    PARAM_KINDS,
    PARAM_NAMES,
    LensParameterEncoder,
    dihedral_copies,
    dihedral_mean,
    dihedral_params,
    labels_to_params,
    params_to_labels,
    params_to_tensor,
    symmetrised_params,
    tensor_to_params,
)
from lensml.nets.astrorim_forward import ConditionalForwardOperator, deflection_field
from lensml.nets.blocks import count_parameters
from lensml.nets.rim import LABEL_SCALES, RIM, AstroRIM, label_penalty, parameter_penalty
from lensml.physics.convolve import convolve
from lensml.physics.grids import PixelGrid
from lensml.physics.mass import nfw, shear, sie
from lensml.physics.raytrace import lens_pixelated_source, sample_source
from lensml.train import build_network

F64 = torch.float64
SMALL = {"image_size": 32, "source_size": 32, "psf_size": 9}


@pytest.fixture(autouse=True)
def _one_thread():
    """Small CPU models run fastest on one thread (the test machine has 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _params(n: int = 3, seed: int = 0, dtype=F64) -> dict[str, torch.Tensor]:
    """Lens parameters (normalised units) spanning the paper's ranges, NFW included."""
    g = torch.Generator().manual_seed(seed)

    def u(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(n, generator=g, dtype=F64)).to(dtype)

    return {
        "b": u(0.2, 0.45),
        "q": u(0.4, 1.0),
        "phi": u(-math.pi, math.pi),
        "x0": u(-0.1, 0.1),
        "y0": u(-0.1, 0.1),
        "gamma": u(0.0, 0.15),
        "gamma_phi": u(-math.pi, math.pi),
        "kappa_s": u(0.01, 0.3),
        "r_s": u(0.1, 0.5),
    }


def _blobs(n: int, ns: int, g: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """Two Gaussian blobs per source on the [−1, 1] source grid, ``(n, 1, ns, ns)``."""
    x, y = PixelGrid.square(ns, 2.0 / ns).coordinates(dtype=dtype)
    out = torch.zeros(n, 1, ns, ns, dtype=dtype)
    for _ in range(2):
        c = (torch.rand(n, 4, generator=g, dtype=dtype) * torch.tensor([0.3, 0.3, 0.06, 0.5])).to(
            dtype
        ) + torch.tensor([-0.15, -0.15, 0.04, 0.5], dtype=dtype)
        cx, cy, s, a = (c[:, i, None, None] for i in range(4))
        out[:, 0] += a * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
    return out


def _synthetic_batch(n: int = 4, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Lensed Gaussian-blob sources rendered by the operator, 1 % Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    p = {k: v.float() for k, v in _params(n, seed).items()}
    src = _blobs(n, size, g)
    op = ConditionalForwardOperator(image_size=size, source_size=size, psf_size=9, fwhm=2.0)
    with torch.no_grad():
        img = op.apply(src, op.geometry(p))
        img = img + 0.01 * img.amax() * torch.randn(img.shape, generator=g)
    return {"image": img, "source": src}


# ---------------------------------------------------------------------- encoder
@functools.cache
def _paper_encoder() -> LensParameterEncoder:
    return LensParameterEncoder().eval()


def test_encoder_shapes_and_parameter_count():
    enc = _paper_encoder()
    # eqs. 7–13 layer by layer: four conv+GN stages, FC 8192→128→64, nine 64→1 heads
    convs = [(1, 32), (32, 64), (64, 96), (96, 128)]
    expected = sum(9 * a * b + b + 2 * b for a, b in convs) + 8192 * 128 + 128 + 128 * 64 + 64
    expected += 9 * (64 + 1)
    assert count_parameters(enc) == expected == 1_243_113
    with torch.no_grad():
        out = enc(torch.rand(2, 1, 96, 96))
    assert tuple(out) == PARAM_NAMES
    assert all(v.shape == (2,) for v in out.values())


@pytest.mark.parametrize("kind", ["zeros", "huge", "negative", "saturated-heads"])
def test_heads_respect_paper_ranges_for_any_input(kind):
    enc = LensParameterEncoder(channels=[8, 8, 16, 16], fc=[16, 8])
    g = torch.Generator().manual_seed(1)
    y = torch.randn(6, 1, 48, 48, generator=g)
    if kind == "zeros":
        y = torch.zeros_like(y)
    elif kind == "huge":
        y = y * 1e8
    elif kind == "negative":
        y = -1e4 * y.abs()
    else:  # push every head deep into saturation, both signs
        with torch.no_grad():
            for i, head in enumerate(enc.heads.values()):
                head.weight.fill_((-1) ** i * 1e6)
    with torch.no_grad():
        out = enc(y)
    for name, value in out.items():
        lo, hi = PAPER_RANGES[name]
        assert torch.isfinite(value).all(), name
        assert bool(((value >= lo) & (value <= hi)).all()), (name, value, lo, hi)


def test_encoder_initial_values_and_range_override():
    enc = LensParameterEncoder(channels=[8, 8], fc=[8])
    with torch.no_grad():
        for head in enc.heads.values():
            head.weight.zero_()
            head.bias.zero_()
        out = enc(torch.rand(1, 1, 16, 16))
    start = {"b": 0.08, "q": 0.7, "gamma": 0.05, "kappa_s": 0.05, "r_s": 0.2, "phi": 0.0}
    for name, value in start.items():
        assert float(out[name]) == pytest.approx(value, abs=1e-6)
    wide = LensParameterEncoder(channels=[8, 8], fc=[8], ranges={"b": [0.01, 1.6]})
    assert wide.ranges["b"] == (0.01, 1.6) and wide.ranges["q"] == PAPER_RANGES["q"]
    with pytest.raises(ValueError, match="ranges\\['q'\\]"):
        LensParameterEncoder(ranges={"q": [0.2, 1.5]})
    with pytest.raises(ValueError, match="unknown parameter 'theta'"):
        LensParameterEncoder(ranges={"theta": [0, 1]})
    with pytest.raises(ValueError, match="lo < hi"):
        LensParameterEncoder(ranges={"b": [0.3, 0.1]})
    with pytest.raises(ValueError, match="LensParameterEncoder: input must have shape"):
        enc(torch.rand(1, 2, 16, 16))


def test_labels_params_round_trip():
    g = torch.Generator().manual_seed(3)
    labels = torch.rand(5, 9, generator=g, dtype=F64)
    half = torch.tensor([1.92, 1.92, 9.6, 3.84, 1.0], dtype=F64)
    p = labels_to_params(labels, half)
    assert torch.allclose(p["b"], labels[:, 0] / half) and torch.allclose(p["q"], labels[:, 1])
    assert torch.allclose(params_to_labels(p, half), labels, rtol=0, atol=1e-15)
    assert params_to_tensor(p).shape == (5, 9)
    with pytest.raises(ValueError, match="half_field"):
        labels_to_params(labels, 0.0)
    with pytest.raises(ValueError, match="shape \\(B, 9\\)"):
        labels_to_params(labels[:, :8], 1.0)


# ---------------------------------------------------------------------- forward operator
@pytest.mark.peer
def test_deflection_matches_lenstronomy_sie_shear_nfw():
    from lenstronomy.LensModel.lens_model import LensModel

    p = _params(3, seed=5)
    x, y = PixelGrid.square(24, 2.0 / 24).coordinates(dtype=F64)
    ax, ay = deflection_field(x, y, p, core=0.0, use_nfw=True)
    model = LensModel(["SIE", "SHEAR", "NFW"])
    for i in range(3):
        v = {k: float(t[i]) for k, t in p.items()}
        _, e1, e2 = sie.sie_to_lenstronomy(v["b"], v["q"], v["phi"])
        g1, g2 = (
            v["gamma"] * math.cos(2 * v["gamma_phi"]),
            v["gamma"] * math.sin(2 * v["gamma_phi"]),
        )
        kwargs = [
            {"theta_E": v["b"], "e1": e1, "e2": e2, "center_x": v["x0"], "center_y": v["y0"]},
            {"gamma1": g1, "gamma2": g2, "ra_0": 0.0, "dec_0": 0.0},
            {
                "Rs": v["r_s"],
                "alpha_Rs": float(nfw.kappa_s_to_alpha_rs(v["kappa_s"], v["r_s"])),
                "center_x": v["x0"],
                "center_y": v["y0"],
            },
        ]
        lx, ly = model.alpha(x.numpy().ravel(), y.numpy().ravel(), kwargs)
        np.testing.assert_allclose(ax[i].numpy().ravel(), lx, rtol=0, atol=1e-8)
        np.testing.assert_allclose(ay[i].numpy().ravel(), ly, rtol=0, atol=1e-8)


@pytest.mark.peer
@pytest.mark.parametrize(("oversample", "tol"), [(5, 3e-3), (9, 1e-3)])
def test_moffat_kernel_matches_galsim(oversample, tol):
    """Pixel-integrated Moffat (eq. 23) vs GalSim's exact real-space pixel convolution; the
    midpoint-rule integration converges with ``psf_oversample`` (2e-3, 6e-4 of the peak)."""
    import galsim

    op = ConditionalForwardOperator(
        image_size=32, source_size=32, fwhm=3.0, beta=4.5, psf_oversample=oversample
    ).double()
    kern = op.psf_kernel(F64)[0, 0].detach().numpy()
    ref = galsim.Moffat(beta=4.5, fwhm=3.0).drawImage(nx=21, ny=21, scale=1.0, method="real_space")
    ref = ref.array / ref.array.sum()
    assert kern.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(kern, ref, rtol=0, atol=tol * ref.max())


@pytest.mark.parametrize("supersample", [1, 2])
def test_operator_equals_lens_pixelated_source_with_true_parameters(supersample):
    """F(x; Θ_true) = PSF * lens_pixelated_source(SIE + shear + NFW) to rounding (float64)."""
    n, size, ns = 3, 40, 32
    p = _params(n, seed=2)
    g = torch.Generator().manual_seed(2)
    src = torch.rand(n, 1, ns, ns, generator=g, dtype=F64)
    op = ConditionalForwardOperator(
        image_size=size,
        source_size=ns,
        source_fov=0.8,
        psf_size=9,
        core=0.01,
        supersample=supersample,
    ).double()
    with torch.no_grad():
        op.psf_residual.normal_(0.0, 1e-3, generator=g)
        model = op(src, p, background=False)
        kernel = op.psf_kernel(F64)
    grid = PixelGrid.square(size, 2.0 / size)
    sgrid = PixelGrid.square(ns, 1.6 / ns)
    deflectors = [
        functools.partial(
            sie.deflection,
            theta_e=p["b"],
            q=p["q"],
            phi=p["phi"],
            x0=p["x0"],
            y0=p["y0"],
            core=0.01,
        ),
        functools.partial(
            shear.deflection,
            gamma1=p["gamma"] * torch.cos(2 * p["gamma_phi"]),
            gamma2=p["gamma"] * torch.sin(2 * p["gamma_phi"]),
        ),
        functools.partial(
            nfw.deflection,
            r_s=p["r_s"],
            alpha_rs=nfw.kappa_s_to_alpha_rs(p["kappa_s"], p["r_s"]),
            x0=p["x0"],
            y0=p["y0"],
        ),
    ]
    # source in flux per source pixel → surface brightness; the result is flux per image pixel
    ref = lens_pixelated_source(grid, deflectors, src / sgrid.pixel_area, sgrid, supersample)
    ref = convolve(ref, kernel, method="direct")
    assert ref.abs().max() > 0.05
    torch.testing.assert_close(model, ref, rtol=0, atol=1e-12 * float(ref.abs().max()))
    # the gather-based warp is grid_sample's bilinear sampling
    geom = op.geometry(p)
    torch.testing.assert_close(
        op.warp(src, geom), sample_source(src, sgrid, geom.bx, geom.by), rtol=0, atol=1e-13
    )


@functools.cache
def _generator_sample():
    """Three ``strong`` lenses (v1, SIE + shear + NFW, no subhalos/pair) with noiseless images,
    48² pixels of 0.04″ and a source grid 4× finer than the image (192², 0.01″)."""
    from lensml.sims.strong import StrongGenerator, strong_config

    cfg = strong_config(
        "v1",
        size=48,
        source_size=192,
        store_noiseless=True,
        subhalo_prob=0.0,
        pair_prob=0.0,
        nfw_prob=1.0,
        count_images=False,
        cosmic_ray_prob=0.0,
        theta_e_range=(0.45, 0.6),
    )
    return StrongGenerator().generate(3, torch.Generator().manual_seed(1), cfg)


def test_operator_reproduces_strong_generator_to_noise_level():
    """With the generator's true labels, source and PSF, F(x) matches its noiseless lensed image
    (4 × 4 sub-pixel ray shooting of the analytic source) to χ²/pixel < 1 (measured 0.05–0.27)
    and 3 % in L2 (measured 1.2–2.5 %)."""
    out = _generator_sample()
    size, ns = 48, 192
    half = out["pixel_scale"].double() * size / 2
    params = labels_to_params(out["labels"].double(), half)
    assert bool((params["kappa_s"] > 0).all())  # the NFW halo is exercised
    op = ConditionalForwardOperator(image_size=size, source_size=ns, core=0.0).double()
    with torch.no_grad():
        model = op(out["source"].double(), params, psf=out["psf"].double(), background=False)
    lensed, sigma = out["lensed"].double(), out["noise_sigma"].double()
    chi2 = (((model - lensed) / sigma) ** 2).mean(dim=(1, 2, 3))
    rel = (model - lensed).flatten(1).norm(dim=1) / lensed.flatten(1).norm(dim=1)
    assert bool((chi2 < 1.0).all()), chi2
    assert bool((rel < 0.03).all()), rel
    # and the noisy observation minus lens light is consistent with F(x) + noise
    resid = (out["image"].double() - out["lens_light"].double() - model) / sigma
    assert float((resid**2).mean()) < 1.6


@pytest.mark.parametrize(("supersample", "per_item_psf"), [(1, False), (2, True)])
def test_adjoint_dot_product(supersample, per_item_psf):
    """⟨F x, r⟩ = ⟨x, F† r⟩ in float64 (required 1e-5 relative; holds to ~1e-14)."""
    n, size, ns = 3, 48, 40
    g = torch.Generator().manual_seed(7)
    op = ConditionalForwardOperator(
        image_size=size, source_size=ns, source_fov=1.2, psf_size=11, supersample=supersample
    ).double()
    with torch.no_grad():
        op.psf_residual.normal_(0.0, 1e-2, generator=g)  # an asymmetric kernel
    psf = torch.rand(n, 1, 11, 11, generator=g, dtype=F64) if per_item_psf else None
    geom = op.geometry(_params(n, seed=7))
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(n, 1, ns, ns, generator=g, dtype=F64)
            r = torch.randn(n, 1, size, size, generator=g, dtype=F64)
            lhs = float((op.apply(x, geom, psf) * r).sum())
            rhs = float((x * op.adjoint(r, geom, psf)).sum())
            assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
        # per item too (no cross-talk between observations)
        fx = (op.apply(x, geom, psf) * r).sum(dim=(1, 2, 3))
        xf = (x * op.adjoint(r, geom, psf)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(fx, xf, rtol=1e-12, atol=0)


def test_operator_float32_matches_float64_and_gradients_match_finite_differences():
    n, size, ns = 2, 16, 16
    p64 = _params(n, seed=4)
    g = torch.Generator().manual_seed(4)
    src = torch.rand(n, 1, ns, ns, generator=g, dtype=F64)
    op = ConditionalForwardOperator(image_size=size, source_size=ns, psf_size=5)
    with torch.no_grad():
        m32 = op(src.float(), {k: v.float() for k, v in p64.items()})
    op64 = op.double()
    with torch.no_grad():
        m64 = op64(src, p64)
    assert m32.dtype == torch.float32 and m64.dtype == F64
    torch.testing.assert_close(m32.double(), m64, rtol=0, atol=2e-5 * float(m64.abs().max()))
    # d/dΘ of the model image (warp weights carry the gradient) and d/d(PSF, background)
    names = ("b", "q", "gamma", "kappa_s")
    leaves = [p64[k].clone().requires_grad_(True) for k in names]

    def model(*vals):
        return op64(src, {**p64, **dict(zip(names, vals, strict=True))})

    assert torch.autograd.gradcheck(model, leaves, eps=1e-7, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------- RIM and AstroRIM
def test_paper_rim_parameter_count_is_about_300k():
    rim = RIM()
    # layer by layer (module docstring table)
    expected = (
        (2 * 16 * 9 + 16)
        + (16 * 32 * 9 + 32)
        + (64 * 64 * 9 + 64 + 64 * 32 * 9 + 32)
        + (32 * 48 * 9 + 48)
        + (112 * 128 * 9 + 128 + 112 * 64 * 9 + 64)
        + (64 * 32 * 16 + 32)
        + (32 * 16 * 16 + 16)
        + (16 * 4 * 9 + 4)
        + (2 + 1)
    )
    assert count_parameters(rim) == expected == 309_527
    assert abs(expected - 300_000) / 300_000 < 0.05
    net = build_network("astrorim", seed=0)
    assert count_parameters(net.rim) == 309_527
    assert count_parameters(net.operator) == 444  # paper: "~450" global PSF/noise parameters
    assert count_parameters(net) == 309_527 + 444 + 1_243_113


@functools.cache
def _small(seed: int = 0) -> AstroRIM:
    return build_network("astrorim-small", dict(SMALL), seed=seed)


def test_presets_shapes_and_config_round_trip():
    net = build_network("astrorim-small", seed=0).eval()
    assert net.config["image_size"] == 96 and net.config["steps"] == 4
    with torch.no_grad():
        out = net(torch.rand(2, 1, 96, 96))
    assert out["source"].shape == (2, 1, 96, 96) and out["model_image"].shape == (2, 1, 96, 96)
    assert tuple(out["params"]) == PARAM_NAMES
    again = build_network("astrorim-small", net.config, seed=0)
    assert again.config == net.config
    for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    paper = AstroRIM()
    assert paper.config["steps"] == 10 and paper.config["rim_hidden"] == [32, 64]


def test_output_scales_with_the_flux_unit():
    """normalise='max' makes the network equivariant to the flux unit."""
    net = _small().eval()
    y = _synthetic_batch(2)["image"]
    with torch.no_grad():
        a, b = net(y), net(37.0 * y)
    torch.testing.assert_close(b["source"], 37.0 * a["source"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b["model_image"], 37.0 * a["model_image"], rtol=1e-4, atol=1e-4)
    for k in PARAM_NAMES:
        torch.testing.assert_close(a["params"][k], b["params"][k], rtol=1e-5, atol=1e-6)


def test_training_loss_terms_and_finite_gradients():
    net = _small()
    batch = _synthetic_batch(3)
    terms = net.loss_terms(batch)
    lam = net.lambdas
    expected = (
        terms["recon"]
        + lam["lambda_fwd"] * terms["forward"]
        + lam["lambda_psf"] * terms["psf"]
        + lam["lambda_param"] * (terms["range"] + terms["prior"])
    )
    torch.testing.assert_close(terms["total"], expected)
    assert lam == {
        "lambda_fwd": 0.5,
        "lambda_psf": 1e-3,
        "lambda_param": 1e-3,
        "lambda_label": 0.0,
    }
    assert "label" not in terms  # the paper's loss: no supervised term by default
    net.zero_grad()
    terms["total"].backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    assert float(net.encoder.heads["b"].weight.grad.abs().sum()) > 0  # encoder is trained
    assert float(net.operator.log_fwhm.grad.abs()) > 0  # global PSF is trained
    assert float(net.rim.head.weight.grad.abs().sum()) > 0
    assert float(net.rim.skip.weight.grad.abs().sum()) > 0
    # eqs. 48–49 by hand
    p = {
        k: torch.tensor([v])
        for k, v in zip(PARAM_NAMES, [0.6, 0.5, 0, 0.1, -0.2, 0.1, 0, 0.2, 0.3], strict=True)
    }
    rng, prior = parameter_penalty(p)
    assert float(rng) == pytest.approx(0.1**2 + 0.1**2 + 0.2**2 + 0.05**2)
    assert float(prior) == pytest.approx(0.52**2 + 0.2**2 + 0.15**2 + 0.1**2)


def test_psf_total_variation_matches_eq_46():
    op = ConditionalForwardOperator(image_size=16, source_size=16, psf_size=5)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        op.psf_residual.copy_(torch.randn(5, 5, generator=g))
    k = op.psf_residual.detach().numpy()
    ref = sum((k[i + 1, j] - k[i, j]) ** 2 for i in range(4) for j in range(5))
    ref += sum((k[i, j + 1] - k[i, j]) ** 2 for i in range(5) for j in range(4))
    assert float(op.psf_tv().detach()) == pytest.approx(ref, rel=1e-6)


def test_training_loss_decreases_in_a_tiny_overfit():
    net = build_network("astrorim-small", dict(SMALL), seed=1)
    batch = _synthetic_batch(4, seed=3)
    groups = net.parameter_groups()
    opt = torch.optim.Adam([{"params": gr["params"], "lr": 3e-3 * gr["lr_scale"]} for gr in groups])
    with torch.no_grad():
        first = float(net.training_loss(batch))
    for _ in range(20):
        loss = net.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float(net.training_loss(batch))
    assert math.isfinite(last) and last < 0.3 * first, (first, last)


def test_parameter_groups_partition_the_weights():
    net = _small()
    groups = net.parameter_groups()
    assert [g["name"] for g in groups] == ["rim", "forward"]
    assert [g["lr_scale"] for g in groups] == [1.0, 0.1]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    assert {id(p) for p in net.encoder.parameters()} <= {id(p) for p in groups[1]["params"]}


def test_trains_through_the_engine_with_dict_batches(tmp_path):
    from lensml.train import fit
    from lensml.train.saved_model import load_model

    class _Pairs(torch.utils.data.Dataset):
        def __init__(self, seed: int) -> None:
            self.data = _synthetic_batch(4, seed=seed)

        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> dict:
            return {k: v[i] for k, v in self.data.items()}

    net = build_network("astrorim-small", dict(SMALL), seed=0)
    cfg = {
        "max_epochs": 1,
        "batch_size": 2,
        "normalise_labels": False,
        "optimizer": {"name": "AdamW", "lr": 1e-3},
        "gradient_clip": 5.0,
        "early_stopping": {"enabled": False},
    }
    res = fit(net, _Pairs(0), _Pairs(1), config=cfg, out_dir=tmp_path / "run", progress=False)
    assert res["epochs"] == 1 and math.isfinite(res["final_val_loss"])
    loaded, _ = load_model(res["model_dir"])
    assert isinstance(loaded, AstroRIM) and loaded.config == net.config
    y = _Pairs(1).data["image"][:2]
    with torch.no_grad():
        out = loaded(y)
    assert out["source"].shape == (2, 1, 32, 32) and torch.isfinite(out["source"]).all()


def test_autocast_keeps_physics_in_float32():
    net = _small().eval()
    y = _synthetic_batch(2)["image"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(y)
        geom = net.operator.geometry(out["params"])
        fx = net.operator.apply(out["source"].to(torch.bfloat16), geom)
    assert geom.bx.dtype == torch.float32 and fx.dtype == torch.float32
    assert torch.isfinite(out["source"]).all() and torch.isfinite(out["model_image"]).all()


def test_noise_model_eqs_28_to_30_is_seeded():
    op = ConditionalForwardOperator(image_size=16, source_size=16, psf_size=5, gain=2.0)
    img = torch.full((2, 1, 16, 16), 50.0)
    a = op.add_noise(img, torch.Generator().manual_seed(0))
    b = op.add_noise(img, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert float(a.mean()) == pytest.approx(50.0, rel=0.05)
    assert float(a.var()) == pytest.approx(50.0 / 2.0, rel=0.3)  # Poisson(g y)/g: var = y/g


# ---------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    net = _small()
    with pytest.raises(ValueError, match=r"'image' must be .*\(B, 1, 32, 32\)"):
        net(torch.rand(2, 1, 16, 16))
    bad = torch.rand(1, 1, 32, 32)
    bad[0, 0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="'image' contains NaN"):
        net(bad)
    with pytest.raises(ValueError, match="training batch lacks 'source'"):
        net.training_loss({"image": torch.rand(1, 1, 32, 32)})
    with pytest.raises(ValueError, match="'source' must be"):
        net.training_loss({"image": torch.rand(1, 1, 32, 32), "source": torch.rand(1, 1, 16, 16)})
    with pytest.raises(ValueError, match="use_batch_psf needs 'psf'"):
        build_network("astrorim-small", {**SMALL, "use_batch_psf": True}).training_loss(
            _synthetic_batch(1)
        )
    with pytest.raises(ValueError, match="source_size must be a multiple of 8"):
        AstroRIM(source_size=36)
    with pytest.raises(ValueError, match="normalise must be"):
        AstroRIM(normalise="sum")
    with pytest.raises(ValueError, match="psf_size must be odd"):
        ConditionalForwardOperator(psf_size=20)
    with pytest.raises(ValueError, match="fwhm must be a finite number > 0"):
        ConditionalForwardOperator(fwhm=-1.0)
    op = ConditionalForwardOperator(image_size=16, source_size=16, psf_size=5)
    with pytest.raises(ValueError, match="missing parameters"):
        op.geometry({"b": torch.tensor([0.1])})
    with pytest.raises(ValueError, match="parameter 'q' must be in"):
        op.geometry({**_params(1, dtype=torch.float32), "q": torch.tensor([1.5])})


# ---------------------------------------------------------------- lensml additions
def _labels_batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generator-style labels (arcsec / rad) and pixel scales for a 32-pixel image."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 9, generator=g)
    labels = torch.stack(
        [0.3 + 0.3 * u[:, 0], 0.4 + 0.5 * u[:, 1], 3 * u[:, 2] - 1.5, 0.05 * u[:, 3] - 0.025,
         0.05 * u[:, 4] - 0.025, 0.1 * u[:, 5], 3 * u[:, 6] - 1.5, 0.1 * u[:, 7], 0.2 * u[:, 8]],
        dim=1,
    )  # fmt: skip
    return labels, torch.full((n,), 0.04)


def test_prior_override_moves_the_eq_49_centres():
    p = {k: torch.tensor([v]) for k, v in zip(PARAM_NAMES, [0.6, 0.7, 0, 0, 0, 0.05, 0, 0.05,
                                                             0.2], strict=True)}  # fmt: skip
    rng, prior = parameter_penalty(p)
    assert float(prior) == pytest.approx(0.52**2) and float(rng) == pytest.approx(0.1**2)
    rng, prior = parameter_penalty(p, {"b": 0.6, "b_max": 1.0})
    assert float(prior) == pytest.approx(0.0, abs=1e-12) and float(rng) == pytest.approx(0.0)
    net = build_network("astrorim-small", {**SMALL, "prior": {"b": 0.6}}, seed=0)
    assert net.config["prior"] == {"b": 0.6} and net.prior == {"b": 0.6}
    with pytest.raises(ValueError, match="prior key 'theta'"):
        build_network("astrorim-small", {**SMALL, "prior": {"theta": 1.0}}, seed=0)


def test_label_penalty_zero_at_truth_periodic_and_scaled():
    labels, scale = _labels_batch(5)
    half = scale * 16.0
    target = labels_to_params(labels, half)
    assert float(label_penalty(target, target)) == pytest.approx(0.0, abs=1e-10)
    # φ and γ_φ are π-periodic: adding π leaves only the term that keeps them in [−π/2, π/2]
    turned = {**target, "phi": target["phi"] + math.pi, "gamma_phi": target["gamma_phi"] - math.pi}
    out = torch.relu(turned["phi"].abs() - math.pi / 2) ** 2
    out = out + torch.relu(turned["gamma_phi"].abs() - math.pi / 2) ** 2
    expected = float((out / LABEL_SCALES["angle_period"] ** 2).mean())
    assert expected > 0
    assert float(label_penalty(turned, target)) == pytest.approx(expected, rel=1e-5)
    # an angle error counts by how well the truth defines the angle: none for a round lens
    round_t = {**target, "q": torch.ones_like(target["q"]), "gamma": torch.zeros_like(target["q"])}
    spun = {**round_t, "phi": round_t["phi"] * 0.5, "gamma_phi": round_t["gamma_phi"] * 0.5}
    assert float(label_penalty(spun, round_t)) == pytest.approx(0.0, abs=1e-10)
    # a 5 % error in b alone is one scale unit in one of seven terms
    bigger = {**target, "b": target["b"] * math.exp(LABEL_SCALES["log_b"])}
    assert float(label_penalty(bigger, target)) == pytest.approx(1.0 / 7.0, rel=1e-4)


def test_lambda_label_adds_the_supervised_term_and_needs_labels():
    net = build_network("astrorim-small", {**SMALL, "lambda_label": 0.5}, seed=0)
    batch = _synthetic_batch(3)
    with pytest.raises(ValueError, match="needs 'labels'"):
        net.loss_terms(batch)
    labels, scale = _labels_batch(3)
    with pytest.raises(ValueError, match=r"'labels' must be \(3, 9\)"):
        net.loss_terms({**batch, "labels": labels[:2], "pixel_scale": scale})
    terms = net.loss_terms({**batch, "labels": labels, "pixel_scale": scale})
    base = terms["recon"] + 0.5 * terms["forward"] + 1e-3 * terms["psf"]
    base = base + 1e-3 * (terms["range"] + terms["prior"])
    torch.testing.assert_close(terms["total"], base + 0.5 * terms["label"])
    net.zero_grad()
    terms["label"].backward()
    assert float(net.encoder.heads["b"].weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in net.rim.parameters())  # the term trains the encoder only


def test_encoder_lr_scale_gives_the_encoder_its_own_group():
    net = build_network("astrorim-small", {**SMALL, "encoder_lr_scale": 1.0}, seed=0)
    groups = net.parameter_groups()
    assert [(g["name"], g["lr_scale"]) for g in groups] == [
        ("rim", 1.0), ("forward", 0.1), ("encoder", 1.0)
    ]  # fmt: skip
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in net.encoder.parameters()}


# ---------------------------------------------------------------------- symmetrisation
def _assert_params_close(a: dict, b: dict, atol: float) -> None:
    """Parameters equal, the two axis angles modulo π."""
    for k in PARAM_NAMES:
        d = a[k] - b[k]
        if k in ("phi", "gamma_phi"):
            d = torch.remainder(d + math.pi / 2, math.pi) - math.pi / 2
        assert float(d.abs().max()) < atol, (k, a[k], b[k])


def test_dihedral_copies_and_params_follow_the_augmentation_rules():
    from lensml.data.augment import LabelRules, flip, rot90

    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 1, 8, 8, generator=g, dtype=F64)
    p = _params(3)
    copies, cp = dihedral_copies(x), params_to_tensor(dihedral_params(p))
    assert copies.shape == (24, 1, 8, 8) and cp.shape == (24, 9)
    rules = LabelRules(PARAM_NAMES, PARAM_KINDS, angle_period=math.pi)
    for j, (mirror, k) in enumerate(DIHEDRAL):
        img, lab = flip(x, params_to_tensor(p), rules, "x") if mirror else (x, params_to_tensor(p))
        img, lab = rot90(img, lab, rules, k)
        torch.testing.assert_close(copies[3 * j : 3 * j + 3], img, rtol=0, atol=0)
        _assert_params_close(tensor_to_params(cp[3 * j : 3 * j + 3]), tensor_to_params(lab), 1e-15)
    torch.testing.assert_close(dihedral_mean(copies), x, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="H, H"):
        dihedral_copies(torch.zeros(1, 1, 8, 6))


def test_dihedral_params_lens_the_turned_source_into_the_turned_image():
    """The parameter rules are the physics: F(T x; T Θ) = T F(x; Θ) for all eight T."""
    op = ConditionalForwardOperator(image_size=32, source_size=32, psf_size=9, fwhm=2.0).double()
    g = torch.Generator().manual_seed(1)
    p, src = _params(2), _blobs(2, 32, g, F64)
    with torch.no_grad():
        img = op.apply(src, op.geometry(p))
        turned = op.apply(dihedral_copies(src), op.geometry(dihedral_params(p)))
    assert float(img.abs().max()) > 0.1
    torch.testing.assert_close(turned, dihedral_copies(img), rtol=1e-9, atol=1e-11)


def test_symmetrised_params_are_exactly_equivariant():
    enc = LensParameterEncoder(channels=(8, 8, 8, 8), pool_size=2, fc=(16,), groups=4).double()
    g = torch.Generator().manual_seed(2)
    y = torch.rand(2, 1, 32, 32, generator=g, dtype=F64)
    with torch.no_grad():
        base = symmetrised_params(enc, y)
        turned = symmetrised_params(enc, dihedral_copies(y))
        single = enc(y)
    want = dihedral_params(base)
    _assert_params_close(turned, want, 1e-12)
    # an untrained encoder is not equivariant by itself: the average is not one of its answers
    assert float((single["b"] - base["b"]).abs().max()) > 1e-6


def test_symmetrised_reconstruction_is_exactly_equivariant():
    net = _small().double().eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # an asymmetric learned PSF: the copies must see it turned
        net.operator.psf_residual.add_(1e-3 * torch.rand(net.operator.psf_residual.shape,
                                                         generator=g, dtype=F64))  # fmt: skip
    y = _synthetic_batch(2)["image"].double()
    with torch.no_grad():
        out = net(y, symmetrise=True)
        plain = net(y)
        steps = net.reconstruct(y / y.abs().amax(dim=(1, 2, 3), keepdim=True), symmetrise=True,
                                return_all=True)["steps"]  # fmt: skip
        # a turned image is seen through the turned PSF
        psf = net.operator.psf_kernel(F64)
        same = net(y, psf, symmetrise=True)
        turned = net(dihedral_copies(y), dihedral_copies(psf).repeat_interleave(2, 0),
                     symmetrise=True)  # fmt: skip
    assert len(steps) == net.config["steps"]
    torch.testing.assert_close(same["source"], out["source"], rtol=0, atol=1e-14)
    torch.testing.assert_close(turned["source"], dihedral_copies(out["source"]), rtol=1e-7,
                               atol=1e-10)  # fmt: skip
    _assert_params_close(turned["params"], dihedral_params(out["params"]), 1e-10)
    assert float((plain["source"] - out["source"]).abs().max()) > 1e-6
    # one PSF image for the batch, or one per item: the same answer
    with torch.no_grad():
        one = net(y, psf, symmetrise=True)["source"]
        each = net(y, psf.expand(2, -1, -1, -1), symmetrise=True)["source"]
    torch.testing.assert_close(one, each, rtol=1e-10, atol=1e-12)
