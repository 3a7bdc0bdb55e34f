"""Tests of the shear CNN post-training steps: refit + attenuation, symmetrisation, calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lensml.data.augment import LabelRules, flip, rot90
from lensml.pipelines.shear_calibration import (
    CALIBRATION_FILE,
    AffineCalibration,
    apply_refit,
    fit_affine,
    network_features,
    refit_last_layer,
    ring_pair_means,
    shear_metrics,
    symmetrise,
)
from lensml.train.normalisation import Normalisation

F64 = torch.float64
RULES = LabelRules(("g1", "g2"), {"g1": "spin2", "g2": "spin2"})
VIEWS = [(mirror, k) for mirror in (False, True) for k in range(4)]


def _uniform_shear(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(-0.2, 0.2, (n, 2))


# ----------------------------------------------------------------------------- toy networks


class QuadrupoleNet(nn.Module):
    """Exactly dihedral-equivariant: unweighted second moments about the stamp centre.

    e1 = (Qxx − Qyy)/(Qxx + Qyy), e2 = 2 Qxy/(Qxx + Qyy) with x along columns, y up along
    rows (lensml's orientation); ``offset`` is added by ``final`` (a biased estimator).
    """

    def __init__(self, size: int = 32, offset=(0.0, 0.0)) -> None:
        super().__init__()
        c = torch.arange(size, dtype=F64) - (size - 1) / 2
        y, x = torch.meshgrid(c, c, indexing="ij")
        self.register_buffer("xx", x * x)
        self.register_buffer("yy", y * y)
        self.register_buffer("xy", x * y)
        self.final = nn.Linear(2, 2).to(F64)
        with torch.no_grad():
            self.final.weight.copy_(torch.eye(2, dtype=F64))
            self.final.bias.copy_(torch.tensor(offset, dtype=F64))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        img = x[:, 0]
        qxx = (img * self.xx).sum((-1, -2))
        qyy = (img * self.yy).sum((-1, -2))
        qxy = (img * self.xy).sum((-1, -2))
        t = qxx + qyy
        return torch.stack([(qxx - qyy) / t, 2 * qxy / t], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.features(x))


class TinyShearNet(nn.Module):
    """A small, not equivariant network with the shear-net contract (features + final)."""

    def __init__(self, seed: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 5, stride=3)
        self.fc = nn.Linear(4 * 10 * 10, 12)
        self.drop = nn.Dropout(dropout)
        self.final = nn.Linear(12, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        self.to(F64)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(1)
        return self.drop(torch.tanh(self.fc(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.features(x))


def _stamps(n: int, seed: int = 0) -> torch.Tensor:
    """Positive asymmetric blobs + noise, (n, 1, 32, 32) float64."""
    gen = torch.Generator().manual_seed(seed)
    c = torch.arange(32, dtype=F64) - 15.5
    y, x = torch.meshgrid(c, c, indexing="ij")
    out = []
    for _ in range(n):
        x0, y0 = (torch.rand(2, generator=gen, dtype=F64) - 0.5) * 6
        sx, sy = 2 + 4 * torch.rand(2, generator=gen, dtype=F64)
        rho = 0.8 * (torch.rand((), generator=gen, dtype=F64) - 0.5)
        u, v = (x - x0) / sx, (y - y0) / sy
        img = torch.exp(-0.5 * (u * u + v * v - 2 * rho * u * v) / (1 - rho * rho))
        out.append(img + 0.01 * torch.rand(32, 32, generator=gen, dtype=F64))
    return torch.stack(out)[:, None]


def _transform(x: torch.Tensor, g: torch.Tensor, mirror: bool, k: int):
    xf, gf = flip(x, g, RULES, "y", mask=mirror)
    return rot90(xf, gf, RULES, k)


# ----------------------------------------------------------------------------- fit_affine


def test_fit_affine_recovers_injected_bias_exactly_and_apply_inverts():
    rng = np.random.default_rng(1)
    g = _uniform_shear(rng, 1000)
    m, c = np.array([0.119, -0.03]), np.array([1e-3, -4e-4])
    g_est = (1 + m) * g + c
    cal = fit_affine(g_est, g)
    np.testing.assert_allclose(cal.m, m, atol=1e-13)
    np.testing.assert_allclose(cal.c, c, atol=1e-14)
    assert (cal.m_err < 1e-12).all() and cal.n == 1000
    np.testing.assert_allclose(cal.apply(g_est), g, atol=1e-14)


def test_fit_affine_errors_are_honest():
    """Pulls (m̂ − m)/σ_m over repeated noisy data sets have unit spread."""
    rng = np.random.default_rng(2)
    pulls = []
    for _ in range(300):
        g = _uniform_shear(rng, 400)
        g_est = 1.05 * g + 2e-3 + rng.normal(0, 0.25, g.shape)
        cal = fit_affine(g_est, g)
        pulls.append(np.concatenate([(cal.m - 0.05) / cal.m_err, (cal.c - 2e-3) / cal.c_err]))
    pulls = np.array(pulls)
    assert np.all(np.abs(pulls.mean(0)) < 0.2)
    assert np.all(np.abs(pulls.std(0) - 1) < 0.12)


def test_ring_pair_means_cancel_the_shape_noise_with_honest_errors():
    """Opposite intrinsic shapes in each pair: m, c fitted on pair means are unbiased and
    their errors reflect only the measurement noise (pulls of unit spread)."""
    rng = np.random.default_rng(5)
    pulls, errs = [], []
    for _ in range(200):
        g = np.repeat(_uniform_shear(rng, 300), 2, axis=0)
        e = np.repeat(rng.normal(0, 0.25, (300, 2)), 2, axis=0)
        e[1::2] *= -1  # the 90° turn flips the intrinsic ellipticity
        g_est = 1.05 * g + 2e-3 + e + rng.normal(0, 0.03, g.shape)
        gm, gp, used = ring_pair_means(g_est, g)
        assert used.all() and gm.shape == (300, 2)
        cal = fit_affine(gm, gp)
        pulls.append(np.concatenate([(cal.m - 0.05) / cal.m_err, (cal.c - 2e-3) / cal.c_err]))
        errs.append(cal.m_err)
    pulls = np.array(pulls)
    assert np.all(np.abs(pulls.mean(0)) < 0.2)
    assert np.all(np.abs(pulls.std(0) - 1) < 0.12)
    # σ of a pair mean: 0.03/√2 instead of sqrt(0.25² + 0.03²) for one galaxy
    plain = fit_affine(g_est, g)
    assert np.mean(errs) < plain.m_err.mean() / 5


def test_ring_pair_means_drop_failed_pairs_and_refuse_unpaired_sets():
    g = np.repeat(np.array([[0.1, -0.05], [0.02, 0.03], [-0.1, 0.0]]), 2, axis=0)
    est = g + np.array([[0.2, 0.1], [-0.2, -0.1]] * 3)
    ok = np.array([True, True, True, False, True, True])
    gm, gp, used = ring_pair_means(est, g, ok)
    np.testing.assert_allclose(gm, g[[0, 4]], atol=1e-15)
    np.testing.assert_array_equal(gp, g[[0, 4]])
    np.testing.assert_array_equal(used, [True, False, True])
    with pytest.raises(ValueError, match="even number"):
        ring_pair_means(est[:5], g[:5])
    shuffled = g[[0, 2, 1, 3, 4, 5]]
    with pytest.raises(ValueError, match="rows 0, 1"):
        ring_pair_means(est, shuffled)


def test_fit_affine_mask_and_bad_input():
    rng = np.random.default_rng(3)
    g = _uniform_shear(rng, 50)
    g_est = 1.1 * g
    g_est[7] = np.nan
    ok = np.ones(50, bool)
    ok[7] = False
    assert fit_affine(g_est, g, ok=ok).m == pytest.approx([0.1, 0.1])
    with pytest.raises(ValueError, match="NaN/inf"):
        fit_affine(g_est, g)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        fit_affine(g_est[:, :1], g[:, :1])
    with pytest.raises(ValueError, match="differ in shape"):
        fit_affine(g_est[:10], g)
    with pytest.raises(ValueError, match="no spread"):
        fit_affine(g, np.ones_like(g))
    with pytest.raises(ValueError, match="at least 3"):
        fit_affine(g[:2], g[:2])
    with pytest.raises(ValueError, match="boolean"):
        fit_affine(g, g, ok=np.ones(50))
    with pytest.raises(ValueError, match="1 \\+ m must be > 0"):
        AffineCalibration([-1.0, 0.0], [0, 0], [0, 0], [0, 0], 10)


def test_calibration_json_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    g = _uniform_shear(rng, 200)
    cal = fit_affine(1.02 * g - 1e-3 + rng.normal(0, 0.2, g.shape), g, meta={"method": "ksb"})
    path = cal.save(tmp_path / "cal.json")
    back = AffineCalibration.load(path)
    for name in ("m", "c", "m_err", "c_err"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cal, name))
    assert back.n == cal.n and back.meta == {"method": "ksb"}
    # a model directory gets CALIBRATION_FILE; nothing temporary is left behind
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    assert cal.save(model_dir) == model_dir / CALIBRATION_FILE
    assert AffineCalibration.load(model_dir).m.tolist() == cal.m.tolist()
    assert sorted(p.name for p in model_dir.iterdir()) == [CALIBRATION_FILE]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json.*invalid JSON"):
        AffineCalibration.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"m": [0, 0]}))
    with pytest.raises(ValueError, match=r"other\.json.*not a lensml shear calibration"):
        AffineCalibration.load(tmp_path / "other.json")
    with pytest.raises(ValueError, match="cannot read"):
        AffineCalibration.load(tmp_path / "missing.json")


# ----------------------------------------------------------------------------- refit (App. B)


def test_refit_recovers_a_known_linear_map():
    rng = np.random.default_rng(5)
    f = rng.normal(size=(500, 30))
    w = rng.normal(size=(2, 30)) * 0.05
    b = np.array([0.01, -0.02])
    g = f @ w.T + b
    refit = refit_last_layer(f, g)
    np.testing.assert_allclose(refit.weight.numpy(), w, atol=1e-12)
    np.testing.assert_allclose(refit.bias.numpy(), b, atol=1e-12)
    np.testing.assert_allclose(refit.factor, 1.0, atol=1e-12)  # L = 0: no attenuation


def test_attenuation_factor_removes_regression_attenuation():
    """Features y = S g + η: plain LS has E[ĝ|g] = λ g with λ = Var(g) sᵀC⁻¹s < 1 (B10);
    the corrected layer has slope 1 (B11, B15)."""
    rng = np.random.default_rng(6)
    nf, n_fit, n_test = 20, 40_000, 40_000
    s = rng.normal(size=(nf, 2))
    a = rng.normal(size=(nf, nf))
    noise_cov = 0.15 * (a @ a.T) / nf + 0.05 * np.eye(nf)
    chol = np.linalg.cholesky(noise_cov)

    def draw(n):
        g = _uniform_shear(rng, n)
        return g @ s.T + rng.normal(size=(n, nf)) @ chol.T + 0.3, g  # + a constant offset

    f, g = draw(n_fit)
    f_test, g_test = draw(n_test)
    var_g = 0.4**2 / 12
    c_y = var_g * s @ s.T + noise_cov
    # for component i, the other component's signal is part of the noise (independent of g_i)
    lam = np.array([var_g * s[:, i] @ np.linalg.solve(c_y, s[:, i]) for i in range(2)])
    assert (lam < 0.8).all()  # a strong attenuation, so the test can fail

    def slopes(refit):
        pred = f_test @ refit.weight.numpy().T + refit.bias.numpy()
        out = []
        for i in range(2):
            x, yv = g_test[:, i], pred[:, i]
            sxx = np.sum((x - x.mean()) ** 2)
            k = np.sum((x - x.mean()) * (yv - yv.mean())) / sxx
            resid = yv - yv.mean() - k * (x - x.mean())
            out.append((k, np.sqrt(np.sum(resid**2) / (len(x) - 2) / sxx)))
        return np.array(out)

    plain = slopes(refit_last_layer(f, g, attenuation=False))
    corrected_refit = refit_last_layer(f, g)
    corrected = slopes(corrected_refit)
    assert np.all(np.abs(plain[:, 0] - lam) < 4 * plain[:, 1] + 2e-3)  # attenuated as predicted
    assert np.all(np.abs(corrected[:, 0] - 1.0) < 4 * corrected[:, 1] + 2e-3)  # unbiased
    np.testing.assert_allclose(corrected_refit.factor, 1 / lam, rtol=0.02)
    np.testing.assert_allclose(1 - corrected_refit.loss / corrected_refit.var_g, lam, rtol=0.02)


def test_refit_bad_input():
    rng = np.random.default_rng(7)
    f, g = rng.normal(size=(100, 5)), _uniform_shear(rng, 100)
    with pytest.raises(ValueError, match="F \\+ 2"):
        refit_last_layer(f[:6], g[:6])
    with pytest.raises(ValueError, match="100 rows"):
        refit_last_layer(f[:50], g)
    with pytest.raises(ValueError, match="no information"):
        refit_last_layer(f, g, loss=1.0)  # L >= Var(g): the factor diverges
    f_bad = f.copy()
    f_bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        refit_last_layer(f_bad, 0.1 * f[:, :2])
    with pytest.raises(ValueError, match="'loss'"):
        refit_last_layer(f, f[:, :2], loss=-1.0)


def test_apply_refit_loads_the_least_squares_layer():
    net = TinyShearNet(seed=1, dropout=0.5).train()
    x = _stamps(64, seed=2)
    feats, _ = network_features(net, x)
    rng = np.random.default_rng(8)
    w_true = rng.normal(size=(2, 12))
    g = feats.numpy() @ w_true.T * 0.1 + 0.01 * rng.normal(size=(64, 2))
    expected = refit_last_layer(feats, g)
    got = apply_refit(net, x, g)
    assert net.training  # mode restored
    np.testing.assert_allclose(net.final.weight.detach().numpy(), expected.weight.numpy())
    np.testing.assert_allclose(got.factor, expected.factor)
    # batches from a loader give the same layer
    net2 = TinyShearNet(seed=1)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.as_tensor(g)), batch_size=10
    )
    apply_refit(net2, loader)
    np.testing.assert_allclose(
        net2.final.weight.detach().numpy(), expected.weight.numpy(), rtol=1e-10, atol=1e-12
    )
    # standardised outputs: denormalised predictions equal the unnormalised refit's
    norm = Normalisation(["g1", "g2"], [0.01, -0.02], [0.1, 0.2])
    net3 = TinyShearNet(seed=1)
    apply_refit(net3, x, g, normalisation=norm)
    with torch.no_grad():
        pred = norm.denormalise(net3.eval()(x)).numpy()
        pred_plain = (feats.numpy() @ expected.weight.numpy().T) + expected.bias.numpy()
    np.testing.assert_allclose(pred, pred_plain, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="'g_true' is required"):
        apply_refit(net, x)
    with pytest.raises(ValueError, match="features"):
        apply_refit(nn.Linear(2, 2), x, g)


# ----------------------------------------------------------------------------- symmetrise


def test_symmetrise_of_an_equivariant_net_is_the_plain_prediction():
    net = QuadrupoleNet()
    x = _stamps(6, seed=3)
    with torch.no_grad():
        plain = net(x)
    assert plain.abs().max() > 0.05  # non-trivial shapes
    torch.testing.assert_close(symmetrise(net, x), plain, rtol=0, atol=1e-13)
    # and the equivariance the symmetrisation assumes really holds for this net
    for mirror, k in VIEWS:
        xt, gt = _transform(x, plain, mirror, k)
        with torch.no_grad():
            torch.testing.assert_close(net(xt), gt, rtol=0, atol=1e-13)


def test_symmetrise_removes_a_constant_offset():
    x = _stamps(5, seed=4)
    biased = QuadrupoleNet(offset=(0.03, -0.02))
    with torch.no_grad():
        truth = QuadrupoleNet()(x)
        assert (biased(x) - truth).abs().max() > 0.01
    torch.testing.assert_close(symmetrise(biased, x), truth, rtol=0, atol=1e-13)


def test_symmetrised_estimator_is_exactly_equivariant():
    net = TinyShearNet(seed=5)
    x = _stamps(4, seed=5)
    sym = symmetrise(net, x)
    with torch.no_grad():
        assert (net(x) - sym).abs().max() > 1e-3  # the net itself is not equivariant
    for mirror, k in VIEWS:
        xt, gt = _transform(x, sym, mirror, k)
        torch.testing.assert_close(symmetrise(net, xt), gt, rtol=0, atol=1e-12)


def test_symmetrise_batches_normalisation_and_modes():
    net = TinyShearNet(seed=6, dropout=0.5).train()
    x = _stamps(7, seed=6)
    full = symmetrise(net, x)
    torch.testing.assert_close(symmetrise(net, x, batch_size=3), full, rtol=0, atol=1e-13)
    assert net.training and torch.equal(symmetrise(net, x), full)  # eval inside, deterministic
    # a net trained on standardised labels: symmetrise in shear units
    norm = Normalisation(["g1", "g2"], [0.05, -0.03], [0.1, 0.3])

    class Standardised(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = QuadrupoleNet()

        def forward(self, z):
            return norm.normalise(self.inner(z))

    with torch.no_grad():
        truth = QuadrupoleNet()(x)
    torch.testing.assert_close(
        symmetrise(Standardised(), x, normalisation=norm), truth, rtol=0, atol=1e-12
    )

    # input_transform (per-stamp standardisation commutes with the 8 transforms)
    def standardise(z):
        return (z - z.mean((-1, -2), keepdim=True)) / z.std((-1, -2), keepdim=True)

    ref = symmetrise(net, standardise(x))
    torch.testing.assert_close(symmetrise(net, x, input_transform=standardise), ref)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.ones(2, 1, 32, 30, dtype=F64), "square"),
        (torch.ones(1, 32, 32, dtype=F64), r"\(N, C, H, W\)"),
        (torch.full((2, 1, 32, 32), float("nan"), dtype=F64), "NaN"),
    ],
)
def test_symmetrise_bad_input(images, match):
    with pytest.raises(ValueError, match=match):
        symmetrise(QuadrupoleNet(), images)


def test_symmetrise_rejects_wrong_outputs():
    net = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 3)).to(F64)
    with pytest.raises(ValueError, match=r"must return \(B, 2\)"):
        symmetrise(net, _stamps(2))


# ----------------------------------------------------------------------------- metrics


def test_shear_metrics_table4_and_bins():
    rng = np.random.default_rng(9)
    n = 20_000
    g = _uniform_shear(rng, n)
    mag = rng.uniform(20, 25, n)
    sigma_n = 0.05 + 0.04 * (mag - 20)  # noise grows with magnitude (Fig. 10's trend)
    g_est = 1.1 * g + np.array([2e-3, -1e-3]) + rng.normal(size=(n, 2)) * sigma_n[:, None]
    g_est[:100] = np.nan
    ok = np.isfinite(g_est).all(1)
    mis = rng.uniform(0, 1, n)
    out = shear_metrics(g_est, g, ok=ok, magnitude=mag, misalignment=mis)
    json.dumps(out, allow_nan=False)  # JSON-able
    assert out["n"] == n - 100 and out["n_failed"] == 100
    assert out["failure_fraction"] == pytest.approx(100 / n)
    for i, (m, c) in enumerate([(0.1, 2e-3), (0.1, -1e-3)]):
        assert abs(out["m"][i] - m) < 4 * out["m_err"][i]
        assert abs(out["c"][i] - c) < 4 * out["c_err"][i]
    expected_sigma = np.sqrt(np.mean(sigma_n[ok] ** 2)) / 1.1  # calibrated: noise / (1 + m)
    for i in range(2):
        assert abs(out["sigma"][i] - expected_sigma) < 4 * out["sigma_err"][i] + 1e-3
        assert abs(out["bias"][i]) < 1e-12  # calibrated on the same rows
    fig12 = out["vs_true_shear"]["g1"]
    assert len(fig12["edges"]) == 17 and sum(fig12["n_1"]) == out["n"]
    rms_mag = out["vs_magnitude"]["rms"]
    assert len(rms_mag) == 5 and np.all(np.diff(rms_mag) > 0)
    assert sum(out["vs_misalignment"]["n_2"]) == out["n"]
    # no calibration: the multiplicative bias inflates the error
    raw = shear_metrics(g_est, g, ok=ok, calibration=None)
    assert raw["sigma_mean"] > out["sigma_mean"]
    # a calibration fitted elsewhere is applied as given
    pre = fit_affine(g_est, g, ok=ok)
    again = shear_metrics(g_est, g, ok=ok, calibration=pre)
    assert again["sigma"] == pytest.approx(out["sigma"])
    # fixed edges with an empty bin → None entries
    edges = shear_metrics(g_est, g, ok=ok, shear_edges=[-0.3, -0.25, 0.0, 0.3])
    assert edges["vs_true_shear"]["g2"]["rms_2"][0] is None


def test_shear_metrics_bad_input():
    g = np.zeros((10, 2)) + np.linspace(-0.1, 0.1, 10)[:, None]
    with pytest.raises(ValueError, match="'magnitude' must have N=10"):
        shear_metrics(g, g, magnitude=np.ones(3))
    with pytest.raises(ValueError, match="calibration must be"):
        shear_metrics(g, g, calibration="none")
    with pytest.raises(ValueError, match="edges"):
        shear_metrics(g, g, shear_edges=[0.1, 0.0])
