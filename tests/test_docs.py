"""The user documentation cannot rot: the generated reference is current, the site builds
offline with ``mkdocs build --strict``, and every ``lensml`` command shown in a code block parses
against the real command tree (and names a registered generator)."""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REGENERATE = "python -m lensml.docs_reference docs/reference"
_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_SHELL = {"bash", "sh", "shell", "console"}
_SEPARATORS = {"&&", "||", "|", ";", "&"}
_REDIRECTS = {">", ">>", "<", ">&", "<&", ">|"}


def _shell_commands(text: str) -> list[str]:
    """Every command line of the shell code blocks of a Markdown page (continuations joined)."""
    lines: list[str] = []
    for lang, body in _FENCE.findall(text):
        if lang.lower() not in _SHELL:
            continue
        body = re.sub(r"\s*\\\n\s*", " ", body)
        lines += [ln.strip().removeprefix("$ ") for ln in body.splitlines() if ln.strip()]
    return lines


def _segments(line: str) -> list[list[str]]:
    """The simple commands of one shell line, without comments and redirections."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError as err:  # an unbalanced quote: the line is not a valid shell command
        raise AssertionError(f"cannot split the shell line {line!r}: {err}") from err
    out: list[list[str]] = [[]]
    skip_next = False
    for tok in tokens:
        if tok in _SEPARATORS:
            out.append([])
            skip_next = False
        elif tok in _REDIRECTS:
            skip_next = True
        elif skip_next:
            skip_next = False
        else:
            out[-1].append(tok)
    return [seg for seg in out if seg]


def _doc_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "reference" not in p.relative_to(DOCS).parts)


def _lensml_commands() -> list[tuple[str, list[str]]]:
    found = []
    for page in _doc_pages():
        for line in _shell_commands(page.read_text(encoding="utf-8")):
            for seg in _segments(line):
                if seg[0] == "lensml":
                    found.append((f"{page.relative_to(ROOT)}: {line}", seg))
    return found


def _parse(args: list[str], app: object = None) -> str | None:
    """Parse ``lensml ARGS`` with the real command tree; the problem, or None if it parses."""
    import typer

    if app is None:
        from lensml.cli import app

    cmd = typer.main.get_command(app)
    ctx = cmd.context_class(cmd, info_name="lensml")
    tokens = list(args[1:])
    while hasattr(cmd, "list_commands") and tokens and not tokens[0].startswith("-"):
        sub = cmd.get_command(ctx, tokens[0])
        if sub is None:
            sub = _unwired_command(ctx.command_path, tokens[0])
        if sub is None:
            return f"no command {tokens[0]!r} under {ctx.command_path!r}"
        name = tokens.pop(0)
        if not tokens and hasattr(sub, "list_commands"):
            return None  # a group on its own (e.g. `lensml info`)
        cmd, parent = sub, ctx
        ctx = cmd.context_class(cmd, info_name=name, parent=parent)
    try:
        cmd.make_context(ctx.info_name, tokens, parent=ctx.parent)
    except Exception as err:  # click's UsageError / BadParameter / Exit (for --help)
        if getattr(err, "exit_code", None) == 0:
            return None
        message = err.format_message() if hasattr(err, "format_message") else str(err)
        return f"{type(err).__name__}: {message}"
    return None


#: ``lensml <verb> <pipeline>`` commands found only as unwired functions (see below).
UNWIRED: set[str] = set()


def _unwired_command(path: str, name: str) -> object:
    """``lensml.commands.<name>.<verb>`` as a command when the module exists but is not yet
    listed in ``lensml.cli.PIPELINES`` (its options are then still checked; the test warns)."""
    import importlib

    import typer

    verb = path.removeprefix("lensml ")
    if (
        verb not in ("train", "evaluate", "predict")
        or importlib.util.find_spec(f"lensml.commands.{name}") is None
    ):
        return None
    func = getattr(importlib.import_module(f"lensml.commands.{name}"), verb, None)
    if func is None:
        return None
    single = typer.Typer()
    single.command(name)(func)
    UNWIRED.add(f"lensml {verb} {name}")
    return typer.main.get_command(single)


def test_reference_pages_are_current(tmp_path):
    from lensml.docs_reference import generate

    written = generate(tmp_path, ROOT / "benchmarks")
    committed = sorted(p.name for p in (DOCS / "reference").glob("*.md"))
    assert committed == sorted(p.name for p in written), f"rerun `{REGENERATE}`"
    for new in written:
        old = (DOCS / "reference" / new.name).read_text(encoding="utf-8")
        fresh = new.read_text(encoding="utf-8")
        if old != fresh:
            diff = "".join(
                list(
                    difflib.unified_diff(
                        old.splitlines(True), fresh.splitlines(True), "committed", "generated"
                    )
                )[:40]
            )
            pytest.fail(f"docs/reference/{new.name} is out of date; rerun `{REGENERATE}`:\n{diff}")


def test_mkdocs_builds_strict_offline(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (the `test` extra has it: pip install -e .[test])")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(site)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 12
    remote = re.compile(r"<(?:script|img)[^>]+src=\"https?://|<link[^>]+href=\"https?://")
    for page in pages:
        hit = remote.search(page.read_text(encoding="utf-8"))
        assert hit is None, f"{page.relative_to(site)} loads a remote asset: {hit.group(0)}"


def test_every_tutorial_has_each_step():
    for name in ("clusters", "sersic", "shear", "strong", "strong-pixelated"):
        text = (DOCS / "tutorials" / f"{name}.md").read_text(encoding="utf-8")
        commands = [" ".join(seg) for ln in _shell_commands(text) for seg in _segments(ln)]
        assert any(c.startswith(f"lensml simulate {name}") for c in commands), name
        assert "FITS" in text, name


def test_documented_commands_parse():
    from lensml.commands.common import load_registries
    from lensml.registry import GENERATORS

    load_registries()
    commands = _lensml_commands()
    assert len(commands) >= 30, "the tutorials show the commands they use"
    problems = []
    for where, args in commands:
        problem = _parse(args)
        if problem is None and args[1:2] == ["simulate"]:
            gen = next((a for a in args[2:] if not a.startswith("-")), None)
            if gen is not None and gen not in GENERATORS:
                problem = f"generator {gen!r} is not registered ({', '.join(GENERATORS)})"
        if problem:
            problems.append(f"{where}\n    -> {problem}")
    assert not problems, "documented commands that do not parse:\n" + "\n".join(problems)
    if UNWIRED:
        warnings.warn(
            "documented commands whose functions exist in lensml.commands but are not listed "
            f"in lensml.cli.PIPELINES yet: {sorted(UNWIRED)}",
            stacklevel=1,
        )


def test_documented_scripts_exist():
    for page in _doc_pages():
        for line in _shell_commands(page.read_text(encoding="utf-8")):
            for seg in _segments(line):
                if seg[0] == "python" and len(seg) > 1 and seg[1].endswith(".py"):
                    assert (ROOT / seg[1]).is_file(), f"{page.name}: {seg[1]} does not exist"


def test_command_extraction_handles_shell_syntax():
    text = (
        "```bash\nlensml simulate toy --n 4 \\\n  --out d  # comment\n"
        "A=1 && lensml info > x.txt\n```\n"
    )
    lines = _shell_commands(text)
    assert lines == ["lensml simulate toy --n 4 --out d  # comment", "A=1 && lensml info > x.txt"]
    assert _segments(lines[0]) == [["lensml", "simulate", "toy", "--n", "4", "--out", "d"]]
    assert _segments(lines[1]) == [["A=1"], ["lensml", "info"]]
    assert _parse(["lensml", "simulate", "toy", "--n", "4"]) is None
    assert "No such option" in (_parse(["lensml", "simulate", "toy", "--bogus"]) or "")
    assert "no command" in (_parse(["lensml", "train", "nonexistent"]) or "")
    assert "No such option" in (_parse(["lensml", "predict", "sersic", "a.fits", "--bogus"]) or "")
    assert _parse(["lensml", "train", "clusters", "--help"]) is None
    assert _parse(["lensml", "info"]) is None
    assert shlex.split("a 'b c'") == ["a", "b c"]


def test_yaml_defaults_read_back_as_the_effective_config():
    import yaml
    from pydantic import BaseModel

    from lensml.commands.common import load_registries
    from lensml.docs_reference.config_page import _yaml_flow
    from lensml.registry import GENERATORS
    from lensml.sims.base import validate_config
    from lensml.train.config import TrainConfig

    load_registries()
    models: list[BaseModel] = [TrainConfig()]
    models += [validate_config(GENERATORS.get(n)(), None) for n in GENERATORS.names()]
    for cfg in models:
        plain = cfg.model_dump(mode="json")
        for name in type(cfg).model_fields:
            text = _yaml_flow(getattr(cfg, name))
            assert yaml.safe_load(text) == plain[name], (type(cfg).__name__, name, text)
    assert _yaml_flow(1e-8) == "1.0e-08" and _yaml_flow("32") == "'32'"


def test_benchmark_page_renders_any_result_and_names_bad_files(tmp_path):
    from lensml.docs_reference import render_benchmarks

    bench = tmp_path / "benchmarks"
    (bench / "results").mkdir(parents=True)
    (bench / "bench_widgets.py").write_text(
        '"""Widgets per second.\n\nUsage::\n\n    python benchmarks/bench_widgets.py [--n 10]\n'
        '        [--out benchmarks/results/widgets.json]\n"""\n'
    )
    result = {
        "date": "2026-01-01",
        "machine": {"cpu_count": 2, "torch": "2.13.0+cpu"},
        "target": 5000.0,
        "rows": [{"case": "a|b", "rate": 12345.6}, {"case": "c", "rate": 0.5}],
    }
    (bench / "results" / "widgets.json").write_text(json.dumps(result))
    page = render_benchmarks(bench)
    assert "## `widgets`" in page and "2 CPU cores" in page
    assert (
        "python benchmarks/bench_widgets.py [--n 10] [--out benchmarks/results/widgets.json]"
        in page
    )
    assert "| a\\|b | 12,346 |" in page and "| `target` | 5,000 |" in page
    (bench / "results" / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        render_benchmarks(bench)
    with pytest.raises(ValueError, match="not a directory"):
        render_benchmarks(tmp_path / "nowhere")


def test_field_docs_come_from_numpy_attribute_sections():
    from lensml.docs_reference.markdown import attribute_docs, md
    from lensml.train.config import TrainConfig

    docs = attribute_docs(TrainConfig.__doc__)
    assert docs["max_epochs"].startswith("Upper bound on training epochs")
    assert "Lightning" in docs["devices"] and docs["devices"] == docs["num_nodes"]
    assert md("see :func:`~lensml.train.fit` and ``x = 1``") == "see `fit` and `x = 1`"
