"""Shear pipeline: train → post-process → load → predict, equivariance, evaluation, FITS in/out."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from lensml.data.cutouts import FLAG_EDGE, FLAG_NONFINITE, FLAG_OFF_IMAGE
from lensml.data.runner import run_simulate
from lensml.pipelines.shear import (
    POSTPROCESS_FILE,
    REFIT_FILE,
    ShearTrainingSet,
    dihedral_views,
    inspect_shear_store,
    load_shear_estimator,
    postprocess_shear,
    read_shear_arrays,
    train_shear,
)
from lensml.pipelines.shear_calibration import CALIBRATION_FILE, AffineCalibration
from lensml.pipelines.shear_eval import evaluate_shear
from lensml.pipelines.shear_predict import FLAG_MEASUREMENT, predict_shear

PS = 0.065  # arcsec / pixel of the clash preset
G_APPLIED = (0.1, -0.05)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """2 shared cores: several OpenMP threads per process slow everything down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("shear") / "store"
    run_simulate("shear", 160, out, 3, config={"cosmos_fraction": 0.25}, shard_size=80,
                 progress=False)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("run") / "run"
    return train_shear(store, "shear-cnn", run, 1, batch_size=32, post_fraction=0.45, seed=0,
                       device="cpu", progress=False)  # fmt: skip


