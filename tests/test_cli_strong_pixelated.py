"""``lensml train|evaluate|predict strong-pixelated`` through the real CLI app: --dump-config,
--help, a one-epoch training of a tiny RIM and κ VAE, evaluation, a prediction on a FITS image
and one-line errors. Tiny store (32², "tiny" preset)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from lensml.cli import app

SCALE = 7.69 / 32


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _lines(output: str) -> list[str]:
    return [x for x in output.splitlines() if x.strip()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A store, a RIM and a κ VAE trained for one epoch with ``lensml train strong-pixelated``,
    and the store's first observation as a FITS image."""
    from lensml.data.fits_io import write_image_fits
    from lensml.data.runner import run_simulate
    from lensml.data.store import open_store

    root = tmp_path_factory.mktemp("cli_spx")
    store = root / "store"
    run_simulate("strong-pixelated", 8, store, 4, config={"preset": "tiny"}, shard_size=8,
                 progress=False)  # fmt: skip
    (root / "rim.yaml").write_text(yaml.safe_dump({"filters": [4, 8], "steps": 2}))
    (root / "vae.yaml").write_text(yaml.safe_dump({"filters": 4, "latent_dim": 4}))
    runner = CliRunner()
    results = {}
    for name, cfg in (("rim-pixelated-small", "rim.yaml"), ("vae-kappa-small", "vae.yaml")):
        results[name] = runner.invoke(app, [
            "train", "strong-pixelated", name, "--data", str(store), "--out", str(root / name),
            "--network-config", str(root / cfg), "--epochs", "1", "--batch-size", "4",
            "--lr", "1e-3", "--no-progress", "--device", "cpu",
        ])  # fmt: skip
    d = open_store(store).read_all(keys=["image", "labels"])
    image = root / "lens.fits"
    write_image_fits(image, np.asarray(d["image"][0, 0]), pixel_scale=SCALE)
    return {"root": root, "store": store, "train": results, "image": image,
            "psf_fwhm": float(d["labels"][0, 1])}  # fmt: skip


def test_dump_config_and_help(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["train", "strong-pixelated", "vae-source-small", "--data",
                              str(tmp_path / "a"), "--data", str(tmp_path / "b"), "--epochs", "3",
                              "--dump-config"])  # fmt: skip
    assert res.exit_code == 0, res.output
    opts = yaml.safe_load(res.output)
    assert opts["network"] == "vae-source-small" and opts["epochs"] == 3
    assert opts["data"] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert not (tmp_path / "a").exists()  # nothing was run
    res = runner.invoke(app, ["train", "strong-pixelated", "--dump-config"])
    assert res.exit_code == 0 and yaml.safe_load(res.output)["network"] == "rim-pixelated-small"
    res = runner.invoke(app, ["predict", "strong-pixelated", "x.fits", "--psf-fwhm", "0.1",
                              "--finetune-steps", "5", "--dump-config"])  # fmt: skip
    opts = yaml.safe_load(res.output)
    assert res.exit_code == 0 and opts["psf_fwhm"] == 0.1 and opts["finetune_steps"] == 5
    res = runner.invoke(app, ["evaluate", "strong-pixelated", "s", "--n-finetune", "2",
                              "--dump-config"])  # fmt: skip
    assert res.exit_code == 0 and yaml.safe_load(res.output)["n_finetune"] == 2
    res = runner.invoke(app, ["evaluate", "strong-pixelated", "--help"])
    assert res.exit_code == 0
    for option in ("--model", "--vae-source", "--vae-kappa", "--n-finetune", "--finetune-config"):
        assert option in res.output, option


def test_train_writes_the_models(run):
    from lensml.pipelines.strong_pixelated import load_rim, load_vae

    for name, res in run["train"].items():
        assert res.exit_code == 0, res.output
        assert f"trained {name!r} on strong-pixelated data" in res.output
    rim, side = load_rim(run["root"] / "rim-pixelated-small" / "model")
    assert (
        side["role"] == "rim"
        and side["n_image"] == 32
        and side["train_stores"] == [str(run["store"])]
    )
    assert rim.config["filters"] == [4, 8] and rim.steps == 2  # the --network-config YAML
    vae, side = load_vae(run["root"] / "vae-kappa-small" / "model", "kappa")
    assert side["role"] == "vae-kappa" and vae.size == 32 and vae.config["filters"] == 4


def test_evaluate_without_vaes_is_baseline_only(run, tmp_path):
    out = tmp_path / "ev"
    res = CliRunner().invoke(app, ["evaluate", "strong-pixelated", str(run["store"]), "--model",
                                   str(run["root"] / "rim-pixelated-small" / "model"), "--out",
                                   str(out), "--max-items", "4"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "baseline only" in res.output and "strong-pixelated evaluation" in res.output
    data = json.loads((out / "strong_pixelated_eval.json").read_text())
    assert data["n"] == 4 and data["finetune"] is None
    assert (out / "reconstructions.png").stat().st_size > 0


def test_predict_writes_a_fits_file(run, tmp_path):
    from astropy.io import fits

    out = tmp_path / "pred.fits"
    res = CliRunner().invoke(app, ["predict", "strong-pixelated", str(run["image"]), "--model",
                                   str(run["root"] / "rim-pixelated-small" / "model"), "--out",
                                   str(out), "--psf-fwhm", str(run["psf_fwhm"])])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "chi2_nu = " in res.output and "theta_E" in res.output
    assert str(out.resolve()) in res.output
    assert "from the image border" in res.output  # no --sigma: the note is printed
    with fits.open(out) as hdul:
        assert {h.name for h in hdul[1:]} == {"DATA", "SOURCE", "KAPPA", "MODEL", "RESIDUAL"}
        assert np.isfinite(hdul[0].header["CHI2NU"])
    assert out.with_suffix(".png").stat().st_size > 0


def test_errors_are_one_line(run, tmp_path):
    runner = CliRunner()
    model = str(run["root"] / "rim-pixelated-small" / "model")
    vae = str(run["root"] / "vae-kappa-small" / "model")
    predict = ["predict", "strong-pixelated", str(run["image"]), "--model", model]
    missing = ["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]
    evaluate = ["evaluate", "strong-pixelated", str(run["store"]), "--n-finetune", "0"]
    cases = [
        (predict, "psf"),
        ([*predict, "--psf-fwhm", "0.1", "--finetune-steps", "1"], "vae_source"),
        (["train", "strong-pixelated", *missing], "missing"),
        ([*evaluate, "--model", vae], "expected 'rim'"),
    ]
    for args, needle in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 1, (args, res.output)
        lines = _lines(res.output)
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, res.output)
        assert needle in lines[0] and "Traceback" not in res.output
