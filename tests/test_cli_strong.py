"""``lensml train|evaluate|predict strong`` typer functions: --dump-config, one error line."""

from __future__ import annotations

import typer
import yaml
from typer.testing import CliRunner

from lensml.commands import strong


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("train")(strong.train)
    app.command("evaluate")(strong.evaluate)
    app.command("predict")(strong.predict)
    return app


def test_dump_config_prints_the_options(tmp_path):
    runner = CliRunner()
    args = ["train", "astrorim", "--data", str(tmp_path / "a"), "--data", str(tmp_path / "b")]
    res = runner.invoke(_app(), [*args, "--epochs", "3", "--dump-config"])
    assert res.exit_code == 0, res.output
    opts = yaml.safe_load(res.output)
    assert opts["network"] == "astrorim" and opts["epochs"] == 3 and len(opts["data"]) == 2
    from lensml.pipelines.strong import LAMBDA_LABEL

    assert opts["lambda_label"] == LAMBDA_LABEL  # the CLI default is the pipeline's
    res = runner.invoke(_app(), ["predict", "x.fits", "--pixel-scale", "0.05", "--dump-config"])
    assert res.exit_code == 0 and yaml.safe_load(res.output)["pixel_scale"] == 0.05
    res = runner.invoke(_app(), ["evaluate", "s1", "s2", "--fit-max", "3", "--dump-config"])
    opts = yaml.safe_load(res.output)
    assert res.exit_code == 0 and opts["fit_max"] == 3 and opts["symmetrise"] is True
    res = runner.invoke(_app(), ["predict", "x.fits", "--no-symmetrise", "--dump-config"])
    assert res.exit_code == 0 and yaml.safe_load(res.output)["symmetrise"] is False


def test_errors_are_one_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(_app(), ["train", "--data", str(tmp_path / "missing")])
    assert res.exit_code == 1
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
    res = runner.invoke(_app(), ["predict", str(tmp_path / "nope.fits"), "--model", str(tmp_path)])
    assert res.exit_code == 1
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
    res = runner.invoke(_app(), ["evaluate", str(tmp_path / "missing")])
    assert res.exit_code == 1 and res.output.strip().startswith("error:")


def test_predict_without_pixel_scale_is_refused(tmp_path):
    import numpy as np
    from astropy.io import fits

    path = tmp_path / "bare.fits"
    fits.PrimaryHDU(np.ones((96, 96), np.float32)).writeto(path)
    res = CliRunner().invoke(_app(), ["predict", str(path), "--model", str(tmp_path)])
    assert res.exit_code == 1 and "pixel scale" in res.output and "--pixel-scale" in res.output
