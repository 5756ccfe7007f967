"""Fingerprints: what a stage output depends on, hashed before the stage runs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

FP_LEN = 16  # hex characters kept in directory names


UNLESS_DEFAULT = "unless-default"  # a field's ``fingerprint`` metadata: hashed only when it is not its default


def field_default(f: dataclasses.Field) -> object:
    """The default of a dataclass field (its factory's value where it has one)."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def param_default(params: type, name: str) -> Any:
    """The default of field ``name`` of a Params dataclass (the one place a default is written)."""
    return field_default(next(f for f in dataclasses.fields(params) if f.name == name))


def fingerprint_params(params: object) -> dict:
    """The parameters that change a stage's output: dataclass fields not marked ``fingerprint=False``.

    A field marked ``fingerprint="unless-default"`` is left out while it has its default value, so that
    adding an option whose default keeps the old behaviour keeps every existing output's fingerprint.
    """
    out = {}
    for f in dataclasses.fields(params):  # type: ignore[arg-type]
        rule, value = f.metadata.get("fingerprint", True), getattr(params, f.name)
        if rule is False or (rule == UNLESS_DEFAULT and value == field_default(f)):
            continue
        out[f.name] = value
    return out


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(stage: str, version: str, params: dict, inputs: dict[str, str], extra: dict) -> str:
    """sha256 over the stage name, its version, parameters, input fingerprints and external digests."""
    payload = canonical_json(
        {"stage": stage, "version": version, "params": params, "inputs": inputs, "extra": extra}
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:FP_LEN]

