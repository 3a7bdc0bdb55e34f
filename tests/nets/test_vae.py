"""Source and κ β-VAEs of the pixelated-RIM paper (lensml.nets.vae; Appendix B, §4.1).

Checks: the paper presets' parameter counts equal Tables 5–6 exactly; shapes and output ranges;
the log10 preprocessing round trip; the KL term against torch.distributions; the β warm-up and
bottleneck-penalty schedules (and their resume through the ``step`` buffer); sample_near with
σ = 0; seeded sampling; training noise independent of the global RNG; tiny overfits (the κ VAE
beats the best latent-free predictor, so the latent code is used); engine integration; bad
configs and inputs.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import lensml.nets.vae  # noqa: F401  (registers the four presets)
from lensml.nets.blocks import count_parameters
from lensml.nets.vae import ConvVAE, KappaVAE, SourceVAE, gaussian_kl
from lensml.registry import NETWORKS
from lensml.train import build_network

TINY = {"size": 32, "filters": 4, "latent_dim": 8, "levels": 3}


def _blobs(n: int, seed: int, wlo: float = 2.0, whi: float = 5.0) -> torch.Tensor:
    """``(n, 1, 32, 32)`` circular Gaussian blobs of peak 1 at random centres and widths."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    c = 10 + 12 * torch.rand(n, 2, generator=g)
    w = wlo + (whi - wlo) * torch.rand(n, generator=g)
    r2 = (x - c[:, 0, None, None]) ** 2 + (y - c[:, 1, None, None]) ** 2
    return torch.exp(-r2 / (2 * w[:, None, None] ** 2))[:, None]


def _kappa(n: int, seed: int) -> torch.Tensor:
    return 0.05 + 2.0 * _blobs(n, seed)


def _tiny(name: str, seed: int = 0, **over) -> ConvVAE:
    return build_network(name, {**TINY, **over}, seed=seed)


def test_presets_registered_and_paper_parameter_counts():
    for name in ("vae-source", "vae-kappa", "vae-source-small", "vae-kappa-small"):
        assert name in NETWORKS
    # Tables 5 and 6 of the paper
    assert count_parameters(build_network("vae-source")) == 3_567_361
    assert count_parameters(build_network("vae-kappa")) == 1_980_033
    src, kap = build_network("vae-source-small"), build_network("vae-kappa-small")
    assert (count_parameters(src), count_parameters(kap)) == (495_009, 395_217)
    assert src.config["size"] == kap.config["size"] == 64
    assert (src.config["beta_max"], kap.config["beta_max"]) == (0.1, 0.2)
    assert (src.data_key, kap.data_key) == ("source", "kappa")
    over = build_network("vae-kappa-small", {"latent_dim": 4, "size": 32})
    assert over.latent_dim == 4 and over.size == 32 and over.preprocessing == "log10"


def test_shapes_and_output_ranges():
    src, kap = _tiny("vae-source-small"), _tiny("vae-kappa-small")
    x = _blobs(3, 0)
    mu, logvar = src.encode(x)
    assert mu.shape == logvar.shape == (3, 8)
    assert src(x).shape == (3, 1, 32, 32)
    z = 5.0 * torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        s = src.decode(z)
        k = kap.decode(z)
        xi = kap.decode_preprocessed(z)
    assert s.shape == k.shape == (6, 1, 32, 32)
    assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0
    assert float(k.min()) > 0.0
    torch.testing.assert_close(k, 10.0**xi)
    assert float(xi.min()) < 0.0 or float(xi.max()) > 0.0  # identity output: not squashed
    assert kap(_kappa(2, 3)).shape == (2, 1, 32, 32)


def test_log10_preprocessing_round_trip_and_floor():
    kap = _tiny("vae-kappa-small", log_floor=1e-3)
    kappa = torch.tensor([1e-5, 1e-3, 0.02, 1.0, 7.5], dtype=torch.float64)
    xi = kap.preprocess(kappa)
    torch.testing.assert_close(xi, torch.log10(torch.clamp(kappa, min=1e-3)))
    back = kap.postprocess(xi)
    torch.testing.assert_close(back[1:], kappa[1:])
    assert float(back[0]) == pytest.approx(1e-3)  # clipped at the floor
    src = _tiny("vae-source-small")
    assert torch.equal(src.postprocess(src.preprocess(kappa)), kappa)


