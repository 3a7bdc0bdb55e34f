"""Cluster pipeline: train through the engine, evaluate CNN + NFW fit, metrics, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lensml.data.runner import run_simulate
from lensml.pipelines.clusters import (
    LABELS,
    ClusterMapDataset,
    binned_error_stats,
    block_mean,
    downsample_factor,
    error_stats,
    evaluate_clusters,
    train_clusters,
)

SMALL = {"size": 64, "pixel_scale": 16.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("clusters") / "store"
    run_simulate("clusters", 36, out, 3, config=SMALL, shard_size=20, progress=False)
    return out


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    res = train_clusters(store, "vgg-small", run, noise="euclid", epochs=1, batch_size=16,
                         seed=0, device="cpu", progress=False)  # fmt: skip
    return res


def test_error_stats_hand_made():
    pred = np.array([1.0, 2.0, 4.0, 7.0])
    true = np.array([1.0, 1.0, 1.0, 1.0])  # Δ = 0, 1, 3, 6
    s = error_stats(pred, true)
    assert s["n"] == 4
    assert s["bias"] == pytest.approx(2.5)
    assert s["median_bias"] == pytest.approx(2.0)
    assert s["rms"] == pytest.approx(math.sqrt((0 + 1 + 9 + 36) / 4))
    assert s["sigma"] == pytest.approx(math.sqrt((2.5**2 + 1.5**2 + 0.5**2 + 3.5**2) / 4))
    # σ² + bias² = RMS² (eqs. 16–18)
    assert s["sigma"] ** 2 + s["bias"] ** 2 == pytest.approx(s["rms"] ** 2)


def test_binned_error_stats_bins_and_closed_last_edge():
    mass = np.array([14.0, 14.1, 14.5, 15.0, 15.5])
    true = np.zeros(5)
    pred = np.array([1.0, 3.0, -2.0, 0.5, 0.5])
    out = binned_error_stats(pred, true, mass, [14.0, 14.4, 15.0, 15.5])
    assert [b["n"] for b in out["bins"]] == [2, 1, 2]  # 15.0 -> last bin, 15.5 included
    assert out["bins"][0]["bias"] == pytest.approx(2.0)
    assert out["bins"][0]["sigma"] == pytest.approx(1.0)
    assert out["bins"][1]["rms"] == pytest.approx(2.0)
    assert out["overall"]["n"] == 5
    with pytest.raises(ValueError, match="edges"):
        binned_error_stats(pred, true, mass, [15.0, 14.0])


def test_block_mean_and_factor():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = block_mean(x, 2)
    assert y.shape == (1, 1, 2, 2)
    assert y[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 4 + 5) / 4)
    assert downsample_factor(128, 64) == 2
    with pytest.raises(ValueError, match="network expects 64x64"):
        downsample_factor(96, 64)


def test_dataset_noise_is_seeded_and_has_survey_sigma(store):
    ds = ClusterMapDataset(store, 64, "euclid", seed=5)
    clean = ClusterMapDataset(store, 64, None)
    a, b = ds[3]["image"], ds[3]["image"]
    assert torch.equal(a, b)
    ds.set_epoch(1)
    assert not torch.equal(a, ds[3]["image"])
    resid = (a - clean[3]["image"]).flatten()
    # σ_e / sqrt(n_g A_pix) = 0.3 / sqrt(30 (16/60)²) ≈ 0.2054
    assert resid.std().item() == pytest.approx(0.3 / math.sqrt(30 * (16 / 60) ** 2), rel=0.05)
    half = ClusterMapDataset(store, 32, None)
    assert half[0]["image"].shape == (2, 32, 32)
    assert half.pixel_scale == 32.0


def test_in_memory_and_streamed_datasets_give_the_same_items(store):
    """The in-memory copy (default) returns exactly what streaming from the store returns,
    in any order, and the noise never leaks into the held maps."""
    idx = [5, 0, 3, 7, 1]
    mem = ClusterMapDataset(store, 32, "euclid", seed=2, indices=idx, log_concentration=True)
    streamed = ClusterMapDataset(store, 32, "euclid", seed=2, indices=idx,
                                 log_concentration=True, memory_limit_mb=0)  # fmt: skip
    assert mem._maps is not None and streamed._maps is None
    for epoch in (0, 1):
        mem.set_epoch(epoch)
        streamed.set_epoch(epoch)
        for i in (4, 0, 2, 2, 1, 3):
            a, b = mem[i], streamed[i]
            assert torch.equal(a["image"], b["image"])
            assert torch.equal(a["labels"], b["labels"])
    clean = ClusterMapDataset(store, 32, None, indices=idx)
    assert torch.equal(
        clean[0]["image"],
        ClusterMapDataset(store, 32, None, indices=idx, memory_limit_mb=0)[0]["image"],
    )
    with pytest.raises(ValueError, match="memory_limit_mb must be >= 0"):
        ClusterMapDataset(store, 32, None, memory_limit_mb=-1)


def test_train_and_evaluate_end_to_end(store, trained, tmp_path):
    assert trained["model_dir"] is not None
    assert trained["input_size"] == 64 and trained["noise"] == "euclid"
    out = tmp_path / "eval"
    res = evaluate_clusters(store, [trained["model_dir"]], out, noise="euclid", seed=1,
                            include_noiseless=True, print_table=False)  # fmt: skip
    data = json.loads((out / "clusters_eval.json").read_text())
    assert set(data["conditions"]) == {"noiseless", "euclid"}
    noisy = data["conditions"]["euclid"]["methods"]
    assert set(noisy) == {"cnn:vgg-small", "nfw-tangential-fit"}
    assert set(noisy["cnn:vgg-small"]["labels"]) == set(LABELS)
    assert set(noisy["nfw-tangential-fit"]["labels"]) == {"log10_mvir", "c_vir"}
    stats = noisy["nfw-tangential-fit"]["labels"]["log10_mvir"]
    assert stats["overall"]["n"] == 36
    assert sum(b["n"] for b in stats["bins"]) == 36
    assert len(res["figures"]) == 6  # 2 density plots + 1 distribution plot per condition
    for f in res["figures"]:
        with open(f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    # the same seed gives the same noisy realisation, hence the same numbers
    again = evaluate_clusters(store, [trained["model_dir"]], tmp_path / "again", noise="euclid",
                              seed=1, plots=False, print_table=False)  # fmt: skip
    a = again["conditions"]["euclid"]["methods"]["nfw-tangential-fit"]["labels"]
    b = res["conditions"]["euclid"]["methods"]["nfw-tangential-fit"]["labels"]
    for label in ("log10_mvir", "c_vir"):
        assert a[label]["overall"]["rms"] == pytest.approx(b[label]["overall"]["rms"], rel=1e-6)


def test_bad_input_store_without_shear_maps(tmp_path):
    toy = tmp_path / "toy"
    run_simulate("toy", 4, toy, 0, progress=False)
    with pytest.raises(ValueError, match=r"\(g1, g2\)"):
        evaluate_clusters(toy, [], tmp_path / "e", print_table=False)
    with pytest.raises(ValueError, match=r"\(g1, g2\)"):
        train_clusters(toy, "vgg-small", tmp_path / "r", epochs=1, progress=False)


def test_bad_input_wrong_map_size(tmp_path):
    small = tmp_path / "s48"
    run_simulate("clusters", 2, small, 0, config={"size": 48, "pixel_scale": 20.0},
                 progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="maps are 48x48 pixels but the network expects 64x64"):
        train_clusters(small, "vgg-small", tmp_path / "r", epochs=1, progress=False)


def test_bad_input_nan_pixels(store, trained, tmp_path):
    import shutil

    import zarr

    bad = tmp_path / "bad"
    shutil.copytree(store, bad)
    shard = next(p for p in sorted((bad / "shards").iterdir()) if p.is_dir())
    arr = zarr.open_group(shard, mode="r+")["image"]
    arr[2, 0, 10, 10] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf pixels"):
        evaluate_clusters(bad, [trained["model_dir"]], tmp_path / "e", print_table=False)
    with pytest.raises(ValueError, match="NaN or inf pixels"):
        ClusterMapDataset(bad, 64, "euclid")
    streamed = ClusterMapDataset(bad, 64, "euclid", memory_limit_mb=0)
    streamed[1]
    with pytest.raises(ValueError, match="item 2 has NaN or inf pixels"):
        streamed[2]


def test_predict_from_fits_matches_predict_from_store(store, trained, tmp_path):
    """`predict clusters` on the FITS files of a store gives the store's predictions."""
    from lensml.data.fits_io import read_catalog
    from lensml.pipelines.clusters import predict_clusters

    run_simulate("clusters", 4, tmp_path / "s4", 3, config=SMALL, shard_size=4, progress=False,
                 fits=True)  # fmt: skip
    files = sorted((tmp_path / "s4").rglob("*.fits"))
    assert len(files) == 4, files
    a = predict_clusters(files, trained["model_dir"], tmp_path / "a.fits")
    b = predict_clusters([tmp_path / "s4"], trained["model_dir"], tmp_path / "b.fits")
    assert a["n"] == b["n"] == 4
    ca, cb = read_catalog(tmp_path / "a.fits"), read_catalog(tmp_path / "b.fits")
    for name in LABELS:
        np.testing.assert_allclose(ca[name], cb[name], rtol=1e-5, atol=1e-5)


