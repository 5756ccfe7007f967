"""The stage contract: typed parameters, named upstream inputs, shards of work, a driver-side finalize.

A stage is a pure function of (params, declared inputs, version). The runner (pipeline.runner) computes
its fingerprint, skips committed shards, runs the rest on Dask (or in order, in the driver, for
``sequential`` stages such as training epochs) and records everything in ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pipeline.errors import SkelError


@dataclass(frozen=True)
class Shard:
    """One unit of parallel work. ``payload`` must be small and picklable (ids, paths, ranges): it is what the
    work is (a committed record counts only for the same payload). ``hint`` may make the work cheaper without
    changing its result (e.g. where the same work was done before) and is not part of what it is."""

    id: str
    payload: Any = None
    hint: Any = None


def split_shards(items: list | int, size: int) -> list[Shard]:
    """Consecutive groups of ``size`` items, ids ``00000``, ``00001``, ...: each shard's payload is its slice
    of ``items``, or, when ``items`` is a count, its (start, stop) index range."""
    n = items if isinstance(items, int) else len(items)
    return [Shard(f"{i // size:05d}", (i, min(i + size, n)) if isinstance(items, int) else items[i : i + size])
            for i in range(0, n, size)]


@dataclass(frozen=True)
class Context:
    """Everything a shard may read: its output directory, parameters and upstream output directories."""

    workdir: Path
    out: Path
    params: Any
    inputs: dict[str, Path] = field(default_factory=dict)
    fingerprint: str = ""
    quiet: bool = False  # the user asked for no progress bars (--quiet)
    run: str = ""  # the run's token in the output's lock: a shard commits only while its run holds the lock
    external: dict = field(default_factory=dict)  # ``Stage.external`` as planned: the digests the fingerprint holds
    code: str = ""  # the command's ``pipeline.code.code_digest``: a shard run by other code is refused


class Stage:
    """Base class. Subclasses set the class variables and implement ``shards`` and ``run_shard``."""

    name: ClassVar[str]
    version: ClassVar[str]  # bump when the output's meaning changes
    Params: ClassVar[type]
    # input name -> stage names whose outputs can feed it (the newest complete one is the default)
    inputs: ClassVar[dict[str, tuple[str, ...]]] = {}
    optional_inputs: ClassVar[dict[str, tuple[str, ...]]] = {}  # the same, for inputs only a recipe names
    sequential: ClassVar[bool] = False  # run shards in order, in the driver process
    shard_noun: ClassVar[str] = "shards"  # what a shard is to the user, in log lines

    def inputs_for(self, params: Any) -> dict[str, tuple[str, ...]]:
        """The inputs these parameters need: ``inputs``, plus any that only some parameters use."""
        return dict(self.inputs)

    def producers(self, name: str, params: Any) -> tuple[str, ...]:
        """The stages whose outputs can feed input ``name`` (e.g. one named with ``--from``)."""
        needed, optional = self.inputs_for(params), self.optional_inputs
        if name not in needed | optional:
            also = f"; optional: {', '.join(optional)}" if optional else ""
            raise SkelError(f"stage {self.name} has no input {name!r} (inputs: {', '.join(needed) or 'none'}{also})")
        return (needed | optional)[name]

    def check_inputs(self, names: Collection[str], params: Any, described: Mapping[str, dict] | None = None) -> None:
        """Checks of the inputs given together with ``params`` (how many, for a stage that takes any number of
        them), before anything of the output exists; ``described``: what a recipe knows of the inputs' outputs
        before they exist (``describes``); raise SkelError."""

    def describes(self, params: Any, described: Mapping[str, dict]) -> dict:
        """What an output of ``params`` is, as the recipe steps after it may check before anything runs (a render:
        its heatmaps' kind), given its inputs' descriptions; {}: nothing."""
        return {}

    def check_data(self, inputs: Mapping[str, Path], params: Any) -> None:
        """Checks of what the inputs hold (a split that has samples), run once they are found complete and
        intact, before anything of the output exists; raise SkelError."""

    def named_splits(self, params: Any) -> dict[str, str]:
        """The split names ``params`` choose samples by (parameter -> name; none: every sample). A recipe checks them
        against the samples upstream as soon as those exist (``splits``), not when this step starts."""
        return {}

    def splits(self, out: Path) -> set[str] | None:
        """The split names the labelled samples of a complete output of this stage hold; None: its outputs hold no
        samples."""
        return None

    def external(self, params: Any) -> dict:
        """Digests of files outside the workdir that the output depends on (e.g. an imported pickle)."""
        return {}

    def check(self, params: Any) -> None:
        """Checks of ``params`` too heavy for the Params class (they import torch, say), run for every step of a
        plan before any step runs; raise ValueError. Planning itself stays light."""

    def shards(self, ctx: Context) -> list[Shard]:
        raise NotImplementedError

    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        """Do one shard's work, write its outputs atomically, return a small JSON-able record."""
        raise NotImplementedError

    def finalize(self, ctx: Context, records: dict[str, dict]) -> dict:
        """Driver only: write indexes/tables from the shard records; return a summary for the manifest."""
        return {}


def check_params(stage: Stage, params: Any) -> None:
    """What every stage's parameters must be, then the stage's own ``check``: a NaN or infinite number passes
    every range test (``nan < 0`` is false) and would reach the work, so it is refused here."""
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        items = value if isinstance(value, tuple | list) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            raise ValueError(f"{f.name} must be a finite number, got {value}")
    stage.check(params)