def test_kl_matches_closed_form_of_torch_distributions():
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(5, 7, generator=g, dtype=torch.float64)
    logvar = 2.0 * torch.randn(5, 7, generator=g, dtype=torch.float64)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)
    assert torch.equal(gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))


def test_loss_terms_in_eval_mode_by_hand():
    net = _tiny("vae-kappa-small").double().eval()
    kappa = _kappa(3, 4).double()
    terms = net.loss_terms({"kappa": kappa})
    mu, logvar = net.encode(kappa)
    xi = torch.log10(kappa)
    recon = ((net.decode_preprocessed(mu) - xi) ** 2).sum((1, 2, 3)).mean()
    kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)).mean()
    torch.testing.assert_close(terms["reconstruction"], recon)
    torch.testing.assert_close(terms["kl"], kl)
    w = net.bottleneck_weight(0)
    total = recon + 0.1 * kl + w * terms["bottleneck"]
    torch.testing.assert_close(net.training_loss({"kappa": kappa}), total)
    assert int(net.step) == 0  # eval mode leaves the schedule alone
    mean_net = _tiny("vae-kappa-small", reconstruction="mean").double().eval()
    mean_net.load_state_dict(net.state_dict())
    torch.testing.assert_close(
        mean_net.loss_terms({"kappa": kappa})["reconstruction"], recon / 32**2
    )


def test_beta_warmup_and_bottleneck_decay_schedules():
    net = _tiny(
        "vae-kappa-small", beta_warmup_steps=100, l2_bottleneck=0.5, l2_bottleneck_decay_steps=40
    )
    assert net.beta(0) == pytest.approx(0.1)
    assert net.beta(50) == pytest.approx(0.15)
    assert net.beta(100) == pytest.approx(0.2)
    assert net.beta(10_000) == pytest.approx(0.2)
    assert net.bottleneck_weight(0) == pytest.approx(0.5)
    assert net.bottleneck_weight(10) == pytest.approx(0.375)
    assert net.bottleneck_weight(40) == 0.0
    assert net.bottleneck_weight(1000) == 0.0
    src = _tiny("vae-source-small")
    assert src.beta(0) == src.beta(10**6) == pytest.approx(0.1)  # Table 5: β_max = 0.1
    assert _tiny("vae-source-small", beta_warmup_steps=0, beta_max=0.3).beta(0) == 0.3
    assert _tiny("vae-source-small", l2_bottleneck_decay_steps=0).bottleneck_weight(0) == 0.0


def test_training_step_counter_drives_schedule_and_survives_state_dict():
    net = _tiny("vae-kappa-small", beta_warmup_steps=4, l2_bottleneck_decay_steps=2).train()
    batch = {"kappa": _kappa(2, 5)}
    betas, weights = [], []
    for _ in range(5):
        terms = net.loss_terms(batch)
        betas.append(float(terms["beta"]))
        weights.append(float(terms["bottleneck_weight"]))
        net.training_loss(batch)
    assert int(net.step) == 5
    assert betas == pytest.approx([0.1, 0.125, 0.15, 0.175, 0.2])
    assert weights == pytest.approx([0.01, 0.005, 0.0, 0.0, 0.0])
    fresh = _tiny("vae-kappa-small", seed=9, beta_warmup_steps=4, l2_bottleneck_decay_steps=2)
    fresh.load_state_dict(net.state_dict())  # checkpoint resume
    assert int(fresh.step) == 5 and fresh.beta() == pytest.approx(0.2)


