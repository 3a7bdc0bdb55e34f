"""The command line answers quickly and without heavy imports."""

from __future__ import annotations

import subprocess
import sys
import time

from typer.testing import CliRunner

from lensml import __version__
from lensml.cli import app

runner = CliRunner()


def test_help_and_version():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "quickstart" in res.output and "bench" in res.output
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_help_does_not_import_torch_and_is_fast():
    code = (
        "import sys, time; t=time.perf_counter();"
        "from lensml.cli import app;"
        "import typer.testing as tt; r=tt.CliRunner().invoke(app, ['--help']);"
        "assert r.exit_code == 0;"
        "print(int('torch' in sys.modules), time.perf_counter()-t)"
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    torch_loaded, _ = out.stdout.split()
    assert torch_loaded == "0", "lensml --help imported torch"
    assert wall < 5.0  # about a second on an idle 2-core machine; generous for shared CI


def test_importing_lensml_has_no_side_effects(tmp_path):
    code = "import lensml, lensml.physics, lensml.registry, sys; print(int('torch' in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "0"
    assert list(tmp_path.iterdir()) == []


def test_info_lists_registries_and_parameter_counts():
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0
    for word in ("sie", "nfw", "sersic", "toy", "toy-cnn", "nmad"):
        assert word in res.output
    res = runner.invoke(app, ["info", "nets"])
    assert res.exit_code == 0
    line = next(ln for ln in res.output.splitlines() if ln.startswith("toy-mlp"))
    # 8 → 32 → 2 MLP: 8·32 + 32 + 32·2 + 2
    assert line.split()[1].replace(",", "") == str(8 * 32 + 32 + 32 * 2 + 2)


def test_info_models_lists_the_zoo_with_cards():
    from lensml.models import list_models

    res = runner.invoke(app, ["info", "models"])
    assert res.exit_code == 0
    for m in list_models():
        assert f"{m.pipeline}/{m.name}" in res.output
        assert str(m.path / "card.json") in res.output
