"""Tests of the shear training-time augmentation (CNN shear paper §4.2) and normalisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lensml.data.shear_augment import (
    ShearAugment,
    ShearAugmentDataset,
    normalise_stamps,
    rotate,
)

galsim = pytest.importorskip("galsim")

F64 = torch.float64
PSF = galsim.Gaussian(fwhm=0.121)
# an asymmetric galaxy: an elliptical disk and an off-centre clump
GAL = galsim.Exponential(half_light_radius=0.3).shear(q=0.5, beta=0.4 * galsim.radians) + (
    galsim.Gaussian(sigma=0.05, flux=0.3).shift(0.25, 0.1)
)


def _stamp(gal, g1: float, g2: float, size: int = 32) -> np.ndarray:
    img = galsim.Convolve(gal.shear(g1=g1, g2=g2), PSF).drawImage(
        nx=size, ny=size, scale=0.065, method="auto"
    )
    return img.array.astype(np.float64)


def _params(b: int = 1, scale=1.0, dx=0.0, dy=0.0, mirror=False, k=0, theta=0.0):
    def full(v, dtype=F64):
        return torch.full((b,), v, dtype=dtype) if not isinstance(v, torch.Tensor) else v

    return {
        "scale": full(float(scale)), "dx": full(float(dx)), "dy": full(float(dy)),
        "mirror": full(bool(mirror), torch.bool), "k": full(int(k), torch.int64),
        "theta": full(float(theta)),
    }  # fmt: skip


def _hsm(img: np.ndarray) -> tuple[float, float]:
    s = galsim.hsm.FindAdaptiveMom(galsim.Image(np.ascontiguousarray(img), scale=0.065))
    return s.observed_shape.g1, s.observed_shape.g2


# --------------------------------------------------------------------------- label rules


@pytest.mark.peer
@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_dihedral_transforms_give_the_shear_galsim_applied(mirror, k):
    """Mirror (y → −y) then k × 90°: the transformed stamp equals GalSim's rendering of the
    transformed galaxy sheared by the transformed label."""
    g1, g2 = 0.12, -0.07
    img = torch.from_numpy(_stamp(GAL, g1, g2))[None]
    sample = {"image": img, "labels": torch.tensor([g1, g2], dtype=F64)}
    out = ShearAugment(normalise=False, mode="stamp").apply(sample, _params(mirror=mirror, k=k))
    gal = GAL.transform(1, 0, 0, -1) if mirror else GAL
    gal = gal.rotate(k * 90 * galsim.degrees)
    lab = out["labels"].numpy()
    ref = _stamp(gal, float(lab[0]), float(lab[1]))
    got = out["image"][0].numpy()
    assert np.abs(got - ref).max() < 1e-4 * ref.max()
    s_got, s_ref = _hsm(got), _hsm(ref)
    assert abs(s_got[0] - s_ref[0]) < 1e-5 and abs(s_got[1] - s_ref[1]) < 1e-5
    expect = np.array([g1, g2]) * (-1) ** k * (np.array([1, -1]) if mirror else 1)
    np.testing.assert_allclose(lab, expect, atol=1e-15)
    # a wrong sign of the label would not reproduce the stamp
    assert np.abs(got - _stamp(gal, -float(lab[0]), -float(lab[1]))).max() > 1e-2 * ref.max()


def test_own_renderer_rotated_galaxy_matches_rotated_label():
    """lensml's own renderer: rendering (G, g) then rotating by 90° (or mirroring) has the
    moments of rendering the rotated (mirrored) galaxy with the transformed label."""
    from lensml.sims import shear_galaxies as sg
    from lensml.sims.shear import shear_config

    cfg = shear_config("clash", cosmos_fraction=0.0, clump_mean=2.0)
    p = sg.draw_own_galaxies(
        1, torch.Generator().manual_seed(4), cfg, torch.tensor([0.3], dtype=F64)
    )
    psf = sg.RenderPSF({"kind": "gaussian", "fwhm": 0.121}, 3, 2)
    g = torch.tensor([[0.1, 0.15]], dtype=F64)

    def render(pp, gg):
        z = torch.zeros(1, dtype=F64)
        return sg.render_own_galaxies(pp, torch.ones(1, dtype=F64), gg[:, 0], gg[:, 1], z, z,
                                      32, 0.065, psf, dtype=F64)  # fmt: skip

    base = render(p, g)
    for mirror, k in [(False, 1), (True, 0), (True, 3)]:
        out = ShearAugment(normalise=False, mode="stamp").apply(
            {"image": base, "labels": g}, _params(mirror=mirror, k=k)
        )
        q = {key: v.clone() for key, v in p.items()}
        if mirror:  # y -> -y
            q["phi_d"], q["phi_b"], q["clump_y"] = -q["phi_d"], -q["phi_b"], -q["clump_y"]
        for _ in range(k):  # (x, y) -> (-y, x)
            q["phi_d"], q["phi_b"] = q["phi_d"] + math.pi / 2, q["phi_b"] + math.pi / 2
            q["clump_x"], q["clump_y"] = -q["clump_y"], q["clump_x"].clone()
        ref = render(q, out["labels"])[0, 0].numpy()
        got = out["image"][0, 0].numpy()
        assert np.abs(got - ref).max() < 2e-3 * ref.max()
        (a1, a2), (b1, b2) = _hsm(got), _hsm(ref)
        assert abs(a1 - b1) < 2e-4 and abs(a2 - b2) < 2e-4


def test_continuous_rotation():
    img = torch.from_numpy(_stamp(GAL, 0.1, 0.05))[None, None]
    lab = torch.tensor([[0.1, 0.05]], dtype=F64)
    # a quarter turn by interpolation equals the exact rot90
    r90, l90 = rotate(img, lab, math.pi / 2)
    exact = torch.rot90(img, 1, dims=(-1, -2))
    assert float((r90 - exact).abs().max()) < 1e-9 * float(img.max())
    torch.testing.assert_close(l90, -lab)
    # 30°: labels rotate by 60°, the stamp matches GalSim's rotated galaxy (interpolation error)
    theta = math.radians(30.0)
    rot, lr = rotate(img, lab, theta)
    g = lr[0].numpy()
    np.testing.assert_allclose(g, [0.1 * 0.5 - 0.05 * math.sqrt(3) / 2,
                                   0.1 * math.sqrt(3) / 2 + 0.05 * 0.5], atol=1e-12)  # fmt: skip
    ref = _stamp(GAL.rotate(theta * galsim.radians), float(g[0]), float(g[1]))
    s_got, s_ref = _hsm(rot[0, 0].numpy()), _hsm(ref)
    assert abs(s_got[0] - s_ref[0]) < 3e-3 and abs(s_got[1] - s_ref[1]) < 3e-3


# --------------------------------------------------------------------------- geometry and noise


def _clean_noisy(seed: int = 0, b: int = 3):
    clean = torch.from_numpy(np.stack([_stamp(GAL, 0.05 * i, -0.03 * i) for i in range(b)]))
    clean = clean[:, None].float()
    noise = 0.01 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    return clean, clean + noise, noise


def test_split_mode_adds_the_untouched_noise_back():
    clean, image, noise = _clean_noisy()
    labels = torch.tensor([[0.1, -0.1], [0.0, 0.2], [-0.15, 0.05]])
    aug = ShearAugment(normalise=False, rotation="continuous")
    out = aug({"image": image, "clean": clean, "labels": labels}, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out["image"] - out["clean"], noise, atol=1e-6, rtol=0)
    assert not torch.allclose(out["clean"], clean)
    # scale and shift alone never change the labels
    p = _params(3, scale=1.1, dx=3.5, dy=-2.0)
    plain = ShearAugment(normalise=False).apply(
        {"image": image, "clean": clean, "labels": labels}, p
    )
    torch.testing.assert_close(plain["labels"], labels)


def test_shift_is_exact_for_integers_and_does_not_wrap():
    clean, image, _ = _clean_noisy(b=1)
    aug = ShearAugment(normalise=False)
    out = aug.apply({"image": image, "clean": clean, "labels": torch.zeros(1, 2)},
                    _params(dx=3, dy=-2))  # fmt: skip
    torch.testing.assert_close(out["clean"][0, 0, :-2, 3:], clean[0, 0, 2:, :-3])
    assert float(out["clean"][0, 0, :, :3].abs().max()) == 0.0  # zeros came in, no wrap
    assert float(out["clean"][0, 0, -2:, :].abs().max()) == 0.0
    # a 7-pixel shift pushes light out of the stamp instead of wrapping it around
    out7 = aug.apply({"image": image, "clean": clean, "labels": torch.zeros(1, 2)},
                     _params(dx=7.0, dy=0.4))  # fmt: skip
    assert float(out7["clean"].sum()) < float(clean.sum())
    assert float(out7["clean"][0, 0, :, :6].abs().max()) < 1e-6 * float(clean.max())
    # stamp mode shifts periodically (noise stays stationary)
    per = ShearAugment(normalise=False, mode="stamp").apply(
        {"image": image, "labels": torch.zeros(1, 2)}, _params(dx=3, dy=0)
    )
    torch.testing.assert_close(per["image"], torch.roll(image, 3, dims=-1))


def test_rescale_magnifies_galaxy_and_psf_not_labels():
    small = galsim.Gaussian(sigma=0.08).shear(q=0.7, beta=0.3 * galsim.radians)
    clean = torch.from_numpy(_stamp(small, 0.1, 0.05))[None, None].float()
    image = clean + 0.01 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    psf = torch.from_numpy(PSF.drawImage(nx=32, ny=32, scale=0.065).array)[None, None].float()
    labels = torch.tensor([[0.1, 0.05]])
    out = ShearAugment(normalise=False).apply(
        {"image": image, "clean": clean, "psf": psf, "labels": labels}, _params(scale=1.15)
    )

    def size(x):
        x = x[0, 0].double()
        ax = torch.arange(32, dtype=F64) - 15.5
        f = x.sum()
        return float(((x * ax[None, :] ** 2).sum() + (x * ax[:, None] ** 2).sum()) / f) ** 0.5

    # band-limited interpolation keeps the moments (bicubic would shrink them by ~2 % here)
    assert abs(size(out["clean"]) / size(clean) - 1.15) < 2e-3
    assert abs(size(out["psf"]) / size(psf) - 1.15) < 0.02  # sigma 0.8 px: undersampled
    e_in, e_out = _hsm(clean[0, 0].double().numpy()), _hsm(out["clean"][0, 0].double().numpy())
    assert abs(e_in[0] - e_out[0]) < 1e-3 and abs(e_in[1] - e_out[1]) < 1e-3
    torch.testing.assert_close(out["psf"].sum(), torch.tensor(1.0))
    torch.testing.assert_close(out["labels"], labels)


def test_normalise_stamps():
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 3 + 5
    y = normalise_stamps(x)
    torch.testing.assert_close(y.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(y.std(dim=(1, 2, 3), unbiased=False), torch.ones(4))
    torch.testing.assert_close(normalise_stamps(x[0]), y[0])
    assert float(normalise_stamps(torch.full((1, 4, 4), 2.0)).abs().max()) == 0.0
    x[2, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite.*\[2\]"):
        normalise_stamps(x)
    with pytest.raises(ValueError, match="stamps must be"):
        normalise_stamps(torch.zeros(8, 8))


def test_draws_follow_the_paper_ranges():
    aug = ShearAugment()
    p = aug.draw(4000, torch.Generator().manual_seed(3))
    assert float(p["scale"].min()) >= 0.85 and float(p["scale"].max()) <= 1.15
    assert float(p["dx"].abs().max()) <= 7 and float(p["dy"].abs().max()) <= 7
    assert abs(float(p["scale"].mean()) - 1) < 0.01 and abs(float(p["dx"].std()) - 7 / 3**0.5) < 0.2
    assert abs(float(p["mirror"].double().mean()) - 0.5) < 0.05
    counts = torch.bincount(p["k"], minlength=4)
    assert counts.min() > 900 and float(p["theta"].abs().max()) == 0.0
    pc = ShearAugment(rotation="continuous").draw(4000, torch.Generator().manual_seed(3))
    assert float(pc["k"].abs().max()) == 0 and 0 <= float(pc["theta"].min()) < 0.01
    assert 2 * math.pi - 0.01 < float(pc["theta"].max()) <= 2 * math.pi


# --------------------------------------------------------------------------- dataset


def _generated(n: int = 4):
    from lensml.sims.shear import ShearGenerator, shear_config

    cfg = shear_config("clash", cosmos_fraction=0.0, noise="white")
    return ShearGenerator().generate(n, torch.Generator().manual_seed(0), cfg)


def test_dataset_seeding_epochs_and_outputs():
    data = _generated()
    ds = ShearAugmentDataset(data, ShearAugment(), seed=5, return_psf=True)
    a, b = ds[1], ds[1]
    assert a["image"].shape == (1, 32, 32) and a["labels"].shape == (2,)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["labels"], b["labels"])
    assert (
        abs(float(a["image"].mean())) < 1e-5
        and abs(float(a["image"].std(unbiased=False)) - 1) < 1e-4
    )
    torch.testing.assert_close(a["psf"].sum(), torch.tensor(1.0))
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["image"], a["image"])
    fixed = ShearAugmentDataset(data, ShearAugment(), seed=5, fixed_epoch=True)
    fixed.set_epoch(3)
    assert torch.equal(fixed[1]["image"], a["image"])
    plain = ShearAugmentDataset(data, None, indices=[2, 3])
    assert len(plain) == 2
    torch.testing.assert_close(plain[0]["labels"], data["labels"][2])
    torch.testing.assert_close(plain[0]["image"], normalise_stamps(data["image"][2]))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["labels"].shape == (4, 2)


def test_dataset_over_a_store(tmp_path):
    from lensml.data.runner import run_simulate

    cfg = {"preset": "ground", "cosmos_fraction": 0.0, "noise": "white"}
    run_simulate("shear", 6, tmp_path / "store", seed=1, config=cfg, shard_size=3, progress=False)
    ds = ShearAugmentDataset(tmp_path / "store", ShearAugment(max_shift=2.0), seed=0)
    item = ds[4]
    assert item["image"].shape == (1, 32, 32) and torch.isfinite(item["image"]).all()


def test_bad_inputs():
    with pytest.raises(ValueError, match="scale_range"):
        ShearAugment(scale_range=2.0)
    with pytest.raises(ValueError, match="rotation"):
        ShearAugment(rotation="any")
    aug = ShearAugment()
    img = torch.zeros(1, 8, 8)
    with pytest.raises(ValueError, match="labels"):
        aug.apply({"image": img}, _params())
    with pytest.raises(ValueError, match="labels must be"):
        aug.apply({"image": img, "labels": torch.zeros(3)}, _params())
    with pytest.raises(ValueError, match="split"):
        ShearAugment(mode="split").apply({"image": img, "labels": torch.zeros(2)}, _params())
    with pytest.raises(ValueError, match=r"torch\.Generator"):
        aug({"image": img, "labels": torch.zeros(2)}, None)
    with pytest.raises(ValueError, match="labels"):
        ShearAugmentDataset({"image": torch.zeros(2, 1, 8, 8)})
    with pytest.raises(ValueError, match="psf"):
        ShearAugmentDataset({"image": torch.zeros(2, 1, 8, 8), "labels": torch.zeros(2, 2)},
                            return_psf=True)  # fmt: skip
