"""Sérsic pipeline: metrics, dataset, train → evaluate → predict, bad inputs (GaLNet, issue 5)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import lensml.nets  # registers the GaLNet presets
import lensml.sims.sersic  # noqa: F401  (registers the generator)
from lensml.data.runner import run_simulate
from lensml.physics.grids import PixelGrid
from lensml.physics.stamps import render_sersic_stamps
from lensml.pipelines.sersic import (
    ENCODED_LABELS,
    SersicStampDataset,
    augment_item,
    inspect_sersic_store,
    load_sersic_model,
    read_sersic_arrays,
    train_sersic,
)
from lensml.pipelines.sersic_eval import evaluate_sersic, photometry_rescale
from lensml.pipelines.sersic_masks import segmentation_masks
from lensml.pipelines.sersic_metrics import (
    binned_statistical_errors,
    galnet_delta,
    galnet_nmad,
    galnet_outlier_fraction,
    pull_stats,
    statistical_error,
    table2_row,
    wrap_pa,
    wrapped_prediction,
)
from lensml.pipelines.sersic_predict import predict_sersic, resample_stamps

QUIET = {"neighbour_density": 5.0}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("sersic")
    run_simulate("sersic", 64, root / "train", 3, config=QUIET, shard_size=40, progress=False)
    run_simulate("sersic", 24, root / "test", 4, config=QUIET, shard_size=24, progress=False)
    return root / "train", root / "test"


@pytest.fixture(scope="module")
def trained(stores, tmp_path_factory):
    """GaLNet-2-small with the σ head (huber_nll) and GaLNet-1-small with the paper's Huber."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for net, loss in (("galnet-2-small", "huber_nll"), ("galnet-1-small", "huber")):
        out[net] = train_sersic(stores[0], net, root / net, epochs=1, loss=loss, batch_size=16,
                                seed=0, device="cpu", progress=False)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def evaluated(stores, trained, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("eval")
    models = [trained["galnet-1-small"]["model_dir"], trained["galnet-2-small"]["model_dir"]]
    return evaluate_sersic(stores[1], models, out, fit_max=6, n_examples=2, print_table=False)


# ----------------------------------------------------------------------------- metrics
def test_outlier_fraction_and_nmad_follow_eqs_8_and_9():
    true = np.array([1.0, 1.0, 3.0, 9.0])
    pred = np.array([1.2, 1.4, 3.0, 7.0])  # Δp = 0.1, 0.2, 0, -0.2
    np.testing.assert_allclose(galnet_delta(pred, true), [0.1, 0.2, 0.0, -0.2])
    assert galnet_outlier_fraction(pred, true) == pytest.approx(0.5)
    # median Δp = 0.05; |Δp − 0.05| = 0.05, 0.15, 0.05, 0.25 → median 0.1
    assert galnet_nmad(pred, true) == pytest.approx(1.4826 * 0.1)
    assert math.isnan(galnet_outlier_fraction([np.nan], [1.0]))


def test_pa_wrap_and_statistical_error():
    np.testing.assert_allclose(wrap_pa([179.0, -179.0, 90.0, -90.0, 45.0]),
                               [-1.0, 1.0, -90.0, -90.0, 45.0])  # fmt: skip
    # a 179° prediction for a 1° truth is a −2° error, not +178°
    np.testing.assert_allclose(wrapped_prediction([179.0], [1.0], "pa"), [-1.0])
    np.testing.assert_allclose(wrapped_prediction([179.0], [1.0], "q"), [179.0])
    row = table2_row([179.0, 91.0, 45.0, 2.0], [1.0, 90.0, 44.0, 178.0], "pa")
    assert row["rmse"] == pytest.approx(math.sqrt((4 + 1 + 1 + 16) / 4))
    assert row["r2"] > 0.99 and row["r2_unwrapped"] < 0
    # eq. 10 uses N − 1
    assert statistical_error([1.0, 2.0, 4.0], [0.0, 0.0, 0.0]) == pytest.approx(math.sqrt(21 / 2))


def test_binned_errors_relative_except_mag():
    t = np.array([0.0, 0.1, 0.9, 1.0])
    p = t + np.array([0.1, -0.1, 0.2, 0.0])
    bins = binned_statistical_errors(p + 20, t + 20, "mag", n_bins=2)  # magnitudes
    assert [b["n"] for b in bins] == [2, 2]
    assert bins[0]["delta_e"] == pytest.approx(bins[0]["e_s"]) == pytest.approx(math.sqrt(0.02))
    rel = binned_statistical_errors(p + 1, t + 1, "r_eff", edges=[1.0, 1.5, 2.0])
    assert rel[1]["e_s"] == pytest.approx(math.sqrt(0.04))
    assert rel[1]["delta_e"] == pytest.approx(math.sqrt(0.04) / np.mean(p[2:] + 1))
    with pytest.raises(ValueError, match="edges"):
        binned_statistical_errors(p, t, "q", edges=[1.0, 0.5])


def test_pull_stats_of_calibrated_gaussian_errors():
    g = np.random.default_rng(1)
    sigma = g.uniform(0.5, 2.0, 20000)
    pred = sigma * g.standard_normal(20000)
    s = pull_stats(pred, np.zeros(20000), sigma)
    assert s["std"] == pytest.approx(1.0, abs=0.02) and s["nmad"] == pytest.approx(1.0, abs=0.03)
    assert s["frac_1sigma"] == pytest.approx(0.683, abs=0.01)
    assert pull_stats(2 * pred, np.zeros(20000), sigma)["std"] == pytest.approx(2.0, abs=0.04)


def test_photometry_rescale_keeps_the_magnitude():
    # mag = zp − 2.5 log10(F / t) must be the same number in both systems
    f, zp, t = 1234.0, 25.0, 100.0
    mag = zp - 2.5 * math.log10(f / t)
    k = float(photometry_rescale(zp, t, 24.0, 1800.0))
    assert 24.0 - 2.5 * math.log10(f * k / 1800.0) == pytest.approx(mag, abs=1e-12)


# ----------------------------------------------------------------------------- data
def _asymmetric_psf(size: int = 25, ps: float = 0.2) -> torch.Tensor:
    ax = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2) * ps
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    k = torch.exp(-((x - 0.1) ** 2) / (2 * 0.15**2) - y**2 / (2 * 0.25**2))
    k = k + 0.3 * torch.exp(-((x + 0.2) ** 2 + (y - 0.3) ** 2) / (2 * 0.1**2))
    return (k / k.sum())[None, None]


