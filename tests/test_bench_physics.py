"""Smoke tests of ``lensml bench physics`` (tiny sizes and iteration counts, well under 20 s)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from rich.console import Console

from lensml.bench import physics


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=160)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "sub" / "physics.json"
    console = _quiet()
    data = physics.run_physics_bench(quick=True, out=out, batch=2, console=console, threads=1)
    return out, data, console.file.getvalue()


def test_json_schema_and_file(quick_run):
    out, data, text = quick_run
    assert out.exists()
    assert json.loads(out.read_text()) == json.loads(json.dumps(data))
    assert [p.name for p in out.parent.iterdir()] == ["physics.json"]  # no temp file left
    assert data["schema"] == physics.SCHEMA and data["quick"] is True
    m = data["machine"]
    for key in ("platform", "python", "cpu_model", "cores", "torch_threads", "versions"):
        assert key in m
    assert m["torch_threads"] == 1 and m["versions"]["torch"]  # as asked, restored after
    assert data["settings"]["lensml_dtype"] == "float32"
    names = [c["name"] for c in data["cases"]]
    assert names == ["strong_ss1", "strong_ss4", "stamps", "fft"]
    assert "lensml bench physics" in text and "ratio" in text


def test_rates_and_ratios_are_positive_finite(quick_run):
    _, data, _ = quick_run
    cases = {c["name"]: c for c in data["cases"]}
    n_ratios = 0
    for row in data["comparisons"]:
        case = cases[row["case"]]
        mine, theirs = case[row["lensml"]], case["peers"][row["peer"]]
        if "skipped" in mine or "skipped" in theirs:
            assert row["ratio"] is None and row["ratio_best"] is None and row["note"]
            # only a code that is not installed may be skipped, never an adapter that broke
            assert "ModuleNotFoundError" in mine.get("skipped", "ModuleNotFoundError")
            assert "not importable" in theirs.get("skipped", "not importable")
            continue
        for rate in (row["lensml_rate"], row["peer_rate"]):
            assert math.isfinite(rate) and rate > 0
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
        assert row["ratio"] == pytest.approx(row["lensml_rate"] / row["peer_rate"])
        assert math.isfinite(row["ratio_best"]) and row["ratio_best"] > 0
        assert row["passed"] is (None if row["target"] is None else row["ratio"] >= row["target"])
        assert len(theirs["times_s"]) == theirs["repeats"] >= 1
        n_ratios += 1
    assert n_ratios >= 1
    # strong: the fused fast path is the judged contender, render_lensed a second lensml row
    strong = cases["strong_ss1"]
    assert (
        strong["lensml"]["code"].startswith("lensml fused") and strong["lensml"]["compile_s"] >= 0
    )
    assert strong["lensml_generic"]["code"] == "lensml render_lensed"
    assert {r["lensml"] for r in data["comparisons"] if r["case"] == "strong_ss4"} >= {
        "lensml",
        "lensml_generic",
    }
    # every case with a target in the issue appears with its target
    rows = [r for r in data["comparisons"] if r["lensml"] == "lensml"]  # the judged contender
    targets = {(r["case"], r["peer"]): r["target"] for r in rows}
    for key, value in physics.TARGETS.items():
        assert targets[key] == value


def test_missing_peer_is_skipped_not_fatal(tmp_path, monkeypatch):
    real = physics._require

    def fake(name):
        if name == "scipy.fft":
            raise physics.PeerMissing("scipy.fft not importable (test); comparison skipped")
        return real(name)

    monkeypatch.setattr(physics, "_require", fake)
    data = physics.run_physics_bench(
        quick=True, out=tmp_path / "p.json", cases=["fft"], console=_quiet(), threads=1
    )
    rows = {r["peer"]: r for r in data["comparisons"]}
    assert rows["scipy workers"]["ratio"] is None
    assert "not importable" in rows["scipy workers"]["note"]
    assert rows["numpy.rfft2"]["peer_rate"] > 0


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown bench case"):
        physics.run_physics_bench(quick=True, out=tmp_path / "x.json", cases=["nope"])
    with pytest.raises(ValueError, match="batch"):
        physics.run_physics_bench(quick=True, out=tmp_path / "x.json", batch=0)
    with pytest.raises(ValueError, match="threads"):
        physics.run_physics_bench(quick=True, out=tmp_path / "x.json", threads=0)
    assert not (tmp_path / "x.json").exists()


def test_numpy_baselines_agree_with_each_other():
    y, x = np.mgrid[:32, :48]
    kappa = np.exp(-((x - 20.0) ** 2 + (y - 14.0) ** 2 / 0.5) / 30.0)  # band-limited blob
    g_full = physics.numpy_shear_from_kappa(kappa, 2)
    g_real = physics.numpy_shear_from_kappa_rfft(kappa, 2)
    for a, b in zip(g_full, g_real, strict=True):
        assert a.shape == kappa.shape
        # they differ only by the Nyquist line of γ2 (odd in k), negligible for a smooth map
        np.testing.assert_allclose(a, b, atol=1e-8)
    # a constant sheet carries no shear (the zero mode is removed)
    g1, g2 = physics.numpy_shear_from_kappa(np.ones((16, 16)), 1)
    assert np.abs(g1).max() < 1e-12 and np.abs(g2).max() < 1e-12


def test_time_rate_counts_calls():
    calls = []
    out = physics.time_rate(lambda: calls.append(1), items=3, repeats=4, warmup=2)
    assert len(calls) == 6 and out["repeats"] == 4 and len(out["times_s"]) == 4
    assert out["rate_best"] >= out["rate_median"] > 0
