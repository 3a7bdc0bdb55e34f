"""The README's main job renders its gallery and records what it simulated."""

from __future__ import annotations

import json

import pytest

from lensml.quickstart import run_quickstart


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs")
    return out, run_quickstart(out, seed=3)


def test_quickstart_writes_gallery(gallery):
    out, paths = gallery
    names = sorted(p.name for p in paths)
    assert names == [
        "lensed_arc.png",
        "nfw_shear_field.png",
        "quickstart.json",
        "sersic_galaxy.png",
    ]
    for p in paths:
        assert p.stat().st_size > 1000
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "quickstart.json").read_text())
    assert summary["seed"] == 3
    # the gallery's own check: FFT tangential shear of the NFW map vs Wright & Brainerd
    assert summary["nfw_shear_field"]["max_rel_err_gt_fft_vs_analytic_30_150"] < 0.01
    assert 0.5 < summary["lensed_arc"]["lens_sie"]["theta_e"] < 3.0
    # nothing but the outputs (no temporary files left behind)
    assert sorted(p.name for p in out.iterdir()) == names


def test_quickstart_is_reproducible(gallery, tmp_path):
    out, _ = gallery
    again = run_quickstart(tmp_path / "again", seed=3)
    assert again[-1].read_text() == (out / "quickstart.json").read_text()


def test_quickstart_rejects_bad_output_and_device(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        run_quickstart(f)
    with pytest.raises(ValueError, match="device"):
        run_quickstart(tmp_path / "x", device="nonsense")
