"""Pixelated strong-lensing pipeline (Adam et al.): augmentation consistency, dataset, store
inspection, VAE / RIM training and loading, the generator's VAE draws, evaluation with
fine-tuning, prediction on FITS images and bad input. Tiny stores (32², "tiny" preset), tiny
networks, one epoch; everything is built once per module."""

from __future__ import annotations

import itertools
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import lensml.nets  # noqa: F401  (register the networks)
from lensml.data.runner import run_simulate
from lensml.physics.pixelated_lensing import PixelatedLensing, einstein_radius_from_kappa
from lensml.pipelines.strong_pixelated import (
    MAP_KEYS,
    SIDECAR,
    PixelatedDataset,
    augment_maps,
    inspect_pixelated_store,
    load_rim,
    load_vae,
    read_sidecar,
    train_rim,
    train_vae,
)
from lensml.pipelines.strong_pixelated_eval import evaluate_pixelated, format_tables
from lensml.pipelines.strong_pixelated_predict import predict_pixelated

N, NS, PSF = 32, 32, 7
FOV, SOURCE_FOV = 7.69, 3.0
SCALE = FOV / N
N_TRAIN, N_TEST = 20, 8
RIM_CFG = {"filters": [4, 8], "steps": 2}
VAE_CFG = {"filters": 4, "latent_dim": 4}
FT_CFG = {"max_steps": 2, "n_samples": 2, "learning_rate": 1e-4}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_OPS = list(itertools.product((False, True), (False, True), range(4)))
#: the PEAK header comment overflows its card (see test_predict_clean_image_does_not_warn)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("spx_stores")
    train, test = root / "train", root / "test"
    # two shards in the training store, one in the test store
    run_simulate("strong-pixelated", N_TRAIN, train, 1, config={"preset": "tiny"},
                 shard_size=N_TRAIN // 2, progress=False)  # fmt: skip
    run_simulate("strong-pixelated", N_TEST, test, 2, config={"preset": "tiny"},
                 shard_size=N_TEST, progress=False)  # fmt: skip
    return {"train": train, "test": test}


@pytest.fixture(scope="module")
def other_store(tmp_path_factory):
    """A store of another geometry (source field 2.5″ instead of 3″)."""
    path = tmp_path_factory.mktemp("spx_other") / "other"
    run_simulate("strong-pixelated", 2, path, 3, config={"preset": "tiny", "source_fov": 2.5},
                 shard_size=2, progress=False)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def models(stores, tmp_path_factory):
    root = tmp_path_factory.mktemp("spx_models")
    common = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "seed": 0, "device": "cpu",
              "progress": False}  # fmt: skip
    vs = train_vae(stores["train"], "source", out_dir=root / "vs", network_config=VAE_CFG,
                   **common)  # fmt: skip
    vk = train_vae(stores["train"], "kappa", out_dir=root / "vk", network_config=VAE_CFG,
                   **common)  # fmt: skip
    rim = train_rim(stores["train"], "rim-pixelated-small", root / "rim", network_config=RIM_CFG,
                    **common)  # fmt: skip
    return {"vae_source": vs, "vae_kappa": vk, "rim": rim}


@pytest.fixture(scope="module")
def item(stores):
    """Test-store item 0 (image, psf, sigma, truths) as numpy arrays."""
    from lensml.data.store import open_store

    d = open_store(stores["test"]).read_all(keys=["image", "psf", "sigma", "labels"])
    return {
        "image": np.asarray(d["image"][0, 0], dtype=np.float64),
        "psf": np.asarray(d["psf"][0, 0], dtype=np.float64),
        "sigma": float(d["sigma"][0]),
        "psf_fwhm": float(d["labels"][0, 1]),
    }


@pytest.fixture(scope="module")
def lens_fits(item, tmp_path_factory):
    """The test item written as a FITS image with a header pixel scale, and its PSF kernel."""
    from lensml.data.fits_io import write_image_fits

    root = tmp_path_factory.mktemp("spx_fits")
    write_image_fits(root / "lens.fits", item["image"], pixel_scale=SCALE)
    write_image_fits(root / "psf.fits", item["psf"], pixel_scale=SCALE)
    return root / "lens.fits", root / "psf.fits"


