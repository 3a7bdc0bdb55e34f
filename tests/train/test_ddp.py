"""Data-parallel training: 2 CPU processes (DDP over gloo) match 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lensml.train import build_network, fit
from lensml.train.toy import make_toy_regression

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    from lensml.train import build_network, fit
    from lensml.train.toy import make_toy_regression

    out, devices, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    data = make_toy_regression(256, seed=6)
    torch.manual_seed(0)
    net = build_network("toy-mlp", {"in_features": 8, "out_features": 2, "hidden": 16})
    cfg = {"max_epochs": 4, "batch_size": batch, "optimizer": {"lr": 0.01},
           "early_stopping": {"enabled": False}, "val_fraction": 0.125}
    res = fit(net, data, config=cfg, out_dir=out, device="cpu", devices=devices,
              progress=False)
    if res["is_global_zero"]:
        print("RESULT " + json.dumps({"val": res["final_val_loss"], "world": res["world_size"],
                                      "step": res["global_step"],
                                      "model": str(res["model_dir"])}))
    """
)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_process_cpu_ddp_matches_one_process(tmp_path):
    # one process, global batch 32
    data = make_toy_regression(256, seed=6)
    torch.manual_seed(0)
    net = build_network("toy-mlp", {"in_features": 8, "out_features": 2, "hidden": 16})
    cfg = {
        "max_epochs": 4,
        "batch_size": 32,
        "optimizer": {"lr": 0.01},
        "early_stopping": {"enabled": False},
        "val_fraction": 0.125,
    }
    single = fit(net, data, config=cfg, out_dir=tmp_path / "one", progress=False)
    # two processes with 16 samples each: the same global batches (see EpochSampler)
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "two"), "2", "16"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-4000:]
    two = json.loads(lines[0][len("RESULT ") :])
    assert two["world"] == 2 and two["step"] == single["global_step"] == 4 * 7
    assert single["final_val_loss"] < 0.2
    assert two["val"] == pytest.approx(single["final_val_loss"], rel=1e-3)
    w1 = torch.load(single["model_dir"] / "weights.pt", weights_only=True)
    w2 = torch.load(os.path.join(two["model"], "weights.pt"), weights_only=True)
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-4), k
