"""``lensml train|evaluate|predict sersic`` through typer's CliRunner (a stand-alone app, so the
commands are tested before they are wired into ``lensml.cli``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from lensml.commands import sersic as commands

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command("train")(commands.train)
app.command("evaluate")(commands.evaluate)
app.command("predict")(commands.predict)
runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import lensml.sims.sersic  # noqa: F401
    from lensml.data.runner import run_simulate

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli_sersic")
    store = root / "store"
    run_simulate("sersic", 32, store, 7, shard_size=32, progress=False)
    res = runner.invoke(app, ["train", "galnet-2-small", "--data", str(store), "--out",
                              str(root / "run"), "--epochs", "1", "--batch-size", "16",
                              "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    return root, store, root / "run" / "model"


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["train", "galnet-1-small", "--epochs", "3", "--loss", "huber"], "loss: huber"),
        (["evaluate", "store", "--fit-max", "17"], "fit_max: 17"),
        (["predict", "a.fits", "--psf-hdu", "PSF", "--resample"], "resample: true"),
    ],
)
def test_dump_config_prints_the_effective_options(args, key, tmp_path):
    res = runner.invoke(app, [*args, "--dump-config"])
    assert res.exit_code == 0, res.output
    assert key in res.output and isinstance(yaml.safe_load(res.output), dict)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "galnet-2-small", "--data", "{tmp}/missing"], "missing"),
        (["train", "galnet-2-small", "--data", "{tmp}/missing", "--loss", "l2"], "loss"),
        (["evaluate", "{tmp}/nostore", "--model", "{tmp}/nomodel"], "nostore"),
        (["predict", "{tmp}/a.fits", "--model", "{tmp}/nomodel"], "nomodel"),
    ],
)
def test_errors_are_one_line(tmp_path, args, message):
    res = runner.invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert res.exit_code == 1
    assert res.output.count("error:") == 1 and message in res.output
    assert "Traceback" not in res.output


def test_predict_and_evaluate_through_the_cli(trained, tmp_path):
    from astropy.table import Table

    from lensml.data.fits_io import write_image_fits

    _, store, model = trained
    res = runner.invoke(app, ["predict", str(store), "--model", str(model), "--out",
                              str(tmp_path / "cat.fits")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "32 galaxies" in res.output
    assert {"mag", "sigma_mag", "pa", "sigma_pa"} <= set(Table.read(tmp_path / "cat.fits").colnames)
    path = tmp_path / "wrong.fits"
    write_image_fits(path, {"image": np.zeros((51, 51), np.float32),
                            "psf": np.ones((25, 25), np.float32)}, pixel_scale=0.2)  # fmt: skip
    res = runner.invoke(app, ["predict", str(path), "--model", str(model), "--psf-hdu", "PSF",
                              "--out", str(tmp_path / "c.fits")])  # fmt: skip
    assert res.exit_code == 1 and res.output.count("error:") == 1
    assert "51x51" in res.output and "61x61" in res.output
    res = runner.invoke(app, ["evaluate", str(store), "--model", str(model), "--fit-max", "3",
                              "--examples", "1", "--out", str(tmp_path / "ev")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ev" / "sersic_eval.json").is_file()


def test_bad_training_config_names_the_field(trained, tmp_path):
    _, store, _ = trained
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("max_epochs: many\n")
    res = runner.invoke(app, ["train", "--data", str(store), "--out", str(tmp_path / "r"),
                              "--config", str(cfg)])  # fmt: skip
    assert res.exit_code == 1 and "max_epochs" in res.output
