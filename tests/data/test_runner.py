"""Generation runner: bit-identical across workers, resumable after kills, strict inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest

from lensml.data.fits_io import read_cutouts, read_labels
from lensml.data.runner import SimulateError, run_simulate
from lensml.data.store import open_store
from lensml.registry import GENERATORS
from lensml.sims.base import ConfigError
from lensml.sims.toy import ToyBlobs

N, SHARD, SEED = 230, 50, 11


def read(root):
    store = open_store(root, require_complete=True)
    return store.read_all(), store.manifest


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref") / "set"
    run_simulate("toy", N, root, seed=SEED, shard_size=SHARD, progress=False)
    return read(root)


def assert_same_set(got, ref):
    data, manifest = got
    ref_data, ref_manifest = ref
    assert set(data) == set(ref_data)
    for key in ref_data:
        assert np.array_equal(data[key], ref_data[key]), key
    assert manifest["label_stats"] == ref_manifest["label_stats"]
    assert manifest["shards"] == ref_manifest["shards"]
    assert manifest["n_written"] == N and manifest["complete"]


def test_reference_run(reference):
    data, manifest = reference
    assert data["image"].shape == (N, 1, 16, 16) and manifest["n_shards"] == 5
    assert manifest["shards"]["shard-000004"]["n"] == 30
    # the seed matters
    assert not np.array_equal(data["image"][:SHARD], data["image"][SHARD : 2 * SHARD])


def test_rerun_is_a_noop_and_seed_changes_data(reference, tmp_path):
    root = tmp_path / "set"
    run_simulate("toy", N, root, seed=SEED, shard_size=SHARD, progress=False)
    before = (root / "shards" / "shard-000000" / "_shard.json").stat().st_mtime_ns
    run_simulate("toy", N, root, seed=SEED, shard_size=SHARD, progress=False)
    assert (root / "shards" / "shard-000000" / "_shard.json").stat().st_mtime_ns == before
    assert_same_set(read(root), reference)
    other = tmp_path / "other"
    run_simulate("toy", N, other, seed=SEED + 1, shard_size=SHARD, progress=False)
    assert not np.array_equal(read(other)[0]["labels"], reference[0]["labels"])


@pytest.mark.slow
def test_process_pool_gives_identical_data(reference, tmp_path):
    root = tmp_path / "set"
    run_simulate(
        "toy", N, root, seed=SEED, shard_size=SHARD, workers=2, backend="processes", progress=False
    )
    assert_same_set(read(root), reference)


def test_dask_cluster_gives_identical_data(reference, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        root = tmp_path / "set"
        run_simulate(
            "toy",
            N,
            root,
            seed=SEED,
            shard_size=SHARD,
            scheduler=cluster.scheduler_address,
            progress=False,
        )
    assert_same_set(read(root), reference)


@pytest.mark.slow
def test_default_dask_local_cluster_with_processes(reference, tmp_path):
    root = tmp_path / "set"
    run_simulate("toy", N, root, seed=SEED, shard_size=SHARD, workers=2, progress=False)
    assert_same_set(read(root), reference)


class _FailingToy(ToyBlobs):
    """The toy generator, failing on its third call while ``fail`` is set."""

    fail = True
    calls = 0

    def generate(self, n, rng, config):
        type(self).calls += 1
        if type(self).fail and type(self).calls == 3:
            raise RuntimeError("injected failure")
        return super().generate(n, rng, config)


def test_injected_failure_then_resume(reference, tmp_path):
    name = f"failing_toy_{uuid.uuid4().hex[:6]}"
    GENERATORS.register(name)(_FailingToy)
    root = tmp_path / "set"
    with pytest.raises(SimulateError, match=r"shard-000002 failed.*injected failure.*rerun"):
        run_simulate(name, N, root, seed=SEED, shard_size=SHARD, progress=False)
    _, partial = open_store(root), json.loads((root / "manifest.json").read_text())
    assert sorted(partial["shards"]) == ["shard-000000", "shard-000001"] and not partial["complete"]
    assert open_store(root).shards == [(0, 50), (1, 50)]
    _FailingToy.fail = False
    run_simulate(name, N, root, seed=SEED, shard_size=SHARD, progress=False)
    assert_same_set(read(root), reference)


SLOW_GENERATOR = """
import os, time
from lensml.registry import GENERATORS
from lensml.sims.toy import ToyBlobs

class SlowToy(ToyBlobs):
    def generate(self, n, rng, config):
        time.sleep(float(os.environ.get("SLOW_TOY_DELAY", "0")))
        return super().generate(n, rng, config)