def test_log_concentration_labels_round_trip(store):
    from lensml.pipelines.clusters import decode_predictions, training_label_names

    lin = ClusterMapDataset(store, noise=None)
    log = ClusterMapDataset(store, noise=None, log_concentration=True)
    assert log.label_names == training_label_names(True)
    assert log.label_names[1:3] == ["log10_c_vir", "log10_c_smooth"]
    a, b = lin[3]["labels"].numpy(), log[3]["labels"].numpy()
    np.testing.assert_allclose(b[1:3], np.log10(a[1:3]), rtol=1e-6)
    np.testing.assert_array_equal(b[[0, 3, 4]], a[[0, 3, 4]])
    dec, names = decode_predictions(b[None].astype(float), log.label_names)
    assert names == list(LABELS)
    np.testing.assert_allclose(dec[0], a, rtol=1e-5)


def test_trained_model_learns_log_concentration_and_reports_c(trained):
    import json as _json
    from pathlib import Path

    norm = _json.loads((Path(trained["model_dir"]) / "normalisation.json").read_text())
    assert "log10_c_vir" in norm["label_names"]


def test_l1_loss_is_recorded_and_a_bad_loss_refused(store, tmp_path):
    from pathlib import Path

    from lensml.train.saved_model import load_model

    res = train_clusters(store, "vgg-small", tmp_path / "l1", epochs=1, batch_size=16,
                         loss="l1", device="cpu", progress=False, max_items=20)  # fmt: skip
    assert load_model(Path(res["model_dir"]))[1].loss == "l1"
    with pytest.raises(ValueError, match=r"loss must be one of \('mse', 'l1'\), got 'huber'"):
        train_clusters(store, "vgg-small", tmp_path / "bad", epochs=1, loss="huber")
    assert not (tmp_path / "bad").exists()  # refused before anything is written
