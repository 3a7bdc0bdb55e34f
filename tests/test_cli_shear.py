"""``lensml train|evaluate|predict shear`` through a small typer app (until cli.py lists them)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from lensml.commands import shear as shear_commands

runner = CliRunner()
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
for _verb in ("train", "evaluate", "predict"):
    app.command(_verb)(getattr(shear_commands, _verb))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from lensml.data.runner import run_simulate

    out = tmp_path_factory.mktemp("cli-shear") / "store"
    run_simulate("shear", 40, out, 5, config={"cosmos_fraction": 0.0}, shard_size=40,
                 progress=False)  # fmt: skip
    return out


def _error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error:")]


def test_dump_config_prints_the_effective_options(tmp_path):
    res = runner.invoke(app, ["train", "shear-resnet", "--data", str(tmp_path), "--epochs", "3",
                              "--no-symmetrise", "--dump-config"])  # fmt: skip
    assert res.exit_code == 0, res.output
    opts = yaml.safe_load(res.output)
    assert opts["network"] == "shear-resnet" and opts["epochs"] == 3
    assert opts["symmetrise"] is False and opts["refit"] is True and opts["calibrate"] is True
    res = runner.invoke(app, ["evaluate", str(tmp_path), "--method", "ksb", "--dump-config"])
    assert res.exit_code == 0 and yaml.safe_load(res.output)["method"] == ["ksb"]
    res = runner.invoke(app, ["predict", "img.fits", "cat.csv", "--estimator", "regauss",
                              "--psf", "preset", "--x-col", "XW", "--y-col", "YW",
                              "--field-scale", "10", "--dump-config"])  # fmt: skip
    assert res.exit_code == 0, res.output
    opts = yaml.safe_load(res.output)
    assert opts["columns"] == {"x": "XW", "y": "YW"} and opts["field_scale"] == 10.0


def test_bad_input_is_one_error_line(tmp_path, store):
    cases = [
        ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), "--epochs",
         "1", "--no-progress"],
        ["train", "vgg-nope", "--data", str(store), "--out", str(tmp_path / "r2"),
         "--no-progress"],
        ["evaluate", str(store), "--method", "cnn", "--out", str(tmp_path / "e")],
        ["evaluate", str(store), "--method", "rrg", "--out", str(tmp_path / "e")],
        ["predict", str(tmp_path / "none.fits"), str(tmp_path / "none.csv")],
        ["predict", str(tmp_path / "none.fits"), str(tmp_path / "none.csv"), "--estimator",
         "ksb"],
    ]  # fmt: skip
    for args in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 1, (args, res.output)
        lines = _error_lines(res.output)
        assert len(lines) == 1, (args, res.output)
        assert "Traceback" not in res.output
    res = runner.invoke(app, cases[2])
    assert "needs a model" in res.output
    res = runner.invoke(app, cases[5])
    assert "needs a PSF" in res.output


def test_evaluate_moment_methods_through_the_cli(store, tmp_path):
    out = tmp_path / "eval"
    res = runner.invoke(app, ["evaluate", str(store), "--method", "ksb", "--method", "regauss",
                              "--out", str(out), "--calib-fraction", "0.5"])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads((out / "shear_eval.json").read_text())
    assert set(data["methods"]) == {"ksb", "regauss"}
    assert data["n_calib"] == 20 and data["n_test"] == 20
    assert np.isfinite(data["methods"]["ksb"]["table4"]["sigma"][0])
    assert (out / "rms_bias_vs_true_shear.png").is_file()
