"""The training engine: toy regression, early stopping, crash + resume, checkpoints, export."""

from __future__ import annotations

import csv

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lensml.train import RunExistsError, build_network, fit, load_model, predict
from lensml.train.toy import make_toy_regression

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def toy_net(seed=0, **kw):
    torch.manual_seed(seed)  # tests may seed the global RNG for the initial weights
    return build_network("toy-mlp", {"in_features": 8, "out_features": 2, "hidden": 16, **kw})


BASE = {
    "max_epochs": 4,
    "batch_size": 32,
    "optimizer": {"lr": 0.01},
    "early_stopping": {"enabled": False},
}


def test_toy_regression_trains_to_low_loss_with_dict_samples(tmp_path):
    data = make_toy_regression(512, seed=1, as_dict=True)
    cfg = {
        **BASE,
        "max_epochs": 8,
        "batch_size": 64,
        "optimizer": {"lr": 0.02},
        "schedule": {"name": "cosine", "warmup_steps": 5},
    }
    res = fit(toy_net(), data, config=cfg, out_dir=tmp_path / "run", progress=False)
    # labels have std ~10 around 100; normalised val MSE must approach the noise floor (~0.0025)
    assert res["final_val_loss"] < 0.03, res
    assert res["epochs"] == 8 and res["global_step"] == 8 * 8
    rows = list(csv.DictReader(open(res["metrics_csv"])))
    lrs = [float(r["lr"]) for r in rows if r.get("lr")]
    assert lrs and max(lrs) <= 0.02 + 1e-9 and any(r.get("val_loss") for r in rows)
    # saved model round trip: predictions in label units
    net, info = load_model(res["model_dir"])
    assert info.network == "toy-mlp" and info.input_shape == [8] and not net.training
    pred = predict(res["model_dir"], data.x[:64])
    err = (pred - data.y[:64]).pow(2).mean().sqrt()
    assert pred.shape == (64, 2) and float(err) < 1.5  # label std is ~10
    assert torch.allclose(predict((net, info), data), predict(res["model_dir"], data.x), atol=1e-5)
    with pytest.raises(ValueError, match="does not match the shape"):
        predict(res["model_dir"], torch.zeros(3, 5))
    # the run's checkpoints hold only tensors and plain values
    for ck in (res["best_checkpoint"], res["last_checkpoint"]):
        state = torch.load(ck, weights_only=True)
        assert state["lensml"]["format"] == "lensml-checkpoint"
    # a lensml checkpoint also loads as a model
    net2, _ = load_model(res["best_checkpoint"])
    assert torch.allclose(predict((net2, info), data.x[:8]), predict((net, info), data.x[:8]))


def test_tuple_samples_huber_and_gaussian_nll(tmp_path):
    data = make_toy_regression(192, seed=2)
    res = fit(
        toy_net(),
        data,
        config={**BASE, "loss": {"name": "huber", "delta": 0.5}, "optimizer": {"lr": 0.03}},
        out_dir=tmp_path / "huber",
        progress=False,
    )
    assert res["final_val_loss"] < 0.2
    net = toy_net(out_features=4)
    res = fit(
        net,
        data,
        config={**BASE, "loss": {"name": "gaussian_nll"}, "max_epochs": 3},
        out_dir=tmp_path / "nll",
        progress=False,
    )
    pred = predict(res["model_dir"], data.tensors[0][:10])
    assert pred.shape == (10, 4) and (pred[:, 2:] > 0).all()
    with pytest.raises(ValueError, match="gaussian_nll"):
        fit(
            toy_net(),
            data,
            config={**BASE, "loss": {"name": "gaussian_nll"}},
            out_dir=tmp_path / "bad",
            progress=False,
        )


def test_early_stopping_stops(tmp_path):
    data = make_toy_regression(128, seed=3)
    cfg = {
        **BASE,
        "max_epochs": 50,
        "optimizer": {"lr": 1e-9},
        "early_stopping": {"enabled": True, "patience": 2, "min_delta": 1e-3},
    }
    res = fit(toy_net(), data, config=cfg, out_dir=tmp_path / "es", progress=False)
    assert res["stopped_early"] and res["epochs"] <= 4


class Crash(Callback):
    """Raise at the start of optimiser step ``at`` (simulates a kill mid-epoch)."""

    def __init__(self, at):
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("simulated kill")


def test_kill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    data = make_toy_regression(256, seed=4, as_dict=True)
    cfg = {
        **BASE,
        "max_epochs": 3,
        "export": "last",
        "gradient_clip": 1.0,
        "ema": {"enabled": True, "decay": 0.9},
        "checkpoint": {"every_n_steps": 3},
        "optimizer": {"name": "Adam", "lr": 0.01},
        "schedule": {"name": "cosine", "warmup_steps": 5},
    }
    full = fit(toy_net(), data, config=cfg, out_dir=tmp_path / "full", progress=False)
    # 230 training samples / 32 -> 8 steps per epoch; crash in epoch 1 at step 13 (ckpt at 12)
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit(
            toy_net(),
            data,
            config=cfg,
            out_dir=tmp_path / "cut",
            progress=False,
            callbacks=[Crash(13)],
        )
    ck = torch.load(tmp_path / "cut/checkpoints/last.ckpt", weights_only=True)
    assert ck["global_step"] == 12 and ck["epoch"] == 1
    assert any(k.startswith("ema.module.") for k in ck["state_dict"])
    assert ck["optimizer_states"][0]["state"]  # Adam moments saved
    with pytest.raises(RunExistsError):
        fit(toy_net(), data, config=cfg, out_dir=tmp_path / "cut", progress=False)
    # resume with differently initialised weights: everything must come from the checkpoint
    res = fit(
        toy_net(seed=99), data, config=cfg, out_dir=tmp_path / "cut", resume=True, progress=False
    )
    assert res["global_step"] == full["global_step"] == 24
    assert res["final_val_loss"] == pytest.approx(full["final_val_loss"], rel=1e-5)
    w_full = torch.load(full["model_dir"] / "weights.pt", weights_only=True)
    w_res = torch.load(res["model_dir"] / "weights.pt", weights_only=True)
    for k in w_full:
        assert torch.allclose(w_full[k], w_res[k], atol=1e-6), k
    end_full = torch.load(full["last_checkpoint"], weights_only=True)
    end_res = torch.load(res["last_checkpoint"], weights_only=True)
    for k, v in end_full["state_dict"].items():
        assert torch.allclose(v, end_res["state_dict"][k], atol=1e-6), k
    assert int(end_res["state_dict"]["ema.num_updates"]) == 24


def test_cpu_falls_back_to_32_bit_and_bad_device(tmp_path, caplog):
    data = make_toy_regression(64, seed=5)
    res = fit(
        toy_net(),
        data,
        config={**BASE, "max_epochs": 1, "precision": "bf16-mixed"},
        out_dir=tmp_path / "p",
        device="cpu",
        progress=False,
    )
    assert res["precision"] == "32" and "only used on GPU" in caplog.text
    with pytest.raises(ValueError, match="unknown device"):
        fit(toy_net(), data, config=BASE, out_dir=tmp_path / "d", device="tpu9", progress=False)
    with pytest.raises(ValueError, match="no key"):
        fit(
            toy_net(),
            make_toy_regression(64, as_dict=True),
            config={**BASE, "input_key": "x"},
            out_dir=tmp_path / "k",
            progress=False,
        )
