"""Cheap imports, and a real SIGKILL of a training process followed by --resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from lensml.train import build_network, fit
from lensml.train.toy import make_toy_regression


def test_importing_train_package_is_cheap():
    code = (
        "import sys, lensml.config, lensml.train, lensml.train.config, lensml.train.engine;"
        "print(int('torch' in sys.modules), int('lightning' in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "0"]


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from lightning.pytorch.callbacks import Callback
    from lensml.train import build_network, fit
    from lensml.train.toy import make_toy_regression

    class Kill(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 11:
                os.kill(os.getpid(), signal.SIGKILL)

    torch.manual_seed(0)
    net = build_network("toy-mlp", {"in_features": 8, "out_features": 2, "hidden": 16})
    cfg = {"max_epochs": 3, "batch_size": 32, "checkpoint": {"every_n_steps": 4},
           "ema": {"enabled": True}, "early_stopping": {"enabled": False}}
    fit(net, make_toy_regression(256, seed=7), config=cfg, out_dir=sys.argv[1], progress=False,
        callbacks=[Kill()])
    """
)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sigkill_mid_epoch_then_resume_finishes(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ck = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["global_step"] == 8 and not (out / "model").exists()
    assert not [p for p in (out / "checkpoints").iterdir() if p.suffix != ".ckpt"]
    net = build_network("toy-mlp", {"in_features": 8, "out_features": 2, "hidden": 16})
    cfg = {
        "max_epochs": 3,
        "batch_size": 32,
        "checkpoint": {"every_n_steps": 4},
        "ema": {"enabled": True},
        "early_stopping": {"enabled": False},
    }
    res = fit(
        net, make_toy_regression(256, seed=7), config=cfg, out_dir=out, resume=True, progress=False
    )
    assert res["global_step"] == 3 * 8 and res["epochs"] == 3
    assert (res["model_dir"] / "weights.pt").is_file()
    end = torch.load(res["last_checkpoint"], weights_only=True)
    assert int(end["state_dict"]["ema.num_updates"]) == 24
