"""Parameters from values written down (a recipe's TOML, a plan's JSON): each checked against its Params field's
type hint and coerced to what the field holds, so that a recipe, the CLI and a repair make the same parameters
(and fingerprints)."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any

from pipeline.errors import SkelError
from pipeline.stage import Stage

PATH = "path"  # a field's metadata key, true where the field names files (a path, or a tuple of paths or globs)


UNSET = ("none", "None", "null", "")  # a parameter that may be None, given as one of these where it takes no text


def _fits(value: Any, hint: Any) -> bool:
    """Whether a TOML value can be a parameter of this type hint (ints pass as floats, lists as tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            return False
        each = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis or origin is list else args
        return len(each) == len(value) and all(_fits(v, a) for v, a in zip(value, each, strict=True))
    if hint in (int, float):
        return isinstance(value, int | float if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, origin or hint) if isinstance(origin or hint, type) else True


def _coerce(value: Any, hint: Any) -> Any:
    """A value that ``_fits`` as the field holds it: lists as tuples, and an integer as a float where the field
    is a float, so that ``sigma = 1`` is the parameter (and the fingerprint) of ``sigma = 1.0`` and ``--sigma 1``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        fitting = [a for a in args if _fits(value, a)]
        return _coerce(value, fitting[0]) if fitting else value
    if origin in (tuple, list) and isinstance(value, list | tuple):
        each = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis or origin is list else args
        return tuple(_coerce(v, a) for v, a in zip(value, each, strict=True))
    if hint is float and type(value) is int:
        return float(value)
    return tuple(value) if isinstance(value, list) else value


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "").replace("NoneType", "None")


def make_params(stage: Stage, values: dict[str, Any], where: str) -> Any:
    """``stage.Params`` from recipe (TOML) or recorded (JSON) values, each checked against its field's type and
    coerced to it (`_coerce`); an unknown name or a misfit is one line that starts with ``where``."""
    fields = {f.name: f for f in dataclasses.fields(stage.Params)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SkelError(f"{where}: unknown parameter(s) {', '.join(unknown)} for stage {stage.name} "
                        f"(known: {', '.join(fields)})")
    hints = typing.get_type_hints(stage.Params)
    values = {name: None if value in UNSET and not _fits(value, hints[name]) and _fits(None, hints[name]) else value
              for name, value in values.items()}  # TOML has no null: `--set step.lr=none` resets a parameter
    for name, value in values.items():
        if not _fits(value, hints[name]):
            raise SkelError(f"{where}: parameter {name} = {value!r} should be {_type_name(hints[name])}")
    missing = [n for n, f in fields.items() if f.init and n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SkelError(f"{where}: needs {', '.join(f'{n} = ...' for n in missing)} (stage {stage.name} has no "
                        "default for it)")
    coerced = {k: _coerce(v, hints[k]) for k, v in values.items()}
    try:
        return stage.Params(**coerced)
    except (TypeError, ValueError) as exc:
        raise SkelError(f"{where}: {exc}") from None


def _absolute(value: str) -> str:
    """``~`` too, which a shell leaves as it is after ``=`` (``--set import.source=~/mine.pkl``)."""
    return str(Path(os.path.expanduser(value)).absolute())


def absolute_paths(params: Any) -> Any:
    """``params`` with its path fields (``PATH`` in their metadata) absolute, against the current directory: one rule
    for the CLI and recipes, so that a plan, and the repair of its output from another directory or a Dask worker
    elsewhere, names the files the run was given. Not resolved (symlinks and ``..`` stay), so that a path the CLI
    made absolute before this rule keeps its spelling, and extract, which hashes its videos' paths, its fingerprint."""
    paths = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if f.metadata.get(PATH) and value:
            paths[f.name] = tuple(map(_absolute, value)) if isinstance(value, tuple) else _absolute(value)
    return dataclasses.replace(params, **paths) if paths else params
