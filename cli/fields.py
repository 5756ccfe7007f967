"""Command-line options of a stage's frozen Params dataclass: each option's type and default are read from
its field (the one place they are written); the command adds only the flags, the help text and the panel."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from pipeline.fingerprint import param_default

FIELD: Any = object()  # "as the Params field has it"


@dataclass(frozen=True)
class Opt:
    """One option: ``name`` is the keyword the command receives, a Params field unless ``type`` and ``default``
    are given; ``decls`` are its flags when they are not ``--<name>``; ``extra`` more typer.Option arguments."""

    name: str
    help: str
    panel: str
    decls: tuple[str, ...] = ()
    type: Any = FIELD
    default: Any = FIELD
    extra: dict = field(default_factory=dict)


def parameters(params: type, opts: list[Opt]) -> list[inspect.Parameter]:
    """The keyword parameters (typer options) of ``opts``, in order; types and defaults of ``params``' fields."""
    hints = typing.get_type_hints(params)
    out = []
    for o in opts:
        kind = hints[o.name] if o.type is FIELD else o.type
        value = param_default(params, o.name) if o.default is FIELD else o.default
        option = typer.Option(*o.decls, help=o.help, rich_help_panel=o.panel, **o.extra)
        out.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=value,
                                     annotation=Annotated[kind, option]))
    return out


def field_values(params: type, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are fields of ``params`` (the options given as they are)."""
    names = {f.name for f in dataclasses.fields(params)}
    return {k: v for k, v in values.items() if k in names}