def test_train_writes_postprocess_files_and_the_estimator_applies_them(trained, store):
    model = trained["model_dir"]
    post = json.loads((model / POSTPROCESS_FILE).read_text())
    assert post["order"] == ["refit", "symmetrise", "calibrate"]
    assert post["refit"] and post["symmetrise"]
    assert post["instrument"]["pixel_scale"] == pytest.approx(PS)
    assert trained["n_refit"] == 36 and trained["n_calib"] == 36
    refit = json.loads((model / REFIT_FILE).read_text())
    assert refit["views"] == 8 and refit["n"] == 8 * 36
    assert all(k > 1 for k in refit["attenuation_factor"])  # Appendix B: [1 − L/Var]⁻¹ > 1
    assert post["calibrate"] == (model / CALIBRATION_FILE).is_file()
    est = load_shear_estimator(model)
    # the refit layer is the one loaded (weights.pt keeps the trained layer)
    torch.testing.assert_close(est.net.final.weight.double(),
                               torch.tensor(refit["weight"], dtype=torch.float64),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    saved = torch.load(model / "weights.pt", weights_only=True)["final.weight"]
    assert not torch.allclose(saved, est.net.final.weight)
    x = read_shear_arrays(inspect_shear_store(store), ["image"], 24)["image"]
    g = est.predict(x)
    assert g.shape == (24, 2) and np.isfinite(g).all()
    # the plain path is the network on normalised stamps, de-normalised
    from lensml.data.shear_augment import normalise_stamps

    with torch.no_grad():
        plain = est.info.normalisation.denormalise(est.net(normalise_stamps(x))).double().numpy()
    np.testing.assert_allclose(est.predict(x, symmetrise=False, calibrate=False), plain,
                               rtol=0, atol=1e-6)  # fmt: skip


def test_inference_copy_matches_the_network_and_follows_refits(trained, store):
    """predict runs a folded, channels-last copy without the in-network standardisation."""
    from lensml.data.shear_augment import normalise_stamps
    from lensml.pipelines.shear_calibration import symmetrise

    est = load_shear_estimator(trained["model_dir"])
    x = read_shear_arrays(inspect_shear_store(store), ["image"], 20)["image"]
    fast = est.inference_net()
    assert fast is est.inference_net()  # cached
    assert fast is not est.net and est.net.standardise and not fast.standardise
    with torch.no_grad():
        ref = symmetrise(est.net, normalise_stamps(x), batch_size=8,
                         normalisation=est.info.normalisation).double().numpy()  # fmt: skip
    g = est.predict(x, symmetrise=True, calibrate=False)
    np.testing.assert_allclose(g, ref, rtol=0, atol=1e-6)
    # an in-place change of the network (e.g. another refit) makes a new copy
    with torch.no_grad():
        est.net.final.bias.add_(0.5)
    assert est.inference_net() is not fast
    g2 = est.predict(x, symmetrise=False, calibrate=False)
    with torch.no_grad():
        plain = est.info.normalisation.denormalise(est.net(normalise_stamps(x))).double().numpy()
    np.testing.assert_allclose(g2, plain, rtol=0, atol=1e-6)
    assert np.abs(g2 - g).max() > 1e-3


def test_symmetrised_estimator_is_exactly_equivariant_on_real_stamps(trained, store):
    est = load_shear_estimator(trained["model_dir"])
    x = read_shear_arrays(inspect_shear_store(store), ["image"], 12)["image"]
    g = torch.as_tensor(est.predict(x, symmetrise=True, calibrate=False))
    plain = torch.as_tensor(est.predict(x, symmetrise=False, calibrate=False))
    views_x, views_g = dihedral_views(x, g)
    pred = torch.as_tensor(est.predict(views_x, symmetrise=True, calibrate=False))
    torch.testing.assert_close(pred, views_g, rtol=0, atol=2e-6)
    # the network alone is not equivariant: the test is not trivially satisfied
    views_p = torch.as_tensor(est.predict(views_x, symmetrise=False, calibrate=False))
    assert (views_p - dihedral_views(x, plain)[1]).abs().max() > 1e-3


def test_dihedral_views_follow_the_spin2_rules():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    g = torch.tensor([[0.1, 0.2]])
    vx, vg = dihedral_views(x, g)
    assert vx.shape == (8, 1, 4, 4)
    # rotation by 90°: g → −g; mirror y → −y: g2 → −g2
    expect = [[0.1, 0.2], [-0.1, -0.2], [0.1, 0.2], [-0.1, -0.2],
              [0.1, -0.2], [-0.1, 0.2], [0.1, -0.2], [-0.1, 0.2]]  # fmt: skip
    torch.testing.assert_close(vg, torch.tensor(expect))
    torch.testing.assert_close(vx[4, 0], x[0, 0].flip(0))  # mirror reverses the rows


def test_calibration_is_saved_and_applied(trained, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained["model_dir"], model)
    cal = AffineCalibration(np.array([0.12, -0.05]), np.array([0.01, -0.02]),
                            np.full(2, 1e-3), np.full(2, 1e-4), 100)  # fmt: skip
    cal.save(model)
    post = json.loads((model / POSTPROCESS_FILE).read_text())
    post["calibrate"] = True
    (model / POSTPROCESS_FILE).write_text(json.dumps(post))
    est = load_shear_estimator(model)
    assert est.calibration is not None
    np.testing.assert_allclose(est.calibration.m, cal.m)
    x = torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    raw = est.predict(x, calibrate=False)
    np.testing.assert_allclose(est.predict(x), (raw - cal.c) / (1 + cal.m), rtol=1e-12)
    # switched off in the record → not applied, and calibrate=True is refused
    post["calibrate"] = False
    (model / POSTPROCESS_FILE).write_text(json.dumps(post))
    est = load_shear_estimator(model)
    np.testing.assert_allclose(est.predict(x), raw, rtol=1e-12)
    with pytest.raises(ValueError, match="no saved calibration"):
        est.predict(x, calibrate=True)


def test_postprocess_steps_are_switchable(trained, store, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained["model_dir"], model)
    arr = read_shear_arrays(inspect_shear_store(store), ["image", "labels"])
    saved = torch.load(model / "weights.pt", weights_only=True)["final.weight"]
    # everything off: the bare network
    rec = postprocess_shear(model, symmetrise=False)
    assert not (rec["refit"] or rec["symmetrise"] or rec["calibrate"])
    assert not (model / REFIT_FILE).exists() and not (model / CALIBRATION_FILE).exists()
    est = load_shear_estimator(model)
    torch.testing.assert_close(est.net.final.weight, saved)
    assert not est.symmetrise and est.calibration is None and est.refit is None
    # refit (plain views) + calibration, no symmetrisation; the same stamps for both here
    # (a 1-epoch network's response on other stamps may be <= 0, which cannot be calibrated)
    pair = (arr["image"][:120], arr["labels"][:120])
    rec = postprocess_shear(model, refit_set=pair, calib_set=pair, symmetrise=False,
                            refit_views=1)  # fmt: skip
    assert rec["refit"] and rec["calibrate"] and not rec["symmetrise"]
    assert rec["refit_summary"]["n"] == 120 and rec["refit_summary"]["views"] == 1
    est = load_shear_estimator(model)
    assert not torch.allclose(est.net.final.weight, saved)
    # the calibration was fitted on the estimator's own plain (refitted) output
    raw = est.predict(pair[0], calibrate=False)
    g = pair[1].double().numpy()
    for i in range(2):
        slope, icept = np.polyfit(g[:, i], raw[:, i], 1)
        assert est.calibration.m[i] == pytest.approx(slope - 1, abs=1e-9)
        assert est.calibration.c[i] == pytest.approx(icept, abs=1e-9)
    with pytest.raises(ValueError, match="refit_views"):
        postprocess_shear(model, refit_views=4)


def test_batched_training_augmentation_equals_the_per_item_dataset(store):
    from lensml.data.shear_augment import ShearAugment, ShearAugmentDataset

    info = inspect_shear_store(store)
    arrays = read_shear_arrays(info, ["image", "labels", "clean"], 40)
    aug = ShearAugment()
    ours = ShearTrainingSet(arrays, list(range(5, 25)), aug, seed=7)
    ours.set_epoch(2)
    ref = ShearAugmentDataset(arrays, aug, seed=7, indices=list(range(5, 25)))
    ref.set_epoch(2)
    batch = ours.__getitems__(list(range(20)))
    for j in (0, 7, 19):
        torch.testing.assert_close(batch[j]["image"], ref[j]["image"], rtol=0, atol=2e-5)
        torch.testing.assert_close(batch[j]["labels"], ref[j]["labels"])
    # no augmentation: only the normalisation
    plain = ShearTrainingSet(arrays, [3], None)[0]["image"]
    assert float(plain.mean()) == pytest.approx(0, abs=1e-6)
    assert float(plain.std(unbiased=False)) == pytest.approx(1, abs=1e-5)


def test_evaluate_all_three_methods_on_the_same_stamps(store, trained, tmp_path):
    res = evaluate_shear(store, trained["model_dir"], tmp_path / "eval", seed=1,
                         print_table=False)  # fmt: skip
    data = json.loads((tmp_path / "eval" / "shear_eval.json").read_text())
    assert set(data["methods"]) == {"cnn:shear-cnn", "ksb", "regauss"}
    assert data["n_calib"] + data["n_test"] == 160
    for name, m in data["methods"].items():
        t4 = m["table4"]
        for key in ("sigma", "sigma_err", "m", "m_err", "c", "c_err", "n_failed"):
            assert key in t4, (name, key)
        assert 0 < t4["sigma"][0] < 2
        assert len(m["metrics"]["vs_true_shear"]["g1"]["rms_1"]) == 16
        assert "vs_magnitude" in m["metrics"] and "vs_misalignment" in m["metrics"]
        # calibrated on the calibration split, the test residual m is consistent with 0
        r = m["residual_after_calibration"]
        assert all(abs(v) < 5 * e + 0.05 for v, e in zip(r["m"], r["m_err"], strict=True))
    assert data["methods"]["cnn:shear-cnn"]["table4"]["n_failed"] == 0
    assert data["methods"]["ksb"]["failures"]["n_failed"] == sum(
        data["methods"]["ksb"]["failures"]["by_reason"].values()
    )
    assert set(data["speed"]) == {"cnn:shear-cnn", "cnn:shear-cnn+sym", "ksb", "regauss"}
    sym = data["symmetrisation"]["cnn:shear-cnn"]
    assert isinstance(sym["lowers_rms"], bool)
    assert len(res["figures"]) == 3 and all(
        (tmp_path / "eval" / f).exists()
        for f in ("rms_vs_magnitude.png", "rms_vs_misalignment.png", "rms_bias_vs_true_shear.png")
    )
    npz = np.load(tmp_path / "eval" / "predictions.npz")
    assert npz["ksb/g"].shape == (160, 2) and npz["truth"].shape == (160, 2)
    # the common-stamp comparison: only stamps every method measured, for every method
    common = data["common"]
    both = npz["ksb/ok"] & npz["regauss/ok"]
    assert common["n"] == int(both.sum()) and common["n"] < 160  # some HSM failures here
    assert common["n_calib"] + common["n_test"] == common["n"]
    assert set(common["methods"]) == set(data["methods"])
    for name, t4 in common["methods"].items():
        assert t4["n_failed"] == 160 - common["n"], name
        assert 0 < t4["sigma"][0] < 2


# ----------------------------------------------------------------------------- predict
def _render_field(tmp_path, with_nan=True):
    """Round exponential galaxies (GalSim) sheared by G_APPLIED on a 300² image with a TAN WCS."""
    import galsim
    from astropy.io import fits
    from astropy.wcs import WCS

    from lensml.data.fits_io import write_catalog

    h = w = 300
    img = galsim.ImageF(w, h, scale=PS)
    psf = galsim.Gaussian(fwhm=0.121)
    xs = np.array([40.3, 150.7, 250.2, 60.6, 240.1, 150.0, 105.0])
    ys = np.array([50.2, 60.9, 40.4, 250.5, 245.3, 150.0, 105.0])
    for x, y in zip(xs, ys, strict=True):
        gal = galsim.Exponential(half_light_radius=0.25, flux=100.0).shear(
            g1=G_APPLIED[0], g2=G_APPLIED[1]
        )
        st = galsim.Convolve(gal, psf).drawImage(nx=48, ny=48, scale=PS,
                                                 center=galsim.PositionD(x + 1, y + 1))  # fmt: skip
        b = st.bounds & img.bounds
        img[b] += st[b]
    data = img.array.astype(np.float32)
    if with_nan:
        data[100:110, 100:110] = np.nan  # inside the stamp of the source at (105, 105)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [150.0, 150.0]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.cdelt = [-PS / 3600, PS / 3600]
    image = tmp_path / "image.fits"
    fits.PrimaryHDU(data, header=wcs.to_header()).writeto(image)
    cat = tmp_path / "sources.fits"
    # one position off the image; 1-based FITS pixel columns
    write_catalog(cat, {"NUMBER": np.arange(1, 9), "X_IMAGE": np.append(xs, 400.0) + 1,
                        "Y_IMAGE": np.append(ys, 20.0) + 1})  # fmt: skip
    return image, cat


def test_predict_shear_catalogue_flags_and_field_maps(trained, tmp_path):
    from astropy.io import fits
    from astropy.table import Table

    image, cat = _render_field(tmp_path)
    out = tmp_path / "shear.fits"
    res = predict_shear(image, cat, trained["model_dir"], out, field_scale=3.0, n_boot=5)
    t = Table.read(out)
    assert len(t) == 8 and res["n"] == 8
    assert set(t.colnames) >= {"id", "x", "y", "ra", "dec", "g1", "g2", "flag"}
    assert list(t["id"]) == list(range(1, 9))
    off, nan = 7, 6
    assert t["flag"][off] & FLAG_OFF_IMAGE and t["flag"][off] & FLAG_EDGE
    assert t["flag"][nan] & FLAG_NONFINITE
    g = np.stack([np.asarray(t["g1"], float), np.asarray(t["g2"], float)], 1)
    assert np.isnan(g[[off, nan]]).all()  # never a silent zero
    assert np.isfinite(g[:6]).all() and (t["flag"][:6] == 0).all()
    assert res["n_valid"] == 6 and res["n_flagged"] == 2
    assert t["x"][0] == pytest.approx(41.3)  # the catalogue's 1-based convention is kept
    with fits.open(res["field"]) as hdul:
        names = {h.name for h in hdul}
        assert {"G1", "G2", "SIGMA_G1", "SIGMA_G2", "N_EFF", "DENSITY"} <= names
        assert hdul[0].header["NBOOT"] == 5
        assert hdul["G1"].header["CTYPE1"] == "RA---TAN"
    assert res["whiskers"] and (tmp_path / "shear_whiskers.png").is_file()


def test_predict_with_ksb_recovers_the_applied_shear_and_flags_failures(trained, tmp_path):
    from astropy.table import Table

    image, cat = _render_field(tmp_path, with_nan=False)
    out = tmp_path / "ksb.fits"
    res = predict_shear(image, cat, trained["model_dir"], out, estimator="ksb", psf="preset",
                        field_scale=3.0, n_boot=0, whiskers=False)  # fmt: skip
    t = Table.read(out)
    ok = np.asarray(t["flag"]) == 0
    assert ok.sum() == 7 and res["field"] is not None and res["whiskers"] is None
    # noise-free round galaxies: KSB returns the shear GalSim applied (sign and axes right)
    np.testing.assert_allclose(t["g1"][ok], G_APPLIED[0], atol=3e-3)
    np.testing.assert_allclose(t["g2"][ok], G_APPLIED[1], atol=3e-3)
    assert FLAG_MEASUREMENT == 16


def test_predict_bad_inputs(trained, tmp_path):
    image, cat = _render_field(tmp_path, with_nan=False)
    model = trained["model_dir"]
    with pytest.raises(ValueError, match="needs a PSF"):
        predict_shear(image, cat, model, tmp_path / "a.fits", estimator="ksb")
    with pytest.raises(ValueError, match="takes 32x32"):
        predict_shear(image, cat, model, tmp_path / "a.fits", stamp_size=24)
    with pytest.raises(ValueError, match="needs a model"):
        predict_shear(image, cat, None, tmp_path / "a.fits")
    with pytest.raises(ValueError, match="estimator must be"):
        predict_shear(image, cat, model, tmp_path / "a.fits", estimator="rrg")
    with pytest.raises(ValueError, match="pixel scale"):
        from astropy.io import fits

        with fits.open(image) as hdul:
            hdr = hdul[0].header
            hdr["CDELT1"], hdr["CDELT2"] = -0.1 / 3600, 0.1 / 3600
            fits.PrimaryHDU(hdul[0].data, header=hdr).writeto(tmp_path / "coarse.fits")
        predict_shear(tmp_path / "coarse.fits", cat, model, tmp_path / "a.fits")


def test_estimator_rejects_wrong_stamp_sizes_and_nan_pixels(trained):
    est = load_shear_estimator(trained["model_dir"])
    with pytest.raises(ValueError, match="takes 32x32-pixel"):
        est.predict(torch.zeros(3, 1, 24, 24))
    with pytest.raises(ValueError, match="takes 32x32-pixel"):
        est.predict(torch.zeros(3, 2, 32, 32))
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    x[2, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"1 stamp\(s\) have NaN or inf pixels \(items \[2\]\)"):
        est.predict(x)


def test_evaluate_and_train_bad_inputs(store, trained, tmp_path):
    with pytest.raises(ValueError, match="needs a model"):
        evaluate_shear(store, None, tmp_path / "e")
    with pytest.raises(ValueError, match="methods must be among"):
        evaluate_shear(store, None, tmp_path / "e", methods=["rrg"])
    small = tmp_path / "small"
    run_simulate("shear", 12, small, 1, config={"size": 24, "cosmos_fraction": 0.0},
                 progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="takes 32x32 stamps but data_dir"):
        evaluate_shear(small, trained["model_dir"], tmp_path / "e")
    with pytest.raises(ValueError, match="epochs must be"):
        train_shear(store, "shear-cnn", tmp_path / "r", 0)
    with pytest.raises(ValueError, match="refit: the matched set would hold"):
        train_shear(store, "shear-cnn", tmp_path / "r", 1, post_fraction=0.1, progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        train_shear(tmp_path / "nowhere", "shear-cnn", tmp_path / "r", 1)


def test_simulated_cluster_field_has_the_nfw_tangential_pattern():
    from lensml.pipelines.shear_quickstart import shipped_model_dir, simulate_cluster_field

    f = simulate_cluster_field(4, side=40.0, n_sources=30, r_min=8.0)
    assert f.image.shape == (615, 615) and np.isfinite(f.image).all()
    assert f.x.shape == (30,) and f.noise_sigma > 0
    # tangential shear: g1 + i g2 = −|g| e^{2iφ} for a source at position angle φ
    cx, cy = f.lens["centre_pixel"]
    phi = np.arctan2(f.y - cy, f.x - cx)
    gt = -(f.g1 * np.cos(2 * phi) + f.g2 * np.sin(2 * phi))
    gx = f.g2 * np.cos(2 * phi) - f.g1 * np.sin(2 * phi)
    assert (gt > 0.05).all() and np.abs(gx).max() < 1e-6
    # the sources are where the catalogue says: light peaks within a pixel of each position
    j, i = np.round(f.x).astype(int), np.round(f.y).astype(int)
    assert np.median(f.image[i, j]) > 5 * f.noise_sigma
    hook = shipped_model_dir("shear-cnn")
    assert hook is None or (hook / "model.json").is_file()