def _render(labels: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    x, y, _, r_eff, q, pa, n = labels.unbind(-1)
    return render_sersic_stamps(PixelGrid.square(41, 0.2), r_eff=r_eff, n=n, q=q,
                                phi=torch.deg2rad(pa), x0=x, y0=y, flux=1000.0, psf=psf,
                                dtype=torch.float64)[0]  # fmt: skip


@pytest.mark.parametrize(("k", "flip"), [(1, False), (2, False), (3, True), (0, True)])
def test_augmentation_matches_rendering_the_transformed_labels(k, flip):
    labels = torch.tensor([0.13, -0.21, 20.0, 0.8, 0.5, 30.0, 1.5], dtype=torch.float64)
    psf = _asymmetric_psf()
    img = _render(labels, psf)
    img_t, psf_t, lab_t = augment_item(img, psf[0], labels, k, flip)
    expected = _render(lab_t, psf_t[None])
    assert float((img_t - expected).abs().max()) < 1e-6 * float(img.max())
    assert 0.0 <= float(lab_t[5]) < 180.0


def test_dataset_shapes_packing_and_seeded_augmentation(stores):
    info = inspect_sersic_store(stores[0])
    assert (info.n, info.stamp_size, info.psf_size, info.pixel_scale) == (64, 61, 25, 0.2)
    ds2 = SersicStampDataset(stores[0], True, 25.0, indices=[3, 5, 7])
    ds1 = SersicStampDataset(stores[0], False, 25.0, indices=[3, 5, 7])
    item2, item1 = ds2[1], ds1[1]
    assert item2["image"].shape == (2, 61, 61) and item1["image"].shape == (1, 61, 61)
    assert item2["labels"].shape == (len(ENCODED_LABELS),)
    raw = read_sersic_arrays(info, ["image", "psf", "labels"], 8)
    torch.testing.assert_close(
        item2["image"][0], torch.asinh(torch.from_numpy(raw["image"][5, 0]) / 25)
    )
    torch.testing.assert_close(item2["image"][1, 18:43, 18:43], torch.from_numpy(raw["psf"][5, 0]))
    assert float(item2["image"][1, :18].abs().max()) == 0.0
    lab = raw["labels"][5]
    assert float(item2["labels"][3]) == pytest.approx(math.log10(lab[3]), abs=1e-6)
    assert float(item2["labels"][5]) == pytest.approx(math.cos(math.radians(2 * lab[5])), abs=1e-5)
    aug = SersicStampDataset(stores[0], True, 25.0, indices=list(range(16)), augment=True, seed=2)
    first = [aug[i]["labels"] for i in range(16)]
    assert all(torch.equal(a, aug[i]["labels"]) for i, a in enumerate(first))  # reproducible
    aug.set_epoch(1)
    assert any(not torch.equal(a, aug[i]["labels"]) for i, a in enumerate(first))


# ----------------------------------------------------------------------------- train, evaluate
def test_train_saves_a_sersic_model_with_calibrated_sigma(trained):
    res = trained["galnet-2-small"]
    model = load_sersic_model(res["model_dir"])
    assert model.with_psf and model.has_sigma and model.stamp_size == 61 and model.psf_size == 25
    assert model.meta["asinh_scale"] > 0 and model.meta["zeropoint"] > 20
    factors = model.meta["sigma_calibration"]["factors"]
    assert set(factors) == set(ENCODED_LABELS)
    after = res["sigma_calibration"]["val_pulls_after"]
    # folding the factors into the output bias makes the validation pulls unit-variance
    assert all(after[k]["std"] == pytest.approx(1.0, abs=1e-3) for k in ENCODED_LABELS)
    # the location calibration left every output median-unbiased on the validation split
    cal = res["sigma_calibration"]
    assert np.abs(cal["median_residual_after"]).max() < 1e-4
    assert np.abs(cal["median_residual_before"]).max() > 1e-3  # there was something to remove
    assert set(model.meta["location_calibration"]["shift"]) == set(ENCODED_LABELS)
    plain = load_sersic_model(trained["galnet-1-small"]["model_dir"])
    assert not plain.with_psf and not plain.has_sigma
    cal1 = trained["galnet-1-small"]["sigma_calibration"]  # no σ head: the location only
    assert cal1["factors"] is None and cal1["val_pulls_after"] is None
    assert np.abs(cal1["median_residual_after"]).max() < 1e-4


def test_evaluate_reports_table2_for_cnns_and_fit_in_one_run(evaluated, tmp_path):
    data = json.loads(open(evaluated["json"]).read())
    assert set(data["methods"]) == {"galnet-1-small", "galnet-2-small", "sersic-fit"}
    for entry in data["methods"].values():
        assert entry["galaxies_per_s"] > 0
    for name in ("galnet-1-small", "galnet-2-small"):  # best of 3 full passes, and the median
        entry = data["methods"][name]
        assert len(entry["seconds_all"]) == 3 and entry["seconds"] == min(entry["seconds_all"])
        assert entry["galaxies_per_s"] >= entry["galaxies_per_s_median"] > 0
    for entry in data["methods"].values():
        for k in ("x", "y", "mag", "r_eff", "q", "pa", "n"):
            row = entry["table2"][k]
            assert all(math.isfinite(row[s]) for s in ("r2", "outlier_fraction", "nmad", "e_s"))
            assert len(entry["binned"][k]) == 5
        assert entry["chi2_reff"]["n"] > 0
    assert data["methods"]["sersic-fit"]["n"] == 6
    assert data["methods"]["galnet-2-small"]["table2"]["x"]["n"] == 24
    assert data["methods"]["galnet-2-small"]["table2_subset"]["x"]["n"] == 6
    assert "galnet-2-small/sersic-fit" in data["speed_ratios"]
    cal = data["methods"]["galnet-2-small"]["sigma_calibration"]
    assert set(cal["params"]) == {"x", "y", "mag", "r_eff", "q", "pa", "n"}
    assert data["methods"]["galnet-1-small"]["sigma_calibration"] is None
    assert "chi2_reff_gn2_aperture" in data["methods"]["sersic-fit"]
    names = {p.split("/")[-1] for p in data["figures"]}
    assert {"residuals.png", "chi2_reff.png", "pulls_galnet-2-small.png"} <= names
    assert "pred_vs_true_sersic-fit.png" in names
    assert data["paper_table2"]["galnet-2"]["r2"]["n"] == 0.8905


# ----------------------------------------------------------------------------- predict
def _write_cutouts(tmp_path, image, psf, n=3, nan=False):
    from lensml.data.fits_io import write_image_fits

    paths = []
    for i in range(n):
        img = image[i, 0].copy()
        if nan and i == 1:
            img[30, 30] = np.nan
        maps = {"image": img} if psf is None else {"image": img, "psf": psf[i, 0]}
        path = tmp_path / f"gal{i}.fits"
        if nan and i == 1:  # write_image_fits refuses NaN: write it with astropy directly
            from astropy.io import fits

            fits.HDUList([fits.PrimaryHDU(img.astype(np.float32))]).writeto(path)
        else:
            write_image_fits(path, maps, pixel_scale=0.2)
        paths.append(path)
    return paths


def test_predict_fits_cutouts_matches_the_store_and_has_sigma_columns(stores, trained, tmp_path):
    from astropy.table import Table

    model = trained["galnet-2-small"]["model_dir"]
    raw = read_sersic_arrays(inspect_sersic_store(stores[1]), ["image", "psf"], 3)
    paths = _write_cutouts(tmp_path, raw["image"], raw["psf"])
    res = predict_sersic(paths, model, tmp_path / "cat.fits", psf_hdu="PSF")
    cat = Table.read(tmp_path / "cat.fits")
    for col in ("source", "x", "y", "mag", "r_eff", "q", "pa", "n", "sigma_n", "sigma_pa"):
        assert col in cat.colnames
    assert len(cat) == 3 and res["has_sigma"] and str(cat["r_eff"].unit) == "arcsec"
    store_res = predict_sersic(stores[1], model, tmp_path / "store.fits")
    ref = Table.read(tmp_path / "store.fits")
    assert store_res["n"] == 24
    for col in ("mag", "r_eff", "n", "sigma_mag"):
        np.testing.assert_allclose(cat[col], ref[col][:3], rtol=1e-5, atol=1e-6)
    # GaLNet-1 needs no PSF and has no σ columns
    plain = predict_sersic(paths, trained["galnet-1-small"]["model_dir"], tmp_path / "g1.fits",
                           hdu="IMAGE")  # fmt: skip
    assert "sigma_n" not in plain["columns"] and plain["n"] == 3


def test_predict_refuses_bad_inputs(stores, trained, tmp_path):
    model = trained["galnet-2-small"]["model_dir"]
    raw = read_sersic_arrays(inspect_sersic_store(stores[1]), ["image", "psf"], 3)
    big = np.pad(raw["image"], ((0, 0), (0, 0), (2, 2), (2, 2)))
    paths = _write_cutouts(tmp_path, big, raw["psf"])
    with pytest.raises(ValueError, match=r"65x65 pixels but .* expects 61x61"):
        predict_sersic(paths, model, tmp_path / "c.fits", psf_hdu="PSF")
    # resample=True: equal pixel scales → an exact centred crop
    predict_sersic(paths, model, tmp_path / "r.fits", psf_hdu="PSF", resample=True)
    good = _write_cutouts(tmp_path / "..", raw["image"], raw["psf"])
    predict_sersic(good, model, tmp_path / "g.fits", psf_hdu="PSF")
    from astropy.table import Table

    np.testing.assert_allclose(Table.read(tmp_path / "r.fits")["mag"],
                               Table.read(tmp_path / "g.fits")["mag"], rtol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="uses each galaxy's PSF"):
        predict_sersic(good, model, tmp_path / "c.fits", hdu="IMAGE")
    small_psf = raw["psf"][:, :, 2:-2, 2:-2]
    bad_psf = _write_cutouts(tmp_path, raw["image"], small_psf)
    with pytest.raises(ValueError, match=r"21x21 pixels but .* expects 25x25"):
        predict_sersic(bad_psf, model, tmp_path / "c.fits", psf_hdu="PSF")
    nan_dir = tmp_path / "nan"
    nan_dir.mkdir()
    nan_paths = _write_cutouts(nan_dir, raw["image"], None, nan=True)
    with pytest.raises(ValueError, match="NaN"):
        predict_sersic(nan_paths, trained["galnet-1-small"]["model_dir"], tmp_path / "c.fits")


def test_resample_stamps_crop_flux_and_limits():
    g = torch.Generator().manual_seed(0)
    img = torch.rand((2, 1, 65, 65), generator=g, dtype=torch.float64)
    crop = resample_stamps(img, 0.2, 61, 0.2)
    torch.testing.assert_close(crop, img[:, :, 2:-2, 2:-2].float())
    ax = (torch.arange(81, dtype=torch.float64) - 40) * 0.1
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    blob = torch.exp(-(xx**2 + yy**2) / (2 * 0.8**2))[None, None]
    coarse = resample_stamps(blob, 0.1, 41, 0.15)  # 1.5× larger pixels
    assert float(coarse.sum()) == pytest.approx(float(blob.sum()), rel=2e-3)
    with pytest.raises(ValueError, match="outside"):
        resample_stamps(blob, 0.1, 11, 0.3)


def test_segmentation_masks_neighbours_and_blends_not_the_target():
    ax = np.arange(61) - 30.0
    yy, xx = np.meshgrid(ax, ax, indexing="ij")

    def blob(x0, y0, amp, s):
        return amp * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s**2))

    noise = np.random.default_rng(3).normal(0.0, 1.0, (61, 61))
    target = blob(0, 0, 60, 3.0)
    img = target + blob(20, -18, 300, 1.5) + blob(7, 4, 200, 1.5) + noise
    mask = segmentation_masks(img[None, None], 1.0)[0, 0]
    assert not mask[28:33, 28:33].any()  # the target's core stays
    assert mask[30 - 18, 30 + 20] and mask[30 + 4, 30 + 7]  # separate and blended neighbours
    assert mask.mean() < 0.2
    alone = segmentation_masks((target + noise)[None], 1.0)
    assert alone.sum() == 0  # noise peaks (below min_area) are left alone
    no_deblend = segmentation_masks(img[None], 1.0, deblend=False)[0]
    assert not no_deblend[30 + 4, 30 + 7]  # without deblending the blend stays in the target


