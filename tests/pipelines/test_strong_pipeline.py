"""Strong-lensing pipeline: dataset + augmentation, train → evaluate → predict, SSIM vs
scikit-image, bad input."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from lensml.data.runner import run_simulate
from lensml.pipelines.strong import (
    LABELS,
    StrongDataset,
    augment_sample,
    encoder_ranges,
    prior_centres,
    train_strong,
)
from lensml.pipelines.strong_eval import evaluate_strong, physical_quantities
from lensml.pipelines.strong_metrics import (
    angle_difference,
    normalise01,
    normalise_pair,
    ssim,
    summary_stats,
)
from lensml.pipelines.strong_predict import (
    RING_EDGE_FRACTION,
    is_nonlinear,
    predict_strong,
    predicted_kappa,
    ring_edge_warning,
)

FAST_FIT = {"supersample": 1, "adam_steps": 10, "lm_max_iter": 2, "theta_e_start_factors": [1.0]}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("strong")
    out = []
    for k, variant in enumerate(("v1", "v4")):
        path = root / variant
        run_simulate("strong", 8, path, 10 + k, config={"variant": variant}, shard_size=8,
                     progress=False)  # fmt: skip
        out.append(path)
    return out


@pytest.fixture(scope="module")
def trained(stores, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    return train_strong(stores, "astrorim-small", run, 1, lr=1e-3, batch_size=8, seed=0,
                        device="cpu", progress=False)  # fmt: skip


# ----------------------------------------------------------------------------- dataset
def test_dataset_keys_shapes_and_variants(stores):
    ds = StrongDataset(stores, augment=False)
    assert len(ds) == 16 and ds.variants == ["v1", "v4"]
    s = ds[9]
    assert s["image"].shape == (1, 96, 96) and s["source"].shape == (1, 96, 96)
    assert s["psf"].shape == (1, 21, 21) and s["labels"].shape == (len(LABELS),)
    assert int(s["variant"]) == 1 and s["image"].dtype == torch.float32


def _sie_kappa(labels: torch.Tensor, scale: float) -> np.ndarray:
    lab = labels.double().numpy()[None]
    lab[:, 7:] = 0.0  # SIE only (v1 has no halo)
    return predicted_kappa(lab, scale, 96, 0.0)[0]


@pytest.mark.parametrize("op", [(True, False, 0), (False, True, 0), (False, False, 1),
                                (True, True, 3), (False, False, 2)])  # fmt: skip
def test_augmentation_moves_maps_and_labels_together(stores, op):
    """The κ map transformed as an image equals κ rendered from the transformed labels."""
    ds = StrongDataset(stores[:1], augment=False)
    s = ds[0]
    a = augment_sample(s, *op)
    assert a["image"].shape == s["image"].shape
    # every map went through the same operation as the image
    for key in ("source", "kappa", "lens_light", "noise_sigma", "psf"):
        ref = augment_sample({"image": s[key]}, *op)["image"]
        assert torch.equal(a[key], ref), key
    # the labels follow: κ(transformed labels) = transformed κ map (away from the cusp)
    scale = float(s["pixel_scale"])
    k_aug = a["kappa"][0].double().numpy()
    k_lab = _sie_kappa(a["labels"], scale)
    k_old = _sie_kappa(s["labels"], scale)
    c = (np.arange(96) - 47.5) * scale
    r = np.hypot(*np.meshgrid(c, c))
    far = r > 0.3
    err = np.abs(k_lab - k_aug)[far].max() / k_aug[far].max()
    assert err < 0.02
    if op != (False, False, 0) and op[2] != 2:
        # the untransformed labels do not describe the transformed map (test can fail)
        assert np.abs(k_old - k_aug)[far].max() / k_aug[far].max() > 5 * err
    # source and image rotate together: rot90 of the pair equals the pair of rot90s
    assert torch.allclose(a["source"].sum(), s["source"].sum())


def test_augmentation_is_seeded_per_epoch(stores):
    ds = StrongDataset(stores, augment=True, seed=3)
    draws0 = [ds.draw(i) for i in range(16)]
    assert draws0 == [ds.draw(i) for i in range(16)]
    ds.set_epoch(1)
    assert draws0 != [ds.draw(i) for i in range(16)]
    assert len({d for d in draws0}) > 2


def test_encoder_ranges_cover_the_labels(stores):
    ranges = encoder_ranges(stores)
    from lensml.data.store import open_store

    d = open_store(stores[0]).read_all(keys=["labels", "pixel_scale"])
    b_norm = d["labels"][:, 0] / (d["pixel_scale"] * 48)
    assert ranges["b"][1] >= b_norm.max() and ranges["b"][0] == 0.01
    assert ranges["x0"][0] == -ranges["x0"][1]


def test_prior_centres_follow_the_labels(stores, trained):
    from lensml.data.store import open_store

    prior = prior_centres(stores)
    b = np.concatenate([
        open_store(s).read_all(keys=["labels", "pixel_scale"])["labels"][:, 0]
        / (open_store(s).read_all(keys=["pixel_scale"])["pixel_scale"] * 48) for s in stores
    ])  # fmt: skip
    assert prior["b"] == pytest.approx(float(np.median(b)), rel=1e-6)
    assert prior["b_max"] == pytest.approx(encoder_ranges(stores)["b"][1])
    assert prior["b"] > 0.3  # the paper's 0.08 centre would drag these θ_E down
    assert set(prior) == {"b", "b_max", "kappa_s", "r_s"}
    # train_strong's defaults: data-centred prior, supervised lens parameters
    cfg = json.loads((trained["model_dir"] / "model.json").read_text())["network"]["config"]
    assert trained["network_config"] == cfg  # what the benchmark records
    assert cfg["prior"] == pytest.approx(prior) and cfg["lambda_label"] > 0
    assert cfg["encoder_lr_scale"] == 1.0


# ----------------------------------------------------------------------------- metrics
@pytest.mark.peer
def test_ssim_equals_scikit_image():
    from skimage.metrics import structural_similarity

    g = np.random.default_rng(1)
    truth = g.random((3, 40, 48))
    pred = truth + 0.3 * g.standard_normal(truth.shape)
    p, t = normalise01(torch.from_numpy(pred)), normalise01(torch.from_numpy(truth))
    mine = ssim(p, t).numpy()
    ref = [
        structural_similarity(p[i, 0].numpy(), t[i, 0].numpy(), gaussian_weights=True,
                              sigma=1.5, use_sample_covariance=False, data_range=1)
        for i in range(3)
    ]  # fmt: skip
    np.testing.assert_allclose(mine, ref, rtol=1e-10, atol=1e-12)
    assert ssim(t, t).numpy() == pytest.approx(1.0)


def test_metric_helpers():
    assert angle_difference(0.05, math.pi - 0.05) == pytest.approx(0.1)
    s = summary_stats([1.0, 2.0, 3.0, np.nan])
    assert s["n"] == 3 and s["median"] == 2.0 and s["std"] == pytest.approx(np.std([1, 2, 3]))
    assert float(normalise01(torch.ones(1, 1, 4, 4)).abs().max()) == 0.0
    truth = torch.zeros(2, 1, 4, 4)
    truth[:, 0, 1, 1] = torch.tensor([2.0, 4.0])
    pred = truth.clone()
    pred[:, 0, 0, 0] = -5.0  # an outlier is clipped, not allowed to rescale the rest
    p, t = normalise_pair(pred, truth)
    assert float(t.max()) == 1.0 and float(p.min()) == 0.0
    assert torch.equal(p[:, :, 1:, 1:], t[:, :, 1:, 1:])
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_theta_e_error_by_image_multiplicity():
    from lensml.pipelines.strong_eval import _by_multiplicity

    err = np.array([0.3, 0.02, 0.04, 0.5, 0.06, 9.0])
    n_images = np.array([1.0, 2.0, 4.0, 0.0, 3.0, np.nan])  # NaN: not counted, in neither
    out = _by_multiplicity(err, n_images)
    assert out["single"] == {"n": 2, "median": pytest.approx(0.4)}
    assert out["multiple"] == {"n": 3, "median": pytest.approx(0.04)}
    assert _by_multiplicity(err[:2], np.array([2.0, 3.0]))["single"] == {"n": 0, "median": None}


def test_theta_e_error_by_field_fraction():
    from lensml.pipelines.strong_eval import FIELD_FRACTION_EDGES, _by_field_fraction

    err = np.array([0.3, 0.02, 0.04, 0.5, 0.06, 0.9])
    theta_e = np.array([0.2, 1.0, 1.2, 2.5, 0.5, 30.0])  # arcsec
    half = np.array([1.92, 1.92, 1.92, 1.92, 9.6, 9.6])  # 96 px of 0.04″ and of 0.2″
    out = _by_field_fraction(err, theta_e, half)
    assert [b["lo"] for b in out] == list(FIELD_FRACTION_EDGES[:-1]) and out[-1]["hi"] is None
    # fractions 0.104, 0.521, 0.625, 1.30, 0.052, 3.125
    assert [b["n"] for b in out] == [2, 0, 2, 0, 2]
    assert out[0]["median"] == pytest.approx(0.18) and out[1]["median"] is None
    assert out[2]["median"] == pytest.approx(0.03) and out[4]["median"] == pytest.approx(0.7)
    assert sum(b["n"] for b in out) == len(err)  # every system in exactly one bin


def test_table1_conversion_matches_store_sigma_v(stores):
    from lensml.data.store import open_store
    from lensml.pipelines.strong import store_cosmology

    d = open_store(stores[1]).read_all(keys=["labels", "z_l", "z_s", "sigma_v"])
    sig, mass = physical_quantities(d["labels"][:, 0], d["z_l"], d["z_s"],
                                    store_cosmology("planck15"))  # fmt: skip
    np.testing.assert_allclose(sig, d["sigma_v"], rtol=1e-4)
    assert np.all(mass > 1e8)


# ----------------------------------------------------------------------------- pipeline
def test_train_evaluate_predict(stores, trained, tmp_path):
    model = trained["model_dir"]
    assert (model / "strong_pipeline.json").is_file() and trained["epochs"] == 1
    side = json.loads((model / "strong_pipeline.json").read_text())
    assert side["variants"] == ["v1", "v4"]
    ev = evaluate_strong(stores, model, tmp_path / "ev", fit_max=2, fit_config=FAST_FIT,
                         print_table=False)  # fmt: skip
    data = json.loads((tmp_path / "ev" / "strong_eval.json").read_text())
    rim = data["source_metrics"]["astrorim"]
    assert set(rim) == {"all", "v1", "v4"} and rim["all"]["n"] == 16
    assert math.isfinite(rim["all"]["ssim"]["mean"]) and -1 <= rim["all"]["ssim"]["median"] <= 1
    assert data["source_metrics"]["lens-fit"]["all"]["n"] == 2
    assert data["fit"]["n"] == 2 and data["timing"]["fit_s_per_system"] > 0
    assert data["timing"]["astrorim_ms_per_image"] > 0
    assert data["lens"]["astrorim"]["b_rel"]["n"] == 16
    per_variant = data["lens"]["astrorim"]["theta_e_median_rel_error_per_variant"]
    assert set(per_variant) == {"v1", "v4"} and all(v >= 0 for v in per_variant.values())
    assert any(t["caption"].startswith("Median |Δθ_E| / θ_E per variant") for t in ev["tables"])
    assert data["symmetrised"] is True  # the default, as predict
    by_images = data["lens"]["astrorim"]["theta_e_median_rel_error_by_images"]
    assert by_images["single"]["n"] + by_images["multiple"]["n"] == 16
    assert any(t["caption"].startswith("Median |Δθ_E| / θ_E by image") for t in ev["tables"])
    by_field = data["lens"]["astrorim"]["theta_e_median_rel_error_by_field_fraction"]
    assert sum(b["n"] for b in by_field) == 16
    assert any(t["caption"].startswith("Median |Δθ_E| / θ_E by θ_E over") for t in ev["tables"])
    assert data["store_sigma_v_matches_conversion"] < 1e-4
    assert all((tmp_path / "ev" / f).is_file() for f in ("reconstructions.png",
                                                          "ssim_theta_e.png"))  # fmt: skip
    assert ev["tables"][0]["rows"]

    # predict from a FITS image written here (header pixel scale, PSF, variance)
    from astropy.io import fits

    from lensml.data.store import open_store

    d = open_store(stores[0]).read_all(keys=["image", "psf", "noise_sigma"])
    img = tmp_path / "lens.fits"
    hdu = fits.PrimaryHDU(d["image"][0, 0])
    hdu.header["CDELT1"], hdu.header["CDELT2"] = -0.04 / 3600, 0.04 / 3600
    hdu.writeto(img)
    fits.PrimaryHDU(d["psf"][0, 0]).writeto(tmp_path / "psf.fits")
    fits.PrimaryHDU(d["noise_sigma"][0, 0] ** 2).writeto(tmp_path / "var.fits")
    res = predict_strong(img, model, tmp_path / "out.fits", psf=tmp_path / "psf.fits",
                         variance=tmp_path / "var.fits", z_l=0.4, z_s=1.5)  # fmt: skip
    with fits.open(tmp_path / "out.fits") as hdul:
        names = [h.name for h in hdul]
        for ext in ("DATA", "SOURCE", "KAPPA", "MODEL", "RESIDUAL", "CHI2", "PARAMS"):
            assert ext in names
        table = hdul["PARAMS"].data
        assert table["theta_e"][0] == pytest.approx(res["params"]["theta_e"])
        assert table["sigma_v"][0] > 0 and table["mass"][0] > 0
        assert hdul["KAPPA"].data.shape == (96, 96)
    assert (tmp_path / "out.png").is_file()
    on_edge = res["params"]["theta_e"] >= RING_EDGE_FRACTION * 96 * 0.04 / 2
    assert res["warnings"] == ([ring_edge_warning(res["params"]["theta_e"], 1.92, True)]
                               if on_edge else [])  # fmt: skip
    header = fits.getheader(tmp_path / "out.fits")
    assert header["RINGEDGE"] is on_edge and header["NONLIN"] is False
    sig, mass = physical_quantities(res["params"]["theta_e"], 0.4, 1.5, None)
    assert res["params"]["sigma_v"] == pytest.approx(float(sig[0]))
    assert res["params"]["mass"] == pytest.approx(float(mass[0]))

    # a larger cutout is cropped about the centre; a smaller one is refused with the size
    big = tmp_path / "big.fits"
    h = fits.PrimaryHDU(np.pad(d["image"][0, 0], 10))
    h.header["PIXSCALE"] = 0.04
    h.writeto(big)
    assert predict_strong(big, model, tmp_path / "big_out.fits", panel=False)["pixel_scale"] == 0.04
    small = tmp_path / "small.fits"
    h = fits.PrimaryHDU(d["image"][0, 0][:60, :60])
    h.header["PIXSCALE"] = 0.04
    h.writeto(small)
    with pytest.raises(ValueError, match="96x96"):
        predict_strong(small, model, tmp_path / "x.fits", panel=False)

    # bad input: no pixel scale, 8-bit-like image, NaN pixels
    bare = tmp_path / "bare.fits"
    fits.PrimaryHDU(d["image"][0, 0]).writeto(bare)
    with pytest.raises(ValueError, match="pixel scale"):
        predict_strong(bare, model, tmp_path / "x.fits", panel=False)
    ok = predict_strong(bare, model, tmp_path / "x.fits", pixel_scale=0.04, panel=False)
    assert any("PSF" in n for n in ok["notes"]) and any("variance" in n for n in ok["notes"])
    png = tmp_path / "png.fits"
    im = d["image"][0, 0]
    eight = np.round(255 * np.clip(im / im.max(), 0, 1)).astype(np.uint8)
    fits.PrimaryHDU(eight).writeto(png)
    with pytest.warns(UserWarning, match="non-linear"):
        r8 = predict_strong(png, model, tmp_path / "p8.fits", pixel_scale=0.04, panel=False)
    assert r8["warnings"] and fits.getheader(tmp_path / "p8.fits")["NONLIN"]
    nan = tmp_path / "nan.fits"
    im_nan = d["image"][0, 0].copy()
    im_nan[40:42, 40:42] = np.nan
    h = fits.PrimaryHDU(im_nan)
    h.header["PIXSCALE"] = 0.04
    h.writeto(nan)
    with pytest.raises(ValueError, match="4 NaN"):
        predict_strong(nan, model, tmp_path / "x.fits", panel=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rm = predict_strong(nan, model, tmp_path / "m.fits", mask_nonfinite=True, panel=False)
    assert any("NaN" in n for n in rm["notes"])


def test_ring_edge_warning():
    assert ring_edge_warning(1.2, 1.92, True) is None  # 0.625 of the half-width
    assert ring_edge_warning(float("nan"), 1.92, True) is None
    msg = ring_edge_warning(1.5, 1.92, True)
    assert msg is not None and "0.78 of the half-width" in msg and "coarser pixel scale" in msg
    single = ring_edge_warning(2.5, 1.92, False)
    assert single is not None and "1.30" in single and "coarser" not in single
    assert ring_edge_warning(RING_EDGE_FRACTION * 2.0, 2.0, False) is not None  # inclusive


def test_is_nonlinear():
    assert is_nonlinear(np.arange(256, dtype=float).reshape(16, 16))
    assert not is_nonlinear(np.linspace(0, 1, 256).reshape(16, 16))
    assert not is_nonlinear(np.arange(256, dtype=float).reshape(16, 16) - 3)


def test_bad_stores_and_arguments(stores, tmp_path):
    run_simulate("toy", 4, tmp_path / "toy", 0, progress=False)
    with pytest.raises(ValueError, match="expected 'strong'"):
        StrongDataset(tmp_path / "toy")
    with pytest.raises(ValueError, match="epochs"):
        train_strong(stores, "astrorim-small", tmp_path / "r", 0)
    with pytest.raises(ValueError, match="vgg-small"):
        train_strong(stores, "vgg-small", tmp_path / "r2", 1)


# ----------------------------------------------------------------------------- quickstart
def test_quickstart_section_with_the_shipped_model(tmp_path):
    """The report section with the shipped astrorim-small: no training, Table 2 and the fit."""
    from pathlib import Path

    from lensml.pipelines.strong import QUICKSTART, quickstart_section, shipped_model

    assert shipped_model() is not None, "the model zoo ships astrorim-small"
    paths, summary = quickstart_section(tmp_path / "qs", seed=0)
    assert summary["shipped_weights"] and summary["epochs_trained"] == 0
    assert "shipped astrorim-small" in summary["text"]
    assert not (tmp_path / "qs" / "work").exists()
    cfg = QUICKSTART["small"]
    assert summary["overall"]["n"] == cfg["n_test"] * len(cfg["variants"])
    assert summary["overall"]["ssim"]["mean"] > 0.8  # the card: mean SSIM on v1–v6 held out
    names = {p.name for p in paths}
    assert {"reconstructions.png", "strong_eval.json"} <= names
    assert summary["tables"] and all(Path(f).is_file() for f in summary["figures"])