GENERATORS.register(os.environ["SLOW_TOY_NAME"])(SlowToy)
"""


def test_sigkill_mid_run_then_resume(reference, tmp_path, monkeypatch):
    name = f"slow_toy_{uuid.uuid4().hex[:6]}"
    mod = f"slowgen_{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{mod}.py").write_text(SLOW_GENERATOR)
    root = tmp_path / "set"
    script = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {str(tmp_path)!r})
        import {mod}
        from lensml.data.runner import run_simulate
        run_simulate({name!r}, {N}, {str(root)!r}, seed={SEED}, shard_size={SHARD}, progress=False)
        """
    )
    env = dict(os.environ, SLOW_TOY_NAME=name, SLOW_TOY_DELAY="0.7")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.time() + 60
        while not (root / "shards" / "shard-000001").exists():
            assert proc.poll() is None, "simulate ended before it could be killed"
            assert time.time() < deadline, "no shard appeared within 60 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = sorted(p.name for p in (root / "shards").iterdir() if ".tmp-" not in p.name)
    assert 2 <= len(done) < 5, done
    for d in done:  # every visible shard is complete
        assert (root / "shards" / d / "_shard.json").is_file()
    # resume in this process with the same generator (no delay)
    monkeypatch.setenv("SLOW_TOY_NAME", name)
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__(mod)
    run_simulate(name, N, root, seed=SEED, shard_size=SHARD, progress=False)
    assert not [p for p in (root / "shards").iterdir() if ".tmp-" in p.name]
    assert_same_set(read(root), reference)


def test_fits_output(tmp_path):
    root = tmp_path / "set"
    m = run_simulate("toy", 12, root, seed=0, shard_size=5, fits=True, progress=False)
    files = sorted((root / "fits").rglob("*.fits"))
    assert len(files) == 12 and files[-1].name == "item-000000011.fits"
    cut = read_cutouts(files[7])
    labels = open_store(root).read_all(["labels"])["labels"]
    got = read_labels(cut.headers[0])
    assert [got["amplitude"], got["width"]] == pytest.approx(labels[7].tolist(), rel=1e-6)
    assert cut.pixel_scale == pytest.approx(m["config"]["pixel_scale"])
    with pytest.raises(SimulateError, match=r"fits"):
        run_simulate("toy", 12, root, seed=0, shard_size=5, fits=False, progress=False)


def test_bad_inputs(tmp_path):
    out = tmp_path / "set"
    for kwargs, err, msg in [
        ({"n": 0}, SimulateError, "n must be >= 1"),
        ({"n": 2.5}, SimulateError, "n must be an integer"),
        ({"seed": -3}, SimulateError, "seed must be >= 0"),
        ({"shard_size": 0}, SimulateError, "shard_size"),
        ({"workers": 2, "scheduler": "tcp://x:1"}, SimulateError, "not both"),
        ({"generator": "nope"}, ValueError, "unknown generator 'nope'; known: .*toy"),
        ({"config": {"size": "large"}}, ConfigError, "ToyBlobs: config: size: .*got 'large'"),
        ({"config": {"colour": 1}}, ConfigError, "unknown config field.*colour"),
    ]:
        args = {"generator": "toy", "n": 10, "out": out, "seed": 0, "progress": False} | kwargs
        with pytest.raises(err, match=msg):
            run_simulate(**args)
    assert not out.exists()  # nothing written for bad input
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(SimulateError, match=r"not a directory"):
        run_simulate("toy", 10, afile, seed=0, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SimulateError, match=r"not empty"):
        run_simulate("toy", 10, foreign, seed=0, progress=False)


def test_rerun_with_different_settings_is_refused(tmp_path):
    root = tmp_path / "set"
    run_simulate("toy", 20, root, seed=0, shard_size=10, progress=False)
    for kwargs, field in [
        ({"seed": 1}, "seed"),
        ({"config": {"size": 8}}, "config"),
        ({"n": 30}, "n"),
        ({"shard_size": 5}, "shard_size"),
    ]:
        args = {"seed": 0, "shard_size": 10, "n": 20} | kwargs
        with pytest.raises(SimulateError, match=f"different run.*{field}: stored"):
            run_simulate("toy", out=root, progress=False, **args)
    assert open_store(root, require_complete=True).manifest["seed"] == 0


def test_config_file_and_progress_bar(tmp_path, capsys):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text("size: 8\nnoise_sigma: 0.0\n")
    m = run_simulate("toy", 20, tmp_path / "set", seed=0, config=cfg, shard_size=10, progress=True)
    assert m["config"]["size"] == 8 and m["config"]["noise_sigma"] == 0.0
    assert open_store(tmp_path / "set").read_all(["image"])["image"].shape == (20, 1, 8, 8)
