"""Pixelated-source-and-κ RIM (Adam et al. §2.3–2.4, Appendix C): recurrence, physics gradients,
Adam pre-processing, eq. 7 loss, training through the engine, presets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lensml.nets.rim_pixelated import PixelatedRIM, PixelatedRIMSmall, adam_preprocess
from lensml.physics.pixelated_lensing import PixelatedLensing, gaussian_psf_kernels
from lensml.registry import NETWORKS

N = 32
TINY = {"n_image": N, "filters": [4, 8], "convs_per_level": 1, "steps": 3}


def _net(seed: int = 0, **kw) -> PixelatedRIM:
    torch.manual_seed(seed)  # layer init only; the data below use explicit generators
    return PixelatedRIM(**{**TINY, **kw})


def _lens_batch(b: int, seed: int, dtype=torch.float32, n: int = N) -> dict[str, torch.Tensor]:
    """SIE-like pixelated κ (cored, θ_E 0.9–1.3″), Gaussian sources of peak 1, Gaussian PSFs."""
    g = torch.Generator().manual_seed(seed)
    lens = PixelatedLensing(n_image=n, fov=7.69, n_source=n, source_fov=3.0)
    x, y = lens.image_grid.coordinates(dtype=torch.float64)
    xs, ys = lens.source_grid.coordinates(dtype=torch.float64)
    u = torch.rand(b, 6, generator=g, dtype=torch.float64)
    theta_e, q, phi = 0.9 + 0.4 * u[:, 0], 0.7 + 0.3 * u[:, 1], math.pi * u[:, 2]
    c, s = torch.cos(phi)[:, None, None], torch.sin(phi)[:, None, None]
    xr, yr = c * x + s * y, -s * x + c * y
    q3 = q[:, None, None]
    kappa = theta_e[:, None, None] / (2 * torch.sqrt(q3 * xr**2 + yr**2 / q3 + 0.1**2))
    bx, by = 0.3 * (u[:, 3:4, None] - 0.5), 0.3 * (u[:, 4:5, None] - 0.5)
    width = (0.15 + 0.15 * u[:, 5])[:, None, None]
    source = torch.exp(-0.5 * ((xs - bx) ** 2 + (ys - by) ** 2) / width**2)
    psf = gaussian_psf_kernels(torch.full((b,), 0.3, dtype=torch.float64), lens.pixel_scale, 5)
    sigma = torch.full((b,), 0.02, dtype=torch.float64)
    kappa, source = kappa[:, None], source[:, None]
    image = lens.simulate(source, kappa, psf, sigma, g)
    out = {"image": image, "source": source, "kappa": kappa, "sigma": sigma, "psf": psf}
    return {k: v.to(dtype) for k, v in out.items()}


# ---------------------------------------------------------------------------- structure
def test_shapes_link_and_config():
    net = _net()
    batch = _lens_batch(2, 0)
    with torch.no_grad():
        out = net(batch["image"], batch["sigma"], batch["psf"])
        sources, xis = net.unroll(batch["image"], 0.02, None)
    assert set(out) == {"source", "kappa", "xi"}
    for v in out.values():
        assert v.shape == (2, 1, N, N) and bool(torch.isfinite(v).all())
    assert bool((out["kappa"] > 0).all())
    torch.testing.assert_close(out["kappa"], 10.0 ** out["xi"])
    assert len(sources) == len(xis) == 3
    assert all(s.shape == (2, 1, N, N) for s in sources + xis)
    # the config rebuilds the same network and forward model
    cfg = net.config
    assert {k: cfg[k] for k in ("n_image", "fov", "n_source", "source_fov", "kernel")} == {
        "n_image": N,
        "fov": 7.69,
        "n_source": N,
        "source_fov": 3.0,
        "kernel": "point",
    }
    twin = PixelatedRIM(**cfg)
    twin.load_state_dict(net.state_dict())
    assert twin.lens == net.lens
    with torch.no_grad():
        torch.testing.assert_close(
            twin(batch["image"], 0.02)["xi"], net(batch["image"], 0.02)["xi"]
        )


def test_unet_levels_have_their_own_memory():
    net = _net(filters=[4, 8, 16], convs_per_level=2)
    states = net.unet.initial_state(2, N, torch.float32, torch.device("cpu"))
    assert [tuple(s.shape) for s in states] == [(2, 4, 32, 32), (2, 8, 16, 16), (2, 16, 8, 8)]
    u = torch.randn(2, 5, N, N, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, new = net.unet(u, states)
    assert out.shape == (2, 2, N, N)
    assert all(float(h.abs().max()) > 0 for h in new)  # every level's state was updated
    assert net.unet.input_conv.kernel_size == (11, 11)
    assert all(d.stride == (2, 2) and d.kernel_size == (3, 3) for d in net.unet.downs)
    assert all(isinstance(m, torch.nn.ConvTranspose2d) for m in net.unet.ups)
    assert net.unet.output.kernel_size == (1, 1) and net.unet.output.out_channels == 2


# ---------------------------------------------------------------------------- physics gradients
def test_likelihood_gradients_match_chain_rule_and_finite_differences():
    net = _net().double()
    batch = _lens_batch(2, 3, torch.float64)
    g = torch.Generator().manual_seed(4)
    s = batch["source"] + 0.05 * torch.randn(2, 1, N, N, generator=g, dtype=torch.float64)
    xi = torch.log10(batch["kappa"]) + 0.1 * torch.randn(
        2, 1, N, N, generator=g, dtype=torch.float64
    )
    y, sigma, psf = batch["image"], batch["sigma"], batch["psf"]
    gs, gx = net.likelihood_gradients(y, s, xi, sigma, psf)
    assert not gs.requires_grad and not gx.requires_grad
    # the forward model's own gradient, through the link by hand: ∇_ξ = ln10 κ ∇_κ
    ref_s, ref_k = net.lens.likelihood_gradients(y, s, 10.0**xi, sigma, psf)
    torch.testing.assert_close(gs, ref_s, rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(gx, ref_k * 10.0**xi * math.log(10.0), rtol=1e-10, atol=1e-8)

    # central finite differences of log p at pixels in the arcs and in the lens centre
    def logp(ss, xx):
        return net.lens.log_likelihood(y, ss, 10.0**xx, sigma, psf)

    h = 1e-6
    for b, i, j in [(0, 16, 16), (1, 14, 18), (0, 10, 21), (1, 20, 12)]:
        for which, grad in (("s", gs), ("xi", gx)):
            plus, minus = s.clone(), s.clone()
            xp, xm = xi.clone(), xi.clone()
            if which == "s":
                plus[b, 0, i, j] += h
                minus[b, 0, i, j] -= h
            else:
                xp[b, 0, i, j] += h
                xm[b, 0, i, j] -= h
            fd = float((logp(plus, xp)[b] - logp(minus, xm)[b]) / (2 * h))
            an = float(grad[b, 0, i, j])
            assert abs(fd - an) <= 1e-5 * max(1.0, abs(an)), (which, b, i, j, fd, an)


def test_unroll_feeds_the_gradient_at_the_current_estimate_after_adam():
    net = _net().double()
    batch = _lens_batch(2, 5, torch.float64)
    y, sigma, psf = batch["image"], batch["sigma"], batch["psf"]
    sources, xis, trace = net.unroll(y, sigma, psf, return_trace=True)
    assert len(trace) == 3
    b1, b2 = net.adam_betas
    eps = net.adam_eps
    for key in ("source", "xi"):
        m = v = torch.zeros_like(y)
        for t, rec in enumerate(trace, start=1):
            g = rec[f"grad_{key}"]
            assert not g.requires_grad and not rec[f"adam_{key}"].requires_grad
            if t >= 2:  # the gradient at x^(t-1), an estimate returned by unroll
                s_prev, xi_prev = sources[t - 2], xis[t - 2]
                ref_s, ref_k = net.lens.likelihood_gradients(y, s_prev, 10.0**xi_prev, sigma, psf)
                ref = ref_s if key == "source" else ref_k * 10.0**xi_prev * math.log(10.0)
                torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-9)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            expected = (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t)) + eps)
            torch.testing.assert_close(rec[f"adam_{key}"], expected, rtol=1e-12, atol=1e-12)
    first = trace[0]["adam_source"]
    nonzero = trace[0]["grad_source"].abs() > 1e-3
    # at the first step Adam returns ≈ sign(g)
    torch.testing.assert_close(first[nonzero], torch.sign(trace[0]["grad_source"][nonzero]))


def test_adam_preprocess_against_numpy_for_three_steps():
    rng = np.random.default_rng(0)
    grads = [rng.normal(scale=10.0 ** rng.uniform(-3, 3), size=(2, 1, 4, 4)) for _ in range(3)]
    b1, b2, eps = 0.9, 0.99, 1e-8
    m = v = np.zeros((2, 1, 4, 4))
    tm = tv = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        ref = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        out, tm, tv = adam_preprocess(torch.from_numpy(g), tm, tv, t, (b1, b2), eps)
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)
        np.testing.assert_allclose(tm.numpy(), m, rtol=1e-12)
        np.testing.assert_allclose(tv.numpy(), v, rtol=1e-12)


def test_physics_is_not_in_the_bptt_graph():
    """The weight gradient of the loss equals that of a replay in which the network is fed the
    recorded Adam-processed gradients as constants (no path through the ray tracer)."""
    net = _net(seed=2).double()
    batch = _lens_batch(2, 6, torch.float64)
    y, sigma, psf = batch["image"], batch["sigma"], batch["psf"]
    sources, xis, trace = net.unroll(y, sigma, psf, return_trace=True)
    loss = net.per_example_loss(sources, xis, batch["source"], batch["kappa"]).mean()
    grads = torch.autograd.grad(loss, list(net.parameters()))

    states = net.unet.initial_state(2, N, torch.float64, y.device)
    zeros = torch.zeros_like(y)
    delta, states = net.unet(torch.cat([zeros, zeros, zeros, zeros, y], 1), states)
    s, xi = delta[:, :1], delta[:, 1:]
    replay_s, replay_xi = [], []
    for rec in trace:
        a_s, a_x = rec["adam_source"].detach(), rec["adam_xi"].detach()
        u = torch.cat([s, xi, a_s, a_x, y], 1)
        delta, states = net.unet(u, states)
        s, xi = s + delta[:, :1], xi + delta[:, 1:]
        replay_s.append(s)
        replay_xi.append(xi)
    for a, b in zip(sources + xis, replay_s + replay_xi, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    loss2 = net.per_example_loss(replay_s, replay_xi, batch["source"], batch["kappa"]).mean()
    grads2 = torch.autograd.grad(loss2, list(net.parameters()))
    for g1, g2 in zip(grads, grads2, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-14)
    assert any(float(g.abs().max()) > 0 for g in grads)


# ---------------------------------------------------------------------------- loss
def test_per_example_loss_matches_numpy_eq7_with_c7_weights():
    net = _net()
    rng = np.random.default_rng(1)
    b, t_steps = 3, 4
    s_steps = [rng.normal(size=(b, 1, N, N)) for _ in range(t_steps)]
    xi_steps = [rng.normal(scale=0.5, size=(b, 1, N, N)) for _ in range(t_steps)]
    s_true = rng.uniform(0, 1, size=(b, 1, N, N))
    k_true = 10 ** rng.uniform(-2, 1, size=(b, 1, N, N))
    ref = np.zeros(b)
    for n in range(b):
        w = np.sqrt(k_true[n]) / k_true[n].sum()
        m = s_true[n].size
        for s_t, xi_t in zip(s_steps, xi_steps, strict=True):
            ref[n] += (w * (xi_t[n] - np.log10(k_true[n])) ** 2).sum()
            ref[n] += ((s_t[n] - s_true[n]) ** 2).sum() / m
    ref /= t_steps

    def t(a):
        return torch.from_numpy(a)

    got = net.per_example_loss(
        [t(a) for a in s_steps], [t(a) for a in xi_steps], t(s_true), t(k_true)
    )
    assert got.shape == (b,)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    batch = _lens_batch(2, 7)
    with torch.no_grad():
        sources, xis = net.unroll(batch["image"], batch["sigma"], batch["psf"])
        per = net.per_example_loss(sources, xis, batch["source"], batch["kappa"])
        torch.testing.assert_close(net.training_loss(batch), per.mean())


# ---------------------------------------------------------------------------- training
def test_tiny_overfit_lowers_the_loss():
    net = _net(seed=3, filters=[8, 16])
    batch = _lens_batch(2, 8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    with torch.no_grad():
        before = float(net.training_loss(batch))
    for _ in range(30):
        opt.zero_grad()
        net.training_loss(batch).backward()
        opt.step()
    with torch.no_grad():
        after = float(net.training_loss(batch))
    assert after < 0.1 * before, (before, after)  # measured: 6.06 → 0.35


class _Dicts(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        self.data = _lens_batch(n, seed)

    def __len__(self) -> int:
        return len(self.data["image"])

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.data.items()}


def test_fit_one_epoch_and_reload(tmp_path):
    from lensml.train import fit
    from lensml.train.saved_model import load_model

    net = _net(steps=2)
    cfg = {
        "max_epochs": 1,
        "batch_size": 2,
        "normalise_labels": False,
        "optimizer": {"name": "Adam", "lr": 1e-3},
        "early_stopping": {"enabled": False},
    }
    res = fit(
        net, _Dicts(4, 9), _Dicts(2, 10), config=cfg, out_dir=tmp_path / "run", progress=False
    )
    assert res["epochs"] == 1
    assert res["final_val_loss"] is not None and math.isfinite(res["final_val_loss"])
    loaded, _ = load_model(res["model_dir"])
    assert isinstance(loaded, PixelatedRIM) and loaded.lens == net.lens
    batch = _lens_batch(1, 11)
    with torch.no_grad():
        out = loaded(batch["image"], batch["sigma"], batch["psf"])
    assert bool(torch.isfinite(out["xi"]).all())


# ---------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    net = _net()
    batch = _lens_batch(2, 12)
    y, sig, psf = batch["image"], batch["sigma"], batch["psf"]
    with pytest.raises(ValueError, match="'image' must have shape"):
        net(y[:, :, :16], sig, psf)
    with pytest.raises(ValueError, match="'image' contains NaN"):
        net(torch.full_like(y, float("nan")), sig, psf)
    with pytest.raises(ValueError, match="'sigma' must be finite and > 0"):
        net(y, torch.tensor([0.02, 0.0]), psf)
    with pytest.raises(ValueError, match="'sigma' must be a number or a"):
        net(y, torch.ones(3), psf)
    with pytest.raises(ValueError, match="'psf'"):
        net(y, sig, torch.ones(2, 1, 4, 4) / 16)
    with pytest.raises(ValueError, match="'kappa' must be > 0"):
        net.training_loss({**batch, "kappa": torch.zeros_like(batch["kappa"])})
    with pytest.raises(ValueError, match="lacks 'sigma'"):
        net.training_loss({k: v for k, v in batch.items() if k != "sigma"})
    with pytest.raises(ValueError, match="n_source must equal n_image"):
        PixelatedRIM(n_image=32, n_source=64, filters=[4])
    with pytest.raises(ValueError, match="multiple of 2"):
        PixelatedRIM(n_image=36, filters=[4, 8, 16, 32])
    with pytest.raises(ValueError, match="adam_betas"):
        PixelatedRIM(n_image=32, filters=[4], adam_betas=[0.9, 1.0])
    with pytest.raises(ValueError, match="gru_kernel must be odd"):
        PixelatedRIM(n_image=32, filters=[4], gru_kernel=4)


# ---------------------------------------------------------------------------- presets
def test_presets_registered_with_their_parameter_counts():
    assert NETWORKS.get("rim-pixelated") is PixelatedRIM
    assert NETWORKS.get("rim-pixelated-small") is PixelatedRIMSmall
    with torch.device("meta"):
        big, small = PixelatedRIM(), PixelatedRIMSmall()
    n_big = sum(p.numel() for p in big.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    assert n_big == 311_365_826  # Table 7: 348,546,818 (widths unpublished; see module doc)
    assert abs(n_big / 348_546_818 - 1) < 0.15
    assert n_small == 107_138 and n_small < 500_000
    assert (big.n_image, big.steps, small.n_image, small.steps) == (128, 8, 64, 8)
    assert big.config["fov"] == small.config["fov"] == 7.69
    assert big.config["source_fov"] == small.config["source_fov"] == 3.0


def test_small_preset_runs_at_64():
    net = PixelatedRIMSmall(steps=2)
    batch = _lens_batch(2, 13, n=64)
    with torch.no_grad():
        out = net(batch["image"], batch["sigma"], batch["psf"])
    assert out["source"].shape == (2, 1, 64, 64)


@pytest.mark.slow
def test_paper_preset_runs_one_step_at_128():
    net = PixelatedRIM(steps=1)
    batch = _lens_batch(1, 14, n=128)
    with torch.no_grad():
        out = net(batch["image"], batch["sigma"], batch["psf"])
    assert out["kappa"].shape == (1, 1, 128, 128) and bool(torch.isfinite(out["xi"]).all())