def test_quickstart_section_uses_shipped_models(trained, tmp_path, monkeypatch):
    import lensml.pipelines.sersic_predict as sp
    from lensml.pipelines.sersic import quickstart_section

    assert sp.shipped_model("galnet-2-small") is None or sp.shipped_model("x") is None
    models = {net: trained[net]["model_dir"] for net in sp.NETWORKS}
    monkeypatch.setattr(sp, "shipped_model", lambda net: models[net])
    monkeypatch.setattr(sp, "QUICK", {**sp.QUICK, "n_test": 12, "fit_max": 3})
    paths, summary = quickstart_section(tmp_path / "qs", seed=1)
    assert summary["models"]["galnet-2-small"].startswith("shipped")
    assert set(summary["table2"]) == {"galnet-1-small", "galnet-2-small", "sersic-fit"}
    assert all(p.is_file() for p in paths) and not (tmp_path / "qs" / "work").exists()
    assert any(p.name == "residuals.png" for p in paths)


def test_calibrate_outputs_again_changes_little_and_records_totals(stores, trained, tmp_path):
    """A second calibration on the run's own validation split finds (almost) nothing left to
    shift or scale, and the metadata keep the totals (shifts added, factors multiplied)."""
    import shutil

    from lensml.pipelines.sersic import calibrate_outputs, validation_split

    src = trained["galnet-2-small"]["model_dir"]
    first = load_sersic_model(src).meta
    model_dir = tmp_path / "again"
    shutil.copytree(src, model_dir)
    _, val_idx = validation_split(64, 0, 0.1)  # the fixture's train_sersic split
    assert len(val_idx) == 6 and val_idx == sorted(val_idx)
    val = SersicStampDataset(stores[0], True, first["asinh_scale"], val_idx, 64)
    res = calibrate_outputs(model_dir, val, 4)
    assert res["applied"] and np.abs(res["location_shift"]).max() < 1e-5
    assert all(f == pytest.approx(1.0, abs=1e-4) for f in res["factors"].values())
    meta = load_sersic_model(model_dir).meta
    for k in ENCODED_LABELS:
        assert meta["location_calibration"]["shift"][k] == pytest.approx(
            first["location_calibration"]["shift"][k], abs=1e-5)  # fmt: skip
        assert meta["sigma_calibration"]["factors"][k] == pytest.approx(
            first["sigma_calibration"]["factors"][k] * res["factors"][k], rel=1e-12)  # fmt: skip


def test_evaluate_refuses_bad_timing_repeats(stores, tmp_path):
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="timing_repeats must be an integer >= 1"):
            evaluate_sersic(stores[1], [], tmp_path / "e", timing_repeats=bad)
    assert not (tmp_path / "e").exists()  # refused before anything is written


def test_train_refuses_bad_arguments(stores, tmp_path):
    with pytest.raises(ValueError, match="loss must be one of"):
        train_sersic(stores[0], "galnet-2-small", tmp_path / "a", 1, loss="l1")
    with pytest.raises(ValueError, match="not a GaLNet"):
        train_sersic(stores[0], "vgg-small", tmp_path / "b", 1)
    with pytest.raises(ValueError, match=r"missing|not a store|manifest"):
        train_sersic(tmp_path / "missing", "galnet-2-small", tmp_path / "c", 1)
