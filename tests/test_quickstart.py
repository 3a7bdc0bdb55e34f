"""The README's main job renders its gallery, runs the clusters demo and records what it did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lensml.quickstart import run_quickstart


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs")
    # the sersic / shear / strong sections are tested with their pipelines
    return out, run_quickstart(out, seed=3, sections=("gallery", "clusters"))


def test_quickstart_writes_gallery(report):
    out, paths = report
    names = {p.name for p in paths}
    assert {"lensed_arc.png", "nfw_shear_field.png", "sersic_galaxy.png"} <= names
    assert paths[-1].name == "quickstart.json" and paths[-2].name == "report.html"
    for p in paths:
        assert p.stat().st_size > 1000
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "quickstart.json").read_text())
    assert summary["seed"] == 3
    # the gallery's own check: FFT tangential shear of the NFW map vs Wright & Brainerd
    gallery = summary["gallery"]
    assert gallery["nfw_shear_field"]["max_rel_err_gt_fft_vs_analytic_30_150"] < 0.01
    assert 0.5 < gallery["lensed_arc"]["lens_sie"]["theta_e"] < 3.0
    # nothing but the outputs (no temporary files or work directories left behind)
    top = {"lensed_arc.png", "nfw_shear_field.png", "sersic_galaxy.png", "quickstart.json",
           "report.html"}  # fmt: skip
    assert {p.name for p in out.iterdir()} == top | {"clusters"}


def test_quickstart_clusters_section(report):
    out, _ = report
    summary = json.loads((out / "quickstart.json").read_text())["clusters"]
    methods = summary["overall"]
    assert "nfw-tangential-fit" in methods and any(m.startswith("cnn:") for m in methods)
    for res in methods.values():
        assert res["log10_mvir"]["rms"] > 0 and res["c_vir"]["sigma"] >= 0
    cluster_files = {p.name for p in (out / "clusters").iterdir()}
    assert "clusters_eval.json" in cluster_files
    assert any(name.startswith("distributions_") for name in cluster_files)
    assert "work" not in cluster_files


def test_quickstart_gallery_is_reproducible(report, tmp_path):
    out, _ = report
    again = json.loads(run_quickstart(tmp_path / "again", seed=3, sections=("gallery",))[-1]
                       .read_text())  # fmt: skip
    first = json.loads((out / "quickstart.json").read_text())
    for key in ("lensed_arc", "nfw_shear_field", "sersic_galaxy"):
        assert again["gallery"][key] == first["gallery"][key]
    assert "clusters" not in again


def test_quickstart_rejects_bad_output_device_and_sections(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        run_quickstart(f)
    with pytest.raises(ValueError, match="device"):
        run_quickstart(tmp_path / "x", device="nonsense")
    with pytest.raises(ValueError, match="sections must be among"):
        run_quickstart(tmp_path / "y", sections=("nope",))


def test_report_html_embeds_every_figure_and_table(report):
    import base64
    import re

    out, paths = report
    page = (out / "report.html").read_text()
    summary = json.loads((out / "quickstart.json").read_text())
    for key in summary["sections"]:
        assert f'id="{key}"' in page
        for fig in summary[key]["figures"]:
            assert Path(fig).name in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == sum(p.suffix == ".png" for p in paths)
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert page.count("<table>") >= 2 and "nfw-tangential-fit" in page


def test_relative_output_directory(tmp_path, monkeypatch):
    """The README runs `lensml quickstart` with the default relative OUT."""
    monkeypatch.chdir(tmp_path)
    paths = run_quickstart(Path("qs-rel"), seed=1, sections=("gallery",))
    page = (tmp_path / "qs-rel" / "report.html").read_text()
    assert paths[-2].name == "report.html" and "lensed_arc.png" in page
