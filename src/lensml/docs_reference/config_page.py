"""The YAML reference page: the fields of ``TrainConfig`` and of every generator's ``Config``."""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from lensml.docs_reference.markdown import GENERATED_NOTE, attribute_docs, intro, md, number, table

__all__ = ["render_config"]


def _is_model(tp: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is typing.Literal:
        return "str" if all(isinstance(a, str) for a in args) else "literal"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (tuple, list, Sequence):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"list [{inner}]" if inner else "list"
    if origin in (dict, Mapping):
        return "mapping"
    if _is_model(tp):
        return "mapping (table below)"
    return getattr(tp, "__name__", str(tp)).replace("PosixPath", "path").replace("Path", "path")


def _allowed(field: Any) -> str:
    tp = field.annotation
    parts: list[str] = []
    for a in (tp, *typing.get_args(tp)):
        if typing.get_origin(a) is typing.Literal:
            parts.append("one of " + ", ".join(f"`{x}`" for x in typing.get_args(a)))
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥",
               "max_length": "length ≤", "multiple_of": "multiple of"}  # fmt: skip
    for meta in field.metadata:
        for attr, sym in symbols.items():
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sym} {number(value)}")
    return ", ".join(parts)


def _yaml_float(v: float) -> str:
    """A float as YAML 1.1 reads it back (``1.0e-08``, ``1.5e+12``: a dot and a signed
    exponent), plain ``repr`` between 1e-3 and 1e6."""
    if v != v or v in (float("inf"), float("-inf")):
        return {True: ".nan"}.get(v != v, ".inf" if v > 0 else "-.inf")
    if v == 0 or 1e-3 <= abs(v) < 1e6:
        return repr(v)
    mantissa, exponent = f"{v:.6e}".split("e")
    mantissa = mantissa.rstrip("0")
    return (
        f"{mantissa}0e{int(exponent):+03d}"
        if mantissa.endswith(".")
        else (f"{mantissa}e{int(exponent):+03d}")
    )


def _yaml_flow(value: Any) -> str:
    """A default value in YAML flow style (what a user writes in the config file)."""
    import yaml

    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _yaml_float(value)
    if hasattr(value, "model_dump"):
        return _yaml_flow(value.model_dump(mode="python"))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml_flow(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_yaml_flow(v)}" for k, v in value.items()) + "}"
    text = yaml.safe_dump(str(value), default_flow_style=True, width=10_000, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


def _yaml_value(value: Any) -> str:
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return "(table below)"
    if type(value).__name__ == "PydanticUndefinedType":
        return "required"
    return f"`{_yaml_flow(value)}`"


def _model_tables(model: type, values: Any, path: str, title: str, lines: list[str]) -> None:
    """A heading, the model's docstring and one row per field; nested models recurse.

    ``values`` is the effective default instance (a generator's ``Config`` validated from an
    empty mapping, so presets such as ``variant`` are applied: what ``--dump-config`` prints),
    or None to show the fields' own defaults.
    """
    lines += [f"{title}", ""]
    text = intro(model.__doc__)
    if text:
        lines += [text, ""]
    docs = attribute_docs(model.__doc__)
    rows, nested = [], []
    for name, field in model.model_fields.items():
        sub = [a for a in (field.annotation, *typing.get_args(field.annotation)) if _is_model(a)]
        default = (getattr(values, name) if values is not None
                   else field.get_default(call_default_factory=True))  # fmt: skip
        if sub:
            nested.append((name, sub[0], default if isinstance(default, sub[0]) else None))
        doc = field.description or docs.get(name, "") or (intro(sub[0].__doc__) if sub else "")
        doc = doc.split("\n\n")[0]
        rows.append((f"`{name}`", _type_name(field.annotation), _yaml_value(default),
                     _allowed(field), doc))  # fmt: skip
    lines += table(["field", "type", "default", "allowed", "description"], rows)
    level = "#" * (title.count("#", 0, title.index(" ")) + 1)
    for name, sub, sub_values in nested:
        dotted = f"{path}.{name}" if path else name
        _model_tables(sub, sub_values, dotted, f"{level} `{dotted}` ({sub.__name__})", lines)


def render_config() -> str:
    """Markdown YAML reference: ``TrainConfig`` and every registered generator's ``Config``."""
    from lensml.commands.common import load_registries

    load_registries()
    from lensml.registry import GENERATORS
    from lensml.sims.base import validate_config
    from lensml.train.config import TrainConfig

    lines = [GENERATED_NOTE, "", "# YAML configuration reference", ""]
    lines += [
        "Every configurable part of lensml reads a YAML mapping validated by a pydantic model: "
        "unknown keys are errors (a typo is reported with the field path), every field has a "
        "default, and `--dump-config` prints the effective configuration as YAML. Nested "
        "fields are written as nested mappings (`optimizer: {lr: 1.0e-3}`).",
        "",
        "## Training: `lensml train ... --config train.yaml`",
        "",
    ]
    module_doc = sys.modules[TrainConfig.__module__].__doc__
    lines += [md(inspect.cleandoc(module_doc or "")), ""]
    _model_tables(TrainConfig, TrainConfig(), "", "### `TrainConfig` (top level)", lines)
    # lensml's own generators only (tests and plugins may register others at run time)
    names = [n for n in GENERATORS.names() if GENERATORS.get(n).__module__.startswith("lensml.")]
    lines += [
        "## Generators: `lensml simulate NAME --config NAME.yaml`",
        "",
        "Registered generators: " + ", ".join(f"`{n}`" for n in names) + ".",
        "",
    ]
    for name in names:
        gen = GENERATORS.get(name)
        summary = intro(sys.modules[gen.__module__].__doc__).split("\n\n")[0]
        lines += [f"### `{name}`", "", " ".join(summary.split()), "",
                  "Defaults are the effective ones (presets applied), as YAML: "
                  f"`lensml simulate {name} --dump-config`.", ""]  # fmt: skip
        values = validate_config(gen(), None)
        _model_tables(gen.Config, values, "", f"#### `{name}` config", lines)
    return "\n".join(lines).rstrip() + "\n"