# ----------------------------------------------------------------------------- augmentation
def _random_system(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lens = PixelatedLensing(16, 4.0, 12, 2.0)
    x, y = lens.image_grid.coordinates(dtype=torch.float64)
    # an off-centre elliptical lens (no symmetry of its own) plus a clump
    kappa = 1.2 / torch.sqrt(((x - 0.3) / 0.7) ** 2 + ((y + 0.2) / 1.3) ** 2 + 0.05)
    kappa = kappa + 0.8 * torch.exp(-((x + 0.9) ** 2 + (y - 0.6) ** 2) / 0.1)
    source = torch.rand(1, 1, 12, 12, generator=g, dtype=torch.float64)
    psf = torch.rand(1, 1, 5, 5, generator=g, dtype=torch.float64)  # asymmetric kernel
    return {"lens": lens, "source": source, "kappa": kappa[None, None], "psf": psf / psf.sum()}


@pytest.mark.parametrize("op", ALL_OPS, ids=[f"fx{a:d}-fy{b:d}-k{k}" for a, b, k in ALL_OPS])
def test_augmentation_keeps_the_system_consistent(op):
    """F(T source, T κ, T psf) = T F(source, κ, psf) for every flip / rotation T."""
    sys = _random_system(0)
    lens = sys["lens"]
    y = lens.forward(sys["source"], sys["kappa"], sys["psf"])
    sample = {"image": y[0], "source": sys["source"][0], "kappa": sys["kappa"][0],
              "psf": sys["psf"][0], "sigma": torch.tensor(0.1)}  # fmt: skip
    a = augment_maps(sample, *op)
    assert a["sigma"] is sample["sigma"] and set(a) == set(sample)
    for key in MAP_KEYS:
        assert a[key].shape == sample[key].shape and a[key].is_contiguous()
    y_aug = lens.forward(a["source"][None], a["kappa"][None], a["psf"][None])[0]
    scale = float(y.abs().max())
    assert float((y_aug - a["image"]).abs().max()) < 1e-10 * scale
    # the lensed image without PSF commutes as well (deflection field and source sampling)
    no_psf = augment_maps({"image": lens.lens(sys["source"], sys["kappa"])[0]}, *op)["image"]
    direct = lens.lens(a["source"][None], a["kappa"][None])[0]
    assert float((no_psf - direct).abs().max()) < 1e-10 * scale
    probe = torch.arange(16.0).reshape(1, 4, 4)
    if not torch.equal(augment_maps({"image": probe}, *op)["image"], probe):
        # the test can fail: the operation changes the image, and transforming only some of
        # the maps breaks the system (source untransformed; PSF untransformed)
        assert float((a["image"] - sample["image"]).abs().max()) > 1e-3 * scale
        wrong = lens.forward(sys["source"], a["kappa"][None], a["psf"][None])[0]
        assert float((wrong - a["image"]).abs().max()) > 1e-3 * scale
        wrong_psf = lens.forward(a["source"][None], a["kappa"][None], sys["psf"])[0]
        assert float((wrong_psf - a["image"]).abs().max()) > 1e-3 * scale


def test_augmentation_composition_and_inverse():
    m = torch.arange(12.0).reshape(1, 3, 4)
    # k quarter turns = k times one quarter turn; four turns and two flips are the identity
    one = augment_maps({"image": m}, False, False, 1)["image"]
    two = augment_maps({"image": one}, False, False, 1)["image"]
    assert torch.equal(two, augment_maps({"image": m}, False, False, 2)["image"])
    assert torch.equal(augment_maps({"image": m}, False, False, 4)["image"], m)
    flipped = augment_maps({"image": m}, True, True, 0)["image"]
    assert torch.equal(augment_maps({"image": flipped}, True, True, 0)["image"], m)
    assert one.shape == (1, 4, 3)
    # flipping x and y equals a half turn: the 16 (flip_x, flip_y, k) draws are the 8
    # elements of the square's symmetry group, each twice
    images = {tuple(augment_maps({"image": m[:, :3, :3]}, *op)["image"].flatten().tolist())
              for op in ALL_OPS}  # fmt: skip
    assert len(images) == 8


# ----------------------------------------------------------------------------- stores
def test_inspect_store_geometry(stores):
    info = inspect_pixelated_store(stores["train"])
    assert (info.n, info.n_image, info.n_source, info.psf_size) == (N_TRAIN, N, NS, PSF)
    assert info.fov == pytest.approx(FOV) and info.source_fov == pytest.approx(SOURCE_FOV)
    assert info.config["preset"] == "tiny"


def test_inspect_rejects_other_generators(tmp_path):
    run_simulate("toy", 4, tmp_path / "toy", 0, progress=False)
    with pytest.raises(ValueError, match="generator 'toy'"):
        inspect_pixelated_store(tmp_path / "toy")
    with pytest.raises(ValueError, match="generator 'toy'"):
        PixelatedDataset(tmp_path / "toy")


# ----------------------------------------------------------------------------- dataset
def test_dataset_items(stores):
    ds = PixelatedDataset([stores["train"], stores["test"]], augment=False)
    assert len(ds) == N_TRAIN + N_TEST
    assert ds.locate(N_TRAIN - 1) == (0, N_TRAIN - 1) and ds.locate(N_TRAIN + 3) == (1, 3)
    s = ds[N_TRAIN + 3]
    assert set(s) == {*MAP_KEYS, "sigma"}
    shapes = {"image": (1, N, N), "source": (1, NS, NS), "kappa": (1, N, N), "psf": (1, PSF, PSF)}
    for key, shape in shapes.items():
        assert tuple(s[key].shape) == shape and s[key].dtype == torch.float32, key
    assert s["sigma"].shape == () and s["sigma"].dtype == torch.float32
    assert float(s["source"].max()) == pytest.approx(1.0)
    assert float(s["psf"].sum()) == pytest.approx(1.0, abs=1e-5)
    # the stored observation is the forward model of the stored truths plus noise σ:
    # χ²_ν of the truth ~ 1 (±0.05 for 1024 pixels); the same after a random augmentation
    lens = PixelatedLensing(N, FOV, NS, SOURCE_FOV)
    aug = PixelatedDataset(stores["test"], augment=True, seed=5)
    for i in range(N_TEST):
        for d in (PixelatedDataset(stores["test"], augment=False), aug):
            t = d[i]
            c = lens.reduced_chi2(t["image"][None].double(), t["source"][None].double(),
                                  t["kappa"][None].double(), float(t["sigma"]),
                                  t["psf"][None].double())  # fmt: skip
            assert 0.75 < float(c[0]) < 1.3, (i, float(c[0]))
    # (the check can fail: an image transformed without its truths does not fit them)
    assert any(aug.draw(i) != (False, False, 0) for i in range(N_TEST))
    t = PixelatedDataset(stores["test"], augment=False)[0]
    moved = augment_maps({"image": t["image"]}, True, False, 1)["image"]
    c = lens.reduced_chi2(moved[None], t["source"][None], t["kappa"][None], float(t["sigma"]),
                          t["psf"][None])  # fmt: skip
    assert float(c[0]) > 2.0
    # only the requested maps (and σ); indices select global items
    only = PixelatedDataset(stores["train"], indices=[3, 1], augment=False, keys=("source",))
    assert len(only) == 2 and set(only[0]) == {"source", "sigma"}
    assert torch.equal(only[1]["source"], ds[1]["source"])


def test_dataset_augmentation_is_seeded(stores):
    a = PixelatedDataset(stores["train"], augment=True, seed=3)
    b = PixelatedDataset(stores["train"], augment=True, seed=3)
    draws0 = [a.draw(i) for i in range(N_TRAIN)]
    assert draws0 == [b.draw(i) for i in range(N_TRAIN)]
    assert len(set(draws0)) > 3  # several different operations are drawn
    for i in (0, 7):
        ia, ib = a[i], b[i]
        assert all(torch.equal(ia[k], ib[k]) for k in ia)
        ref = augment_maps(PixelatedDataset(stores["train"], augment=False)[i], *draws0[i])
        assert all(torch.equal(ia[k], ref[k]) for k in MAP_KEYS)
    a.set_epoch(1)
    assert [a.draw(i) for i in range(N_TRAIN)] != draws0
    b.set_epoch(1)
    assert [a.draw(i) for i in range(N_TRAIN)] == [b.draw(i) for i in range(N_TRAIN)]
    assert [PixelatedDataset(stores["train"], seed=4).draw(i) for i in range(N_TRAIN)] != draws0
    fixed = PixelatedDataset(stores["train"], augment=True, seed=3, fixed_epoch=True)
    fixed.set_epoch(5)
    assert fixed.epoch == 0 and [fixed.draw(i) for i in range(N_TRAIN)] == draws0
    off = PixelatedDataset(stores["train"], augment=False)
    assert {off.draw(i) for i in range(N_TRAIN)} == {(False, False, 0)}


def test_dataset_bad_arguments(stores, other_store):
    with pytest.raises(ValueError, match="unknown keys"):
        PixelatedDataset(stores["train"], keys=("image", "labels"))
    with pytest.raises(ValueError, match=rf"indices must lie in \[0, {N_TRAIN}\)"):
        PixelatedDataset(stores["train"], indices=[0, N_TRAIN])
    with pytest.raises(ValueError, match="indices"):
        PixelatedDataset(stores["train"], indices=[-1])
    with pytest.raises(ValueError, match="no strong-pixelated store"):
        PixelatedDataset([])
    # stores of two geometries cannot be pooled
    with pytest.raises(ValueError, match="stores differ"):
        PixelatedDataset([stores["train"], other_store])


# ----------------------------------------------------------------------------- training
def test_trained_models_and_sidecars(stores, models):
    from lensml.train import build_network, load_model

    rim = models["rim"]
    assert rim["epochs"] == 1 and rim["n_train"] + rim["n_val"] == N_TRAIN and rim["n_val"] >= 1
    assert math.isfinite(rim["final_train_loss"]) and rim["examples_per_s"] > 0
    side = read_sidecar(rim["model_dir"])
    assert (rim["model_dir"] / SIDECAR).is_file()
    assert side["role"] == "rim" and side["network"] == "rim-pixelated-small"
    assert (side["n_image"], side["n_source"], side["psf_size"]) == (N, NS, PSF)
    assert side["fov"] == pytest.approx(FOV) and side["source_fov"] == pytest.approx(SOURCE_FOV)
    assert side["train_stores"] == [str(stores["train"])]
    net, side2 = load_rim(rim["model_dir"])
    assert side2 == side and not net.training
    assert net.config["filters"] == [4, 8] and net.steps == 2 and net.lens.n_image == N
    assert net.lens.fov == pytest.approx(FOV) and net.lens.source_fov == pytest.approx(SOURCE_FOV)
    # the saved weights are the trained ones: equal to the last checkpoint's (1 epoch: best =
    # last), different from the same seed's initial weights
    ckpt, _ = load_model(rim["last_checkpoint"])
    init = build_network("rim-pixelated-small", {**net.config}, seed=0)
    sd, sd_ckpt, sd_init = net.state_dict(), ckpt.state_dict(), init.state_dict()
    assert all(torch.equal(sd[k], sd_ckpt[k]) for k in sd)
    assert any(not torch.equal(sd[k], sd_init[k]) for k in sd if sd[k].is_floating_point())

    for kind in ("source", "kappa"):
        res = models[f"vae_{kind}"]
        assert res["kind"] == kind and res["network"] == f"vae-{kind}-small"
        side = read_sidecar(res["model_dir"])
        assert side["role"] == f"vae-{kind}" and side["size"] == (NS if kind == "source" else N)
        assert side["fov"] == pytest.approx(SOURCE_FOV if kind == "source" else FOV)
        vae, _ = load_vae(res["model_dir"], kind)
        assert vae.data_key == kind and vae.size == 32 and vae.config["filters"] == 4
        x = vae.sample(2, torch.Generator().manual_seed(0))
        assert x.shape == (2, 1, 32, 32) and bool(torch.isfinite(x).all())


def test_loading_checks_the_role(models, tmp_path):
    with pytest.raises(ValueError, match="'vae-source' model, expected 'rim'"):
        load_rim(models["vae_source"]["model_dir"])
    with pytest.raises(ValueError, match="'rim' model, expected 'vae-kappa'"):
        load_vae(models["rim"]["model_dir"], "kappa")
    with pytest.raises(ValueError, match="'vae-source' model, expected 'vae-kappa'"):
        load_vae(models["vae_source"]["model_dir"], "kappa")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_vae(models["vae_source"]["model_dir"], "flux")
    with pytest.raises(ValueError, match=SIDECAR):
        read_sidecar(tmp_path)


def test_training_bad_arguments(stores, tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        train_vae(stores["train"], "flux", out_dir=tmp_path / "a", epochs=1)
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        train_vae(stores["train"], "source", out_dir=tmp_path / "b", epochs=0)
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        train_rim(stores["train"], out_dir=tmp_path / "c", epochs=0)
    with pytest.raises(ValueError, match="val_fraction"):
        train_rim(stores["train"], out_dir=tmp_path / "d", epochs=1, val_fraction=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        train_rim(stores["train"], out_dir=tmp_path / "e", epochs=1, batch_size=0)
    with pytest.raises(ValueError, match="at least 2 items"):
        train_rim(stores["train"], out_dir=tmp_path / "f", epochs=1, max_items=1)
    with pytest.raises(ValueError, match="is not a kappa VAE"):
        train_vae(stores["train"], "kappa", "vae-source-small", tmp_path / "g", 1,
                  network_config=VAE_CFG)  # fmt: skip
    # a VAE name is refused by the network's own check of the RIM's physics options
    with pytest.raises(ValueError, match="network 'vae-source-small'"):
        train_rim(stores["train"], "vae-source-small", tmp_path / "h", 1, network_config=VAE_CFG)


# ----------------------------------------------------------------------------- VAE draws
def test_generator_vae_draws(models):
    from lensml.sims.kappa_maps import draw_kappa_maps
    from lensml.sims.strong_pixelated import (
        _replace_with_vae_draws,
        draw_sources,
        make_lens,
        strong_pixelated_config,
    )

    vs = str(models["vae_source"]["model_dir"])
    vk = str(models["vae_kappa"]["model_dir"])
    c = strong_pixelated_config("tiny", vae_source=vs, vae_kappa=vk, vae_fraction=1.0)
    lens = make_lens(c)

    def draw(seed: int, config) -> tuple[dict, dict, dict]:
        g = torch.Generator().manual_seed(seed)
        kap = draw_kappa_maps(4, g, N, FOV, config.kappa, dtype=torch.float32)
        src = draw_sources(4, g, config)
        before = {"source": src["source"].clone(), "kappa": kap["kappa"].clone()}
        _replace_with_vae_draws(src, kap, g, config, lens)
        return src, kap, before

    src, kap, before = draw(0, c)
    assert torch.equal(src["kind"], torch.full((4,), 2)) and bool((kap["family"] == 2).all())
    assert not torch.equal(src["source"], before["source"])
    assert not torch.equal(kap["kappa"], before["kappa"])
    peak = src["source"].amax(dim=(1, 2, 3))
    assert torch.allclose(peak, torch.ones(4)) and float(src["source"].min()) >= 0
    theta = einstein_radius_from_kappa(kap["kappa"], lens.pixel_scale)
    assert torch.allclose(kap["theta_e"].double(), theta.double(), rtol=1e-5, atol=1e-6)
    # seeded: the same generator seed gives the same VAE maps
    src2, kap2, _ = draw(0, c)
    assert torch.equal(src["source"], src2["source"]) and torch.equal(kap["kappa"], kap2["kappa"])
    # vae_fraction 0 leaves the draws alone
    src0, kap0, before0 = draw(0, strong_pixelated_config("tiny", vae_source=vs, vae_fraction=0.0))
    assert torch.equal(src0["source"], before0["source"]) and bool((src0["kind"] < 2).all())
    assert torch.equal(kap0["kappa"], before0["kappa"])
    # only a source VAE: κ maps stay the generator's
    src1, kap1, before1 = draw(1, strong_pixelated_config("tiny", vae_source=vs))
    assert bool((src1["kind"] == 2).all()) and torch.equal(kap1["kappa"], before1["kappa"])
    # posterior mode: a decoded posterior sample of each analytic map (a variation of it)
    cp = strong_pixelated_config("tiny", vae_source=vs, vae_kappa=vk, vae_mode="posterior")
    srcp, kapp, _ = draw(0, cp)
    assert bool((srcp["kind"] == 2).all()) and bool((kapp["family"] == 2).all())
    assert torch.allclose(srcp["source"].amax(dim=(1, 2, 3)), torch.ones(4))
    assert not torch.equal(srcp["source"], src["source"])  # not the prior draws
    # ... namely decode(μ(x) + σ(x) ε) of the analytic source x, ε from the same generator
    g = torch.Generator().manual_seed(0)
    draw_kappa_maps(4, g, N, FOV, cp.kappa, dtype=torch.float32)
    x = draw_sources(4, g, cp)["source"]
    torch.rand(4, generator=g)  # the vae_fraction draw
    vae_s, _ = load_vae(vs, "source")
    with torch.no_grad():
        mu, logvar = vae_s.encode(x)
        eps = torch.randn(mu.shape, generator=g, dtype=mu.dtype)
        want = vae_s.decode(mu + torch.exp(0.5 * logvar) * eps).clamp_min(0)
    want = want / want.amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(srcp["source"], want)


def test_generator_vae_of_the_wrong_kind_or_size(models):
    from lensml.sims.kappa_maps import draw_kappa_maps
    from lensml.sims.strong_pixelated import (
        _replace_with_vae_draws,
        draw_sources,
        make_lens,
        strong_pixelated_config,
    )

    vk = str(models["vae_kappa"]["model_dir"])
    vs = str(models["vae_source"]["model_dir"])
    cases = [
        ({"vae_source": vk}, r"vae_source .*'kappa' VAE of 32² maps; expected a 'source' VAE"),
        ({"vae_kappa": vs}, r"vae_kappa .*expected a 'kappa' VAE"),
        ({"vae_source": vs, "n_source": 16}, r"expected a 'source' VAE of 16² maps"),
        ({"vae_source": str(models["rim"]["model_dir"])}, "not a VAE"),
    ]
    for overrides, match in cases:
        c = strong_pixelated_config("tiny", **overrides)
        g = torch.Generator().manual_seed(0)
        kap = draw_kappa_maps(2, g, c.n_image, c.fov, c.kappa, dtype=torch.float32)
        src = draw_sources(2, g, c)
        with pytest.raises(ValueError, match=match):
            _replace_with_vae_draws(src, kap, g, c, make_lens(c))


# ----------------------------------------------------------------------------- evaluation
def test_evaluate_with_finetuning(stores, models, tmp_path):
    out = tmp_path / "ev"
    res = evaluate_pixelated(stores["test"], models["rim"]["model_dir"], out,
                             vae_source=models["vae_source"]["model_dir"],
                             vae_kappa=models["vae_kappa"]["model_dir"], n_finetune=2,
                             finetune_config=FT_CFG, batch_size=4, panels=2,
                             print_table=False)  # fmt: skip
    data = json.loads((out / "strong_pixelated_eval.json").read_text())
    assert res["json"] == str(out / "strong_pixelated_eval.json")
    assert {"baseline", "finetune", "coherence"} <= set(data)
    assert data["n"] == N_TEST and data["nu"] == N * N and data["network"] == "rim-pixelated-small"
    b = data["baseline"]
    assert b["chi2_nu"]["p16"] <= b["chi2_nu"]["median"] <= b["chi2_nu"]["p84"]
    assert math.isfinite(b["log10_loss"]["mu"]) and b["seconds_per_system"] > 0
    assert b["chi2_vs_snr"] is not None  # n >= 8
    ft = data["finetune"]
    assert ft["n"] == 2 and ft["config"]["max_steps"] == 2 and ft["config"]["n_samples"] == 2
    assert all(0 <= s <= 2 for s in ft["steps"]) and len(ft["per_system"]) == 2
    # keep="best" never returns a worse fit than the baseline, system by system
    chi2_b = [p["chi2_baseline"] for p in ft["per_system"]]
    chi2_f = [p["chi2_finetuned"] for p in ft["per_system"]]
    assert all(f <= b * (1 + 1e-4) for b, f in zip(chi2_b, chi2_f, strict=True))
    assert ft["chi2_nu_baseline"]["median"] == pytest.approx(float(np.median(chi2_b)), rel=1e-4)
    assert ft["paired_log_loss"] and math.isfinite(ft["log10_loss_finetuned"]["mu"])
    coh = data["coherence"]
    assert len(coh["k_source"]) == len(coh["source_baseline"]["mean"]) > 0
    assert len(coh["k_kappa"]) == len(coh["kappa_baseline"]["mean"]) > 0
    names = {"chi2_nu.png", "log_loss_difference.png", "coherence.png", "chi2_vs_snr.png",
             "reconstructions.png"}  # fmt: skip
    assert {p.rsplit("/", 1)[-1] for p in res["figures"]} == names
    for name in names:
        head = (out / name).read_bytes()[:8]
        assert head == PNG_MAGIC and (out / name).stat().st_size > 1000, name
    tables = format_tables(data)
    assert tables == res["tables"] or [t["rows"] for t in tables] == [
        t["rows"] for t in res["tables"]
    ]
    assert len(tables) == 2 and len(tables[0]["rows"]) == 3 and tables[1]["rows"]


def test_evaluate_one_finetuned_system(stores, models, tmp_path):
    """One system: no log-normal moments or paired test (they need two), the rest works."""
    res = evaluate_pixelated(stores["test"], models["rim"]["model_dir"], tmp_path / "ev",
                             vae_source=models["vae_source"]["model_dir"],
                             vae_kappa=models["vae_kappa"]["model_dir"], n_finetune=1,
                             finetune_config=FT_CFG, panels=1, print_table=False)  # fmt: skip
    assert res["finetune"]["n"] == 1
    assert res["finetune"]["log10_loss_finetuned"] == {"mu": None, "sigma": None}
    assert res["finetune"]["paired_log_loss"] == {}
    assert res["tables"][1]["rows"]


def test_evaluate_baseline_only_and_bad_input(stores, models, other_store, tmp_path):
    rim = models["rim"]["model_dir"]
    with pytest.raises(ValueError, match="vae_source"):
        evaluate_pixelated(stores["test"], rim, tmp_path / "a", n_finetune=1)
    with pytest.raises(ValueError, match="n_finetune"):
        evaluate_pixelated(stores["test"], rim, tmp_path / "a", n_finetune=-1)
    with pytest.raises(ValueError, match="expected 'rim'"):
        evaluate_pixelated(stores["test"], models["vae_kappa"]["model_dir"], tmp_path / "a",
                           n_finetune=0)  # fmt: skip
    res = evaluate_pixelated(stores["test"], rim, tmp_path / "b", n_finetune=0, max_items=3,
                             print_table=False)  # fmt: skip
    assert res["finetune"] is None and res["n"] == 3 and res["baseline"]["chi2_vs_snr"] is None
    assert len(res["tables"]) == 1 and len(res["tables"][0]["rows"]) == 1
    assert all((tmp_path / "b" / f).read_bytes()[:8] == PNG_MAGIC
               for f in ("coherence.png", "reconstructions.png"))  # fmt: skip
    # another geometry (source field 2.5″) is refused, naming the geometry
    with pytest.raises(ValueError, match=r"geometry \(n_image, n_source, fov, source_fov\)"):
        evaluate_pixelated(other_store, rim, tmp_path / "c", n_finetune=0, print_table=False)


# ----------------------------------------------------------------------------- prediction
def test_predict_clean_image_does_not_warn(item, models, lens_fits, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predict_pixelated(lens_fits[0], models["rim"]["model_dir"], tmp_path / "w.fits",
                          psf_fwhm=item["psf_fwhm"], sigma=item["sigma"], panel=False)  # fmt: skip


def test_predict_outputs(item, models, lens_fits, tmp_path):
    from astropy.io import fits

    img, psf_path = lens_fits
    rim = models["rim"]["model_dir"]
    out = tmp_path / "out.fits"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = predict_pixelated(img, rim, out, psf=psf_path, sigma=item["sigma"])
    assert res["out"] == str(out) and res["panel"] == str(tmp_path / "out.png")
    assert (tmp_path / "out.png").read_bytes()[:8] == PNG_MAGIC
    assert res["warnings"] == [] and not any("resampled" in n for n in res["notes"])
    assert res["pixel_scale"] == pytest.approx(SCALE)
    with fits.open(out) as hdul:
        shapes = {h.name: h.data.shape for h in hdul[1:]}
        head = hdul[0].header
        data, model = hdul["DATA"].data.astype(float), hdul["MODEL"].data.astype(float)
        resid, kappa = hdul["RESIDUAL"].data.astype(float), hdul["KAPPA"].data.astype(float)
        src_scale = hdul["SOURCE"].header["PIXSCALE"]
    assert shapes == {"DATA": (N, N), "SOURCE": (NS, NS), "KAPPA": (N, N), "MODEL": (N, N),
                      "RESIDUAL": (N, N)}  # fmt: skip
    assert src_scale == pytest.approx(SOURCE_FOV / NS)
    chi2 = head["CHI2NU"]
    assert math.isfinite(chi2) and chi2 == pytest.approx(res["reduced_chi2"], rel=1e-5)
    assert not head["NONLIN"] and head["PEAK"] == pytest.approx(res["peak"])
    # DATA is the input divided by PEAK; RESIDUAL = (DATA − MODEL) / σ; χ²_ν its mean square
    np.testing.assert_allclose(data * res["peak"], item["image"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(resid * res["sigma"], data - model, atol=1e-5)
    assert res["sigma"] == pytest.approx(item["sigma"] / res["peak"], rel=1e-5)
    assert chi2 == pytest.approx(float(np.mean(resid**2)), rel=1e-4)
    theta = einstein_radius_from_kappa(torch.as_tensor(kappa, dtype=torch.float64)[None, None],
                                       SCALE)  # fmt: skip
    assert res["theta_e"]["supercritical"] == pytest.approx(float(theta[0]), rel=1e-4, abs=1e-6)
    assert head["THETAESC"] == pytest.approx(res["theta_e"]["supercritical"], rel=1e-5)

    # Gaussian PSF of the item's FWHM (no kernel), noise from the border, no panel
    res_g = predict_pixelated(img, rim, tmp_path / "g.fits", psf_fwhm=item["psf_fwhm"],
                              panel=False)  # fmt: skip
    assert res_g["panel"] is None and not (tmp_path / "g.png").exists()
    assert any("border" in n for n in res_g["notes"]) and math.isfinite(res_g["reduced_chi2"])


def test_predict_resampling_and_finetuning(item, models, lens_fits, tmp_path):
    from astropy.io import fits
    from scipy.ndimage import zoom

    from lensml.data.fits_io import write_image_fits

    img, _ = lens_fits
    rim = models["rim"]["model_dir"]
    base = predict_pixelated(img, rim, tmp_path / "b.fits", psf_fwhm=item["psf_fwhm"],
                             sigma=item["sigma"], panel=False)  # fmt: skip
    # the same scene sampled 1.5× finer on a 48² cutout (same field of view)
    fine = zoom(item["image"], 1.5, order=1, grid_mode=True, mode="grid-constant") / 1.5**2
    assert fine.shape == (48, 48)
    write_image_fits(tmp_path / "fine.fits", fine, pixel_scale=SCALE / 1.5)
    res = predict_pixelated(tmp_path / "fine.fits", rim, tmp_path / "f.fits",
                            psf_fwhm=item["psf_fwhm"], sigma=item["sigma"] / 1.5,
                            panel=False)  # fmt: skip
    assert any("resampled" in n for n in res["notes"]) and math.isfinite(res["reduced_chi2"])
    with fits.open(tmp_path / "f.fits") as a, fits.open(tmp_path / "b.fits") as b:
        assert a["DATA"].data.shape == (N, N) and a["SOURCE"].data.shape == (NS, NS)
        r = np.corrcoef(a["DATA"].data.ravel(), b["DATA"].data.ravel())[0, 1]
    assert r > 0.9  # the resampled data is the same scene on the model grid

    # fine-tuning with the two VAEs: one step, reports the baseline χ²_ν
    ft = predict_pixelated(img, rim, tmp_path / "ft.fits", psf_fwhm=item["psf_fwhm"],
                           sigma=item["sigma"], vae_source=models["vae_source"]["model_dir"],
                           vae_kappa=models["vae_kappa"]["model_dir"], finetune_steps=1,
                           finetune_config={"n_samples": 2, "learning_rate": 1e-4},
                           panel=False)  # fmt: skip
    assert ft["finetune_steps"] <= 1 and any("fine-tuned" in n for n in ft["notes"])
    assert ft["reduced_chi2_baseline"] == pytest.approx(base["reduced_chi2"], rel=1e-3)
    assert ft["reduced_chi2"] <= ft["reduced_chi2_baseline"] * (1 + 1e-3)  # keep="best"


def test_predict_bad_input(item, models, lens_fits, tmp_path):
    from astropy.io import fits

    from lensml.data.fits_io import write_image_fits

    img, _ = lens_fits
    rim = models["rim"]["model_dir"]
    kw = {"psf_fwhm": item["psf_fwhm"], "sigma": item["sigma"], "panel": False}
    out = tmp_path / "x.fits"
    # no pixel scale anywhere
    write_image_fits(tmp_path / "bare.fits", item["image"])
    with pytest.raises(ValueError, match="pixel scale"):
        predict_pixelated(tmp_path / "bare.fits", rim, out, **kw)
    ok = predict_pixelated(tmp_path / "bare.fits", rim, out, pixel_scale=SCALE, **kw)
    assert math.isfinite(ok["reduced_chi2"])
    # no PSF
    with pytest.raises(ValueError, match=r"no PSF.*psf_fwhm"):
        predict_pixelated(img, rim, out, sigma=item["sigma"])
    with pytest.raises(ValueError, match="psf_fwhm must be"):
        predict_pixelated(img, rim, out, psf_fwhm=-1.0)
    # fine-tuning without the VAEs
    with pytest.raises(ValueError, match="vae_source and vae_kappa"):
        predict_pixelated(img, rim, out, finetune_steps=1, **kw)
    # NaN pixels: refused, or masked with a note
    nan = item["image"].copy()
    nan[10:12, 10:12] = np.nan
    h = fits.PrimaryHDU(nan.astype(np.float32))
    h.header["PIXSCALE"] = SCALE
    h.writeto(tmp_path / "nan.fits")
    with pytest.raises(ValueError, match="4 NaN"):
        predict_pixelated(tmp_path / "nan.fits", rim, out, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rm = predict_pixelated(tmp_path / "nan.fits", rim, out, mask_nonfinite=True, **kw)
    assert any("NaN" in n for n in rm["notes"]) and math.isfinite(rm["reduced_chi2"])
    # too small a cutout: the message gives the size needed
    write_image_fits(tmp_path / "small.fits", item["image"][:20, :20], pixel_scale=SCALE)
    with pytest.raises(ValueError, match=f"at least {N}x{N} pixels"):
        predict_pixelated(tmp_path / "small.fits", rim, out, **kw)
    # an 8-bit-like image warns and is flagged in the header
    eight = np.round(255 * np.clip(item["image"] / item["image"].max(), 0, 1)).astype(np.uint8)
    write_image_fits(tmp_path / "eight.fits", eight, pixel_scale=SCALE)
    with pytest.warns(UserWarning, match="non-linear"):
        r8 = predict_pixelated(tmp_path / "eight.fits", rim, tmp_path / "e.fits", psf_fwhm=0.1,
                               panel=False)  # fmt: skip
    assert r8["warnings"] and fits.getheader(tmp_path / "e.fits")["NONLIN"]


# ----------------------------------------------------------------------------- quickstart
def test_quickstart_section_with_the_shipped_models(tmp_path):
    """The report section: shipped RIM and VAEs, held-out systems, one fine-tuned."""
    from lensml.pipelines.strong_pixelated import quickstart_section, shipped_models

    assert shipped_models() is not None, "the model zoo ships rim-pixelated-small and its VAEs"
    paths, summary = quickstart_section(tmp_path / "qs", seed=0)
    assert summary["shipped_weights"] and "shipped rim-pixelated-small" in summary["text"]
    names = {p.name for p in paths}
    assert {"reconstructions.png", "coherence.png", "strong_pixelated_eval.json"} <= names
    assert not (tmp_path / "qs" / "work").exists()
    result = json.loads((tmp_path / "qs" / "strong_pixelated_eval.json").read_text())
    ft = result["finetune"]
    assert (
        ft["n"] == 1
        and ft["per_system"][0]["chi2_finetuned"] <= ft["per_system"][0]["chi2_baseline"]
    )
    assert summary["tables"] and all(Path(f).is_file() for f in summary["figures"])
