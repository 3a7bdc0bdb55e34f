"""GaLNet-1/2 (lensml.nets.galnet) and the Sérsic label codec (lensml.nets.sersic_labels).

Checks: registry presets and config round trips; parameter counts against an independent
layer-by-layer count; output shapes; GaLNet-2 really reads the PSF (only the central P×P of
channel 1); PSF packing is exactly centred and invertible; batch independence; forward ==
final(features); a tiny overfit; label encode/decode round trips with the PA wrap and the
delta-method σ's against Monte Carlo; save/load/predict of a gaussian_nll model; bad input.
"""

from __future__ import annotations

import functools
import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn

from lensml.nets import galnet as galnet_module
from lensml.nets.blocks import count_parameters
from lensml.nets.galnet import crop_psf, pack_galaxy_psf
from lensml.nets.sersic_labels import (
    SERSIC_LABEL_NAMES,
    decode_sersic_outputs,
    encode_sersic_labels,
)
from lensml.registry import NETWORKS
from lensml.train import build_network
from lensml.train.normalisation import Normalisation
from lensml.train.saved_model import load_model, network_spec, predict, save_model

assert galnet_module  # the import registers the presets
PRESETS = ["galnet-1", "galnet-2", "galnet-1-small", "galnet-2-small"]
SMALL = ["galnet-1-small", "galnet-2-small"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Small CPU models run fastest on one thread (the test machine has 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def _default(name: str) -> nn.Module:
    return build_network(name, seed=0).eval()


def _x(net: nn.Module, batch: int = 3, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Random galaxy stamps, packed with a Gaussian PSF for GaLNet-2."""
    g = torch.Generator().manual_seed(seed)
    s = net.config["input_size"]
    img = torch.randn(batch, net.config["in_channels"] if "psf_size" not in net.config else 1, s, s,
                      generator=g, dtype=dtype)  # fmt: skip
    if "psf_size" not in net.config:
        return img
    return pack_galaxy_psf(img, _gaussian_psf(batch, net.config["psf_size"], 1.5, dtype))


def _gaussian_psf(batch: int, p: int, sigma: float, dtype=torch.float32) -> torch.Tensor:
    r = torch.arange(p, dtype=dtype) - (p - 1) / 2
    k = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return (k / k.sum()).expand(batch, 1, p, p).clone()


# --- presets, counts, shapes ---------------------------------------------------------------


def _independent_count(cfg: dict, psf: bool) -> int:
    """Parameters from the architecture description alone (3×3 convs without bias + BN)."""
    conv = lambda ci, co: 9 * ci * co + 2 * co  # noqa: E731
    n, ch, side = 0, 1, cfg["input_size"]
    for c in cfg["channels"]:
        n += conv(ch, c) + conv(c, c)
        ch, side = c, side // 2
    feats = ch * side * side
    if psf:
        pc = cfg["psf_channels"]
        n += conv(1, pc) + conv(pc, pc)
        feats += pc * (cfg["psf_size"] // 2) ** 2
    for h in cfg["fc"]:
        n += feats * h + h
        feats = h
    out = cfg["out_features"] * (2 if cfg["uncertainty"] else 1)
    return n + feats * out + out


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("galnet-1", 9_998_288),
        ("galnet-2", 14_726_512),
        ("galnet-1-small", 210_208),
        ("galnet-2-small", 265_700),
    ],
)
def test_parameter_counts(name, count):
    net = _default(name)
    assert count_parameters(net) == count
    assert count == _independent_count(net.config, psf="psf_size" in net.config)
    if name.endswith("small"):
        assert count <= 300_000


@pytest.mark.parametrize("name", PRESETS)
def test_presets_build_and_round_trip_config(name):
    assert name in NETWORKS
    net = _default(name)
    assert network_spec(net) == (name, {})
    assert net.config["in_channels"] == (2 if name.startswith("galnet-2") else 1)
    assert net.config["out_features"] == 8 and net.config["uncertainty"] is True
    again = build_network(name, net.config)
    assert again.config == net.config
    again.load_state_dict(net.state_dict())  # same architecture, same parameter names


@pytest.mark.parametrize("name", PRESETS)
def test_cli_can_infer_shapes_from_the_signature(name):
    """``lensml train`` fills in_channels / out_features / input_size from the store."""
    params = inspect.signature(NETWORKS.get(name)).parameters
    assert {"in_channels", "out_features", "input_size"} <= set(params)


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("uncertainty", [True, False])
def test_output_shapes(name, uncertainty):
    net = build_network(name, {"uncertainty": uncertainty, "out_features": 5}).eval()
    with torch.no_grad():
        y = net(_x(net, batch=4))
        f = net.features(_x(net, batch=4))
    assert y.shape == (4, 10 if uncertainty else 5)
    assert f.shape == (4, net.n_features) == (4, 32)


def test_galnet1_multiband_and_other_sizes():
    net = build_network("galnet-1-small", {"in_channels": 3, "input_size": 41}).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 41, 41)).shape == (2, 16)
    net2 = build_network("galnet-2-small", {"input_size": 41, "psf_size": 21}).eval()
    with torch.no_grad():
        assert net2(torch.zeros(2, 2, 41, 41)).shape == (2, 16)


@pytest.mark.parametrize("name", SMALL)
def test_forward_equals_final_of_features(name):
    net = _default(name)
    x = _x(net)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.final(net.features(x)), rtol=0, atol=0)
    assert isinstance(net.final, nn.Linear)


@pytest.mark.parametrize("name", SMALL)
def test_batch_independence_in_eval_mode(name):
    net = _default(name)
    x = _x(net, batch=5, seed=3)
    with torch.no_grad():
        full = net(x)
        single = torch.cat([net(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-5)


# --- GaLNet-2 and the PSF channel ------------------------------------------------------------


def test_galnet2_uses_the_psf_and_only_the_central_crop():
    net = build_network("galnet-2-small", seed=1).double().eval()
    x = _x(net, batch=2, dtype=torch.float64)
    p, s = net.config["psf_size"], net.config["input_size"]
    lo = (s - p) // 2
    with torch.no_grad():
        base = net(x)
        wider = x.clone()
        wider[:, 1:2, lo : lo + p, lo : lo + p] = _gaussian_psf(2, p, 3.0, torch.float64)
        assert (net(wider) - base).abs().max() > 1e-3  # a different PSF changes the answer
        outside = x.clone()
        g = torch.Generator().manual_seed(5)
        noise = torch.randn(2, s, s, generator=g, dtype=torch.float64)
        mask = torch.ones(s, s, dtype=torch.bool)
        mask[lo : lo + p, lo : lo + p] = False
        outside[:, 1][:, mask] += noise[:, mask]
        torch.testing.assert_close(net(outside), base, rtol=0, atol=0)
        # the standardised PSF path ignores an affine rescaling of the PSF channel
        rescaled = x.clone()
        rescaled[:, 1] = 7.0 * rescaled[:, 1] - 0.3
        torch.testing.assert_close(net(rescaled), base, rtol=1e-9, atol=1e-9)
        # and the galaxy channel matters too (at initialisation, with BatchNorm's default running
        # statistics, pooled noise features are small, hence a threshold far above rounding only)
        brighter = x.clone()
        brighter[:, 0] *= 2.0
        assert (net(brighter) - base).abs().max() > 1e-8


def test_pack_and_crop_are_exact_inverses_and_centred():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(3, 1, 61, 61, generator=g)
    psf = torch.zeros(3, 1, 25, 25)
    psf[:, :, 12, 12] = 1.0  # a delta at the PSF's central pixel
    packed = pack_galaxy_psf(img, psf)
    assert packed.shape == (3, 2, 61, 61)
    torch.testing.assert_close(packed[:, :1], img, rtol=0, atol=0)
    assert packed[:, 1, 30, 30].eq(1).all() and packed[:, 1].sum() == 3  # centre on centre
    torch.testing.assert_close(crop_psf(packed, 25), psf, rtol=0, atol=0)
    one = pack_galaxy_psf(img, psf[:1])  # one PSF for the whole batch
    torch.testing.assert_close(one, packed, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("img_shape", "psf_shape", "match"),
    [
        ((2, 1, 61, 61), (2, 1, 24, 24), "same parity"),
        ((2, 1, 61, 61), (2, 1, 63, 63), "must not be larger"),
        ((2, 61, 61), (2, 1, 25, 25), r"image must have shape \(B, 1, H, W\)"),
        ((2, 1, 61, 61), (3, 1, 25, 25), "batch size"),
        ((2, 1, 61, 60), (2, 1, 25, 25), "square"),
    ],
)
def test_pack_rejects_bad_shapes(img_shape, psf_shape, match):
    with pytest.raises(ValueError, match=match):
        pack_galaxy_psf(torch.zeros(img_shape), torch.zeros(psf_shape))


# --- bad input and configs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cfg", "match"),
    [
        ("galnet-2", {"in_channels": 1}, "in_channels must be 2"),
        ("galnet-1", {"psf_size": 25}, "only apply to GaLNet-2"),
        ("galnet-2", {"psf_size": 24}, "same parity"),
        ("galnet-2", {"psf_size": 71}, "must not be larger"),
        ("galnet-1", {"input_size": 15}, "input_size must be >= 16"),
        ("galnet-1", {"channels": [8, 16]}, "4 block widths"),
        ("galnet-1", {"uncertainty": "yes"}, "uncertainty"),
        ("galnet-1", {"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_configs(name, cfg, match):
    with pytest.raises(ValueError, match=match):
        build_network(name, cfg)


@pytest.mark.parametrize(
    ("name", "shape", "match"),
    [
        ("galnet-1-small", (2, 1, 64, 64), r"\(B, 1, 61, 61\)"),
        ("galnet-2-small", (2, 1, 61, 61), r"\(B, 2, 61, 61\)"),
    ],
)
def test_bad_input_shapes(name, shape, match):
    with pytest.raises(ValueError, match=match):
        _default(name)(torch.zeros(shape))


# --- training ------------------------------------------------------------------------------


def _blobs(n: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Elliptical Gaussian blobs and their (x, y, log width, e1, e2) labels."""
    xc, yc = (torch.rand(2, n, generator=gen) - 0.5) * 6
    logw = torch.rand(n, generator=gen) * 1.0 + 0.5
    e = (torch.rand(2, n, generator=gen) - 0.5) * 0.6
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    dx = r[None, None, :] - xc[:, None, None]
    dy = r[None, :, None] - yc[:, None, None]
    w2 = torch.exp(logw)[:, None, None] ** 2
    e1, e2 = e[0][:, None, None], e[1][:, None, None]
    q = (1 - e1) * dx**2 + (1 + e1) * dy**2 - 2 * e2 * dx * dy
    img = torch.exp(-q / (2 * w2))[:, None]
    return img, torch.stack([xc, yc, logw, e[0], e[1]], dim=1)


def test_tiny_overfit_galnet2_small():
    """50 Adam steps on 16 blobs (33² stamps, 17² PSFs to keep it fast) cut the MSE > 10×."""
    gen = torch.Generator().manual_seed(0)
    img, y = _blobs(16, 33, gen)
    widths = 1.0 + torch.rand(16, generator=gen)
    psf = torch.cat([_gaussian_psf(1, 17, float(w)) for w in widths])
    x = pack_galaxy_psf(img, psf)
    y = (y - y.mean(0)) / y.std(0)
    cfg = {"uncertainty": False, "out_features": 5, "input_size": 33, "psf_size": 17}
    net = build_network("galnet-2-small", cfg, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    losses = []
    for _ in range(50):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] / 10, losses[::5]


def test_gaussian_nll_model_saves_predicts_and_decodes(tmp_path):
    net = _default("galnet-1-small")
    norm = Normalisation(
        label_names=list(SERSIC_LABEL_NAMES),
        mean=[0.0, 0.0, 20.0, -0.1, 0.6, 0.0, 0.0, 3.0],
        std=[0.15, 0.15, 1.0, 0.4, 0.2, 0.7, 0.7, 1.5],
    )
    save_model(tmp_path / "m", net.state_dict(), "galnet-1-small", net.config, norm,
               input_shape=[1, 61, 61], loss="gaussian_nll")  # fmt: skip
    loaded, info = load_model(tmp_path / "m")
    assert info.network_config == net.config
    x = _x(net, batch=4)
    out = predict((loaded, info), x)
    assert out.shape == (4, 16) and (out[:, 8:] > 0).all()
    d = decode_sersic_outputs(out)
    assert d["pa"].shape == (4,) and ((d["pa"] >= 0) & (d["pa"] < 180)).all()
    assert (d["sigma_r_eff"] > 0).all()


# --- label codec ---------------------------------------------------------------------------


def _labels(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [
            rng.normal(0, 0.15, n),
            rng.normal(0, 0.15, n),
            rng.uniform(17, 22, n),
            10 ** rng.normal(-0.1, 0.4, n),
            rng.uniform(0.2, 1, n),
            rng.uniform(0, 180, n),
            rng.uniform(0.1, 8, n),
        ]
    )


def test_encode_decode_round_trip():
    lab = _labels(200)
    enc = encode_sersic_labels(lab)
    assert isinstance(enc, np.ndarray) and enc.shape == (200, 8)
    np.testing.assert_allclose(enc[:, 3], np.log10(lab[:, 3]), rtol=1e-14)
    np.testing.assert_allclose(np.hypot(enc[:, 5], enc[:, 6]), 1.0, rtol=1e-14)
    dec = decode_sersic_outputs(enc)
    for i, key in enumerate(["x", "y", "mag", "r_eff", "q", "pa", "n"]):
        np.testing.assert_allclose(dec[key], lab[:, i], rtol=1e-12, atol=1e-10, err_msg=key)
    t = decode_sersic_outputs(torch.from_numpy(enc))  # torch in, torch out
    assert isinstance(t["pa"], torch.Tensor) and t["pa"].dtype == torch.float64


def test_pa_wrap():
    base = [0.0, 0.0, 20.0, 1.0, 0.5, 0.0, 2.0]
    rows = np.array([[*base[:5], pa, 2.0] for pa in (0.0, 180.0, 360.0, -90.0, 90.0, 179.0, 1.0)])
    enc = encode_sersic_labels(rows)
    np.testing.assert_allclose(enc[0], enc[1], atol=1e-12)  # 0° ≡ 180°
    np.testing.assert_allclose(enc[0], enc[2], atol=1e-12)  # ≡ 360°
    np.testing.assert_allclose(enc[3], enc[4], atol=1e-12)  # -90° ≡ 90°
    gap = np.linalg.norm(enc[5, 5:7] - enc[6, 5:7])  # 179° and 1° are 2° apart
    assert gap == pytest.approx(2 * math.sin(math.radians(2.0)), rel=1e-9) and gap < 0.07
    pa = decode_sersic_outputs(enc)["pa"]
    np.testing.assert_allclose(pa, [0, 0, 0, 90, 90, 179, 1], atol=1e-9)
    assert ((pa >= 0) & (pa < 180)).all()
    # a prediction a hair on either side of PA = 0 decodes to [0, 180), near 0 or near 180
    near = encode_sersic_labels(np.array([[*base[:5], pa, 2.0] for pa in (-1e-13, 1e-13)]))
    pa_near = decode_sersic_outputs(near)["pa"]
    assert ((pa_near >= 0) & (pa_near < 180)).all()
    assert np.minimum(pa_near, 180 - pa_near).max() < 1e-9


def test_sigma_propagation_matches_monte_carlo():
    rng = np.random.default_rng(1)
    c, s, log_r = 0.5 * math.cos(1.0), 0.5 * math.sin(1.0), 0.2
    sig = np.array([0.01, 0.02, 0.03, 0.02, 0.05, 0.012, 0.018, 0.3])
    row = np.array([[0.1, -0.1, 20.0, log_r, 0.5, c, s, 3.0, *sig]])
    d = decode_sersic_outputs(row)
    m = 400_000
    cs = rng.normal(c, sig[5], m), rng.normal(s, sig[6], m)
    pa_mc = np.degrees(0.5 * np.arctan2(cs[1], cs[0]))
    r_mc = 10 ** rng.normal(log_r, sig[3], m)
    assert d["sigma_pa"][0] == pytest.approx(pa_mc.std(), rel=0.02)
    assert d["sigma_r_eff"][0] == pytest.approx(r_mc.std(), rel=0.02)
    np.testing.assert_allclose(
        [d[f"sigma_{k}"][0] for k in ("x", "y", "mag", "log10_reff", "q", "n")],
        sig[[0, 1, 2, 3, 4, 7]],
    )
    # log-variances give the same answer as standard deviations
    logvar = np.concatenate([row[:, :8], np.log(row[:, 8:] ** 2)], axis=1)
    d2 = decode_sersic_outputs(logvar, spread="logvar")
    for key in d:
        np.testing.assert_allclose(d2[key], d[key], rtol=1e-12, err_msg=key)
    # no direction at all: σ_PA is capped at that of a uniform PA
    flat = row.copy()
    flat[0, 5:7] = 0.0
    assert decode_sersic_outputs(flat)["sigma_pa"][0] == pytest.approx(180 / math.sqrt(12))
    assert decode_sersic_outputs(flat)["pa_amplitude"][0] == 0.0


@pytest.mark.parametrize(
    ("func", "value", "match"),
    [
        (encode_sersic_labels, np.ones((3, 8)), r"\(N, 7\)"),
        (encode_sersic_labels, np.array([[0, 0, 20, 0.0, 0.5, 10, 2]]), "r_eff"),
        (encode_sersic_labels, np.array([[0, 0, np.nan, 1, 0.5, 10, 2]]), "NaN"),
        (decode_sersic_outputs, np.ones((3, 7)), r"\(N, 8\) or \(N, 16\)"),
        (decode_sersic_outputs, -np.ones((3, 16)), "standard deviations"),
        (decode_sersic_outputs, np.full((2, 8), np.inf), "NaN or inf"),
        (decode_sersic_outputs, "abc", "array of numbers|shape"),
    ],
)
def test_codec_bad_input(func, value, match):
    with pytest.raises(ValueError, match=match):
        func(value)


def test_decode_rejects_unknown_spread():
    with pytest.raises(ValueError, match="spread"):
        decode_sersic_outputs(np.zeros((1, 16)), spread="var")
