"""End to end through the CLI: simulate → train → predict → evaluate, and its error handling."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lensml.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    store = root / "store"
    res = runner.invoke(
        app,
        [
            "simulate",
            "toy",
            "--n",
            "192",
            "--out",
            str(store),
            "--seed",
            "4",
            "--shard-size",
            "64",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    cfg = root / "train.yaml"
    cfg.write_text("max_epochs: 2\nbatch_size: 32\nval_fraction: 0.25\n")
    run = root / "run"
    res = runner.invoke(
        app,
        [
            "train",
            "generic",
            "toy-cnn",
            "--data",
            str(store),
            "--out",
            str(run),
            "--config",
            str(cfg),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    return root, store, run / "model"


def test_predict_and_evaluate_on_store(trained):
    from astropy.table import Table

    root, store, model = trained
    out = root / "pred.fits"
    res = runner.invoke(
        app, ["predict", "generic", str(store), "--model", str(model), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    table = Table.read(out)
    assert len(table) == 192 and {"amplitude", "width"} <= set(table.colnames)
    assert np.isfinite(np.asarray(table["amplitude"])).all()
    metrics = root / "metrics.json"
    res = runner.invoke(
        app, ["evaluate", "generic", str(store), "--model", str(model), "--out", str(metrics)]
    )
    assert res.exit_code == 0, res.output
    scores = json.loads(metrics.read_text())
    assert set(scores) == {"amplitude", "width"}
    assert scores["amplitude"]["rmse"] > 0


def test_predict_on_fits_cutouts(trained, tmp_path):
    from lensml.data.fits_io import write_image_fits

    _, _, model = trained
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"cut{i}.fits"
        write_image_fits(p, rng.normal(size=(16, 16)).astype(np.float32), pixel_scale=0.2)
        paths.append(str(p))
    out = tmp_path / "pred.fits"
    res = runner.invoke(
        app, ["predict", "generic", *paths, "--model", str(model), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "3 predictions" in res.output


def test_dump_config_round_trips():
    res = runner.invoke(app, ["simulate", "toy", "--dump-config"])
    assert res.exit_code == 0 and "size: 16" in res.output
    res = runner.invoke(app, ["train", "generic", "toy-cnn", "--dump-config"])
    assert res.exit_code == 0 and "max_epochs:" in res.output and "optimizer:" in res.output


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["quickstart", "--seed", "7", "--pipelines", "gallery"], "- gallery"),
        (["bench", "physics", "--case", "fft"], "- fft"),
        (["predict", "generic", "a.fits", "--batch-size", "8"], "batch_size: 8"),
        (["predict", "clusters", "a.fits", "--batch-size", "8"], "batch_size: 8"),
        (["evaluate", "generic", "store", "--device", "cpu"], "device: cpu"),
        (["evaluate", "clusters", "store", "--seed", "3"], "seed: 3"),
        (["train", "clusters", "vgg-small", "--epochs", "2"], "epochs: 2"),
        (["train", "clusters", "vgg-small", "--calib-data", "cal"], "calib_data: cal"),
        (["train", "clusters", "vgg-small", "--loss", "l1"], "loss: l1"),
    ],
)
def test_every_command_dumps_its_effective_config(args, key, tmp_path):
    import yaml

    res = runner.invoke(app, [*args, "--dump-config"])
    assert res.exit_code == 0, res.output
    assert key in res.output
    assert isinstance(yaml.safe_load(res.output), dict)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "nogen", "--n", "4", "--out", "{tmp}/s"], "nogen"),
        (["simulate", "toy", "--n", "0", "--out", "{tmp}/s"], "n"),
        (["train", "generic", "nonet", "--data", "{tmp}/missing"], "missing"),
        (["predict", "generic", "{tmp}/none.fits", "--model", "{tmp}/nomodel"], "nomodel"),
        (["evaluate", "generic", "{tmp}/nostore", "--model", "{tmp}/nomodel"], "nomodel"),
        (["train", "clusters", "--data", "{tmp}/s", "--loss", "huber"], "loss must be one of"),
    ],
)
def test_errors_exit_nonzero_with_one_message(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    assert res.output.count("error:") == 1 and message in res.output
    assert "Traceback" not in res.output


def test_bad_train_config_names_field(tmp_path, trained):
    _, store, _ = trained
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("max_epochs: many\n")
    res = runner.invoke(
        app, ["train", "generic", "toy-cnn", "--data", str(store), "--config", str(cfg)]
    )
    assert res.exit_code == 1 and "max_epochs" in res.output and str(cfg) in res.output


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_unknown_pipeline_is_a_usage_error(command):
    res = runner.invoke(app, [command, "nope", "x"])
    assert res.exit_code == 2
    assert "nope" in res.output and "Traceback" not in res.output


def test_cluster_predict_names_missing_shear_extensions(tmp_path):
    from lensml.data.fits_io import write_image_fits

    path = tmp_path / "cluster.fits"
    write_image_fits(path, {"kappa": np.zeros((8, 8), np.float32)}, pixel_scale=1.0)
    model = tmp_path / "model"
    res = runner.invoke(app, ["predict", "clusters", str(path), "--model", str(model)])
    assert res.exit_code == 1 and res.output.count("error:") == 1
    assert "G1" in res.output and str(path) in res.output
