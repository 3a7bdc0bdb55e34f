"""The CLI reference page: every command of the ``lensml`` typer app with its parameters.

Built from the command objects (names, options, defaults, help) and the Python type hints of
the command functions, not from click's help formatter, so the page does not depend on how a
typer / click version renders help.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from lensml.docs_reference.markdown import GENERATED_NOTE, anchor, md, table

__all__ = ["render_cli"]


def _is_argument(p: Any) -> bool:
    return getattr(p, "param_type_name", "") == "argument"


def _hint_name(tp: Any) -> str:
    """A CLI parameter's Python type (``Annotated`` and ``None`` stripped) as a short name."""
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else tp
    if typing.get_origin(tp) in (list, tuple, Sequence):
        return _hint_name(typing.get_args(tp)[0]) + "[]"
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    return {"Path": "path", "PosixPath": "path"}.get(getattr(tp, "__name__", ""), None) or (
        getattr(tp, "__name__", str(tp))
    )


def _param_type(p: Any, hints: Mapping[str, Any]) -> str:
    kind = _hint_name(hints[p.name]) if p.name in hints else "str"
    if kind == "bool":
        return "flag"
    if kind.endswith("[]"):
        return kind[:-2] + (", one or more" if _is_argument(p) else ", repeatable")
    return kind


def _param_default(p: Any, hints: Mapping[str, Any]) -> str:
    if _is_argument(p) and p.required:
        return "required"
    d = p.default
    if isinstance(d, bool):
        if p.secondary_opts:
            return f"`{p.opts[0] if d else p.secondary_opts[0]}`"
        return "on" if d else "off"
    if d is None or d == () or d == []:
        return "—"
    if isinstance(d, list | tuple):
        return ", ".join(f"`{x}`" for x in d)
    return f"`{d}`"


def _metavar(p: Any) -> str:
    return (p.metavar or p.name or "").upper()


def _param_name(p: Any) -> str:
    if _is_argument(p):
        return f"`{_metavar(p)}`"
    return " / ".join(f"`{o}`" for o in (*p.opts, *p.secondary_opts))


def _usage(cmd: Any, params: Sequence[Any]) -> str:
    """``[OPTIONS] ARG [OPT_ARG] MANY...`` (built here, independent of click's formatter)."""
    pieces = ["[OPTIONS]"] if any(not _is_argument(p) for p in params) else []
    for p in params:
        if _is_argument(p):
            name = _metavar(p) + ("..." if p.nargs == -1 else "")
            pieces.append(name if p.required else f"[{name}]")
    if hasattr(cmd, "list_commands"):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def _command_doc(cmd: Any, ctx: Any, lines: list[str]) -> None:
    lines += [f"## `{ctx.command_path}`", ""]
    params = [p for p in cmd.get_params(ctx) if p.name != "help" and not getattr(p, "hidden", 0)]
    lines += [f"Usage: `{ctx.command_path} {_usage(cmd, params)}`".replace(" `", "`"), ""]
    if cmd.help:
        lines += [md(inspect.cleandoc(cmd.help)), ""]
    func = inspect.unwrap(cmd.callback) if cmd.callback else None
    hints = typing.get_type_hints(func, include_extras=True) if func else {}
    if params:
        rows = [(_param_name(p), _param_type(p, hints), _param_default(p, hints),
                 getattr(p, "help", None) or "") for p in params]  # fmt: skip
        lines += table(["argument / option", "type", "default", "description"], rows)
    if hasattr(cmd, "list_commands"):
        subs = [(n, cmd.get_command(ctx, n)) for n in cmd.list_commands(ctx)]
        subs = [(n, c) for n, c in subs if c is not None and not getattr(c, "hidden", False)]
        rows = [(f"[`{ctx.command_path} {n}`](#{anchor(ctx.command_path + ' ' + n)})",
                 _short_help(c)) for n, c in subs]  # fmt: skip
        lines += table(["command", "what it does"], rows)
        for name, sub in subs:
            _command_doc(sub, sub.context_class(sub, info_name=name, parent=ctx), lines)


def _short_help(cmd: Any) -> str:
    """The first sentence of a command's help (its first paragraph, up to the first '. ')."""
    text = " ".join((cmd.short_help or inspect.cleandoc(cmd.help or "")).split("\n\n")[0].split())
    head, dot, _ = text.partition(". ")
    return head + ("." if dot else "")


def render_cli(app: Any = None) -> str:
    """Markdown reference of every ``lensml`` command, generated from the typer app.

    Parameters
    ----------
    app : typer.Typer, optional
        The application (default :data:`lensml.cli.app`).
    """
    import typer

    if app is None:
        from lensml.cli import app
    root = typer.main.get_command(app)
    lines = [GENERATED_NOTE, "", "# CLI reference", ""]
    lines += [
        "Every command of `lensml`, generated from the code. Each command also explains itself "
        "with `--help`, prints its effective options with `--dump-config` and, on bad input, "
        "exits with status 1 and one `error:` line.",
        "",
    ]
    _command_doc(root, root.context_class(root, info_name="lensml"), lines)
    return "\n".join(lines).rstrip() + "\n"