def test_sample_near_with_zero_sigma_is_decode_repeated():
    net = _tiny("vae-source-small").eval()
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(3))
    out = net.sample_near(z, 0.0, 4, torch.Generator().manual_seed(0))
    assert out.shape == (12, 1, 32, 32)
    with torch.no_grad():
        ref = net.decode(z).repeat_interleave(4, dim=0)
    torch.testing.assert_close(out, ref)
    spread = net.sample_near(z, 0.3, 4, torch.Generator().manual_seed(0))
    assert not torch.allclose(spread, ref)


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone():
    net = _tiny("vae-kappa-small").eval()
    state = torch.get_rng_state()
    a = net.sample(4, torch.Generator().manual_seed(11))
    b = net.sample(4, torch.Generator().manual_seed(11))
    c = net.sample(4, torch.Generator().manual_seed(12))
    z = torch.zeros(2, 8)
    d = net.sample_near(z, 0.3, 3, torch.Generator().manual_seed(5))
    e = net.sample_near(z, 0.3, 3, torch.Generator().manual_seed(5))
    x = _kappa(2, 6)
    f1 = net(x, generator=torch.Generator().manual_seed(1))
    f2 = net(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(d, e)
    assert torch.equal(f1, f2) and not torch.equal(f1, net(x))
    assert torch.equal(net(x), net(x))  # no generator: decoded posterior mean
    # training noise: from (noise_seed, step), not from torch's global generator
    batch = {"kappa": x}
    n1, n2 = _tiny("vae-kappa-small").train(), _tiny("vae-kappa-small").train()
    l1 = [float(n1.training_loss(batch).detach()) for _ in range(3)]
    torch.manual_seed(123)
    l2 = [float(n2.training_loss(batch).detach()) for _ in range(3)]
    assert l1 == l2 and len(set(l1)) == 3
    n3 = _tiny("vae-kappa-small", noise_seed=1).train()
    assert float(n3.training_loss(batch).detach()) != l1[0]
    torch.set_rng_state(state)


def test_training_noise_uses_explicit_generator_when_given():
    net = _tiny("vae-source-small").train()
    batch = {"source": _blobs(2, 7)}
    a = net.loss_terms(batch, generator=torch.Generator().manual_seed(4))["total"].detach()
    b = net.loss_terms(batch, generator=torch.Generator().manual_seed(4))["total"].detach()
    c = net.loss_terms(batch, generator=torch.Generator().manual_seed(5))["total"].detach()
    assert float(a) == float(b) != float(c)


def _overfit(net: ConvVAE, batch: dict, steps: int, lr: float) -> tuple[dict, dict]:
    with torch.no_grad():
        before = net.eval().loss_terms(batch)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        net.training_loss(batch).backward()
        opt.step()
    with torch.no_grad():
        after = net.eval().loss_terms(batch)
    return before, after


def test_kappa_vae_overfits_four_maps_and_uses_its_latent_code():
    kappa = _kappa(4, 1)
    xi = torch.log10(kappa)
    mean_map_sse = float(((xi - xi.mean(0)) ** 2).sum((1, 2, 3)).mean())  # best z-free fit
    net = _tiny("vae-kappa-small", l2_bottleneck_decay_steps=20)
    before, after = _overfit(net, {"kappa": kappa}, steps=150, lr=3e-3)
    assert int(net.step) == 150
    # measured: total 1,670 → 23.3, reconstruction 20.0 vs mean-map SSE 67.8, KL 32.6
    assert float(after["total"]) < float(before["total"]) / 20
    assert float(after["reconstruction"]) < 0.5 * mean_map_sse
    assert float(after["kl"]) > 1.0  # the code carries information about each map


def _reconstruction_sse(net: ConvVAE, src: torch.Tensor) -> float:
    with torch.no_grad():
        rec = net.eval()(src)
    return float(((rec - src) ** 2).sum((1, 2, 3)).mean())


def test_source_vae_tiny_overfit_lowers_the_loss():
    src = _blobs(4, 1, wlo=4.0, whi=7.0)
    net = _tiny("vae-source-small", l2_bottleneck_decay_steps=20)
    assert net.config["reconstruction"] == "bce"
    before, after = _overfit(net, {"source": src}, steps=80, lr=3e-3)
    # measured: total 433 → 81 (× 5.3); Σ (x̂ − x)² 23.9 against 99.4 for a blank image
    assert float(after["total"]) < float(before["total"]) / 4
    assert _reconstruction_sse(net, src) < 0.3 * float((src**2).sum((1, 2, 3)).mean())


def test_bce_avoids_the_blank_collapse_of_compact_sources():
    """Compact sources (σ = 1–2 px): a squared error behind the sigmoid collapses onto a blank
    image (measured Σ (x̂ − x)² = 7.495 = Σ x²), the Bernoulli loss does not (5.23)."""
    src = _blobs(4, 1, wlo=1.0, whi=2.0)
    blank = float((src**2).sum((1, 2, 3)).mean())
    sse = {}
    for mode in ("bce", "sum"):
        net = _tiny("vae-source-small", l2_bottleneck_decay_steps=20, reconstruction=mode)
        _overfit(net, {"source": src}, steps=80, lr=3e-3)
        sse[mode] = _reconstruction_sse(net, src)
    assert sse["bce"] < 0.8 * blank
    assert sse["sum"] > 0.98 * blank


def test_bce_loss_is_zero_for_a_perfect_reconstruction_and_needs_a_sigmoid():
    net = _tiny("vae-source-small").double()
    x = _blobs(2, 3).double().clamp(1e-6, 1 - 1e-6)
    logits = torch.logit(x)
    assert float(net.reconstruction_loss(logits, x).abs().max()) < 1e-9
    assert float(net.reconstruction_loss(logits + 0.5, x).min()) > 0
    with pytest.raises(ValueError, match="'bce' needs output_activation 'sigmoid'"):
        _tiny("vae-kappa-small", reconstruction="bce")


class _Maps(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        self.kappa = _kappa(n, seed)

    def __len__(self) -> int:
        return len(self.kappa)

    def __getitem__(self, i: int) -> dict:
        return {"kappa": self.kappa[i], "image": self.kappa[i]}


def test_engine_trains_and_exports_the_vae(tmp_path):
    from lensml.train import fit, load_model

    net = _tiny("vae-kappa-small", l2_bottleneck_decay_steps=20)
    cfg = {
        "max_epochs": 1,
        "batch_size": 4,
        "input_key": "kappa",
        "normalise_labels": False,
        "optimizer": {"name": "Adam", "lr": 1e-3},
        "early_stopping": {"enabled": False},
    }
    res = fit(net, _Maps(8, 0), _Maps(4, 1), config=cfg, out_dir=tmp_path / "run", progress=False)
    assert res["epochs"] == 1 and res["global_step"] == 2
    assert res["final_val_loss"] is not None and math.isfinite(res["final_val_loss"])
    assert int(net.step) == 2
    loaded, _ = load_model(res["model_dir"])
    assert isinstance(loaded, KappaVAE) and int(loaded.step) == 2
    assert loaded.config == net.config


def test_bad_config_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="size must be a multiple of 2\\*\\*levels"):
        SourceVAE(size=36, levels=3)
    with pytest.raises(ValueError, match="output_activation"):
        SourceVAE(output_activation="tanh")
    with pytest.raises(ValueError, match="preprocessing"):
        KappaVAE(preprocessing="log")
    with pytest.raises(ValueError, match="beta_max"):
        KappaVAE(beta_max=-0.2)
    with pytest.raises(ValueError, match="data_key"):
        SourceVAE(data_key="image")
    with pytest.raises(ValueError, match="input_kernel must be odd"):
        SourceVAE(input_kernel=4)
    with pytest.raises(ValueError, match="log_floor"):
        KappaVAE(log_floor=0.0)
    with pytest.raises(ValueError, match="latent_dim"):
        build_network("vae-kappa-small", {"latent_dim": 0})
    net = _tiny("vae-source-small")
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        net.encode(torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError, match="'source'"):
        net.training_loss({"kappa": torch.zeros(2, 1, 32, 32)})
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        net.decode(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="sigma"):
        net.sample_near(torch.zeros(1, 8), -0.1, 2, torch.Generator())
    with pytest.raises(ValueError, match="generator"):
        net.sample(2, None)  # type: ignore[arg-type]
