"""Which output feeds a stage: the one resolution rule behind the runner's defaults and every ``--from``.

An input is either named (``--from``: an output directory or a fingerprint prefix) or the most recently
used complete output of the producing stages that fits (params given by the caller, and the same
upstream as the stage's other inputs). Failed, interrupted and corrupt outputs are never chosen, and
an output whose files are missing or truncated is refused with the path to repair.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.errors import SkelError, shell
from pipeline.integrity import output_problems
from pipeline.stage import Stage
from pipeline.workdir import MANIFEST, Output, load_output, newest_complete, output_dir, outputs

log = logging.getLogger("skel")


@dataclass(frozen=True)
class Upstream:
    """An input of a stage: the producing stage, its fingerprint and its output directory."""

    stage: str
    fingerprint: str
    path: Path

    @classmethod
    def of(cls, out: Output) -> Upstream:
        return cls(out.stage, out.fingerprint, out.path)


def _named(workdir: Path, stages: tuple[str, ...], ref: str, where: dict | None = None) -> Output:
    """The output ``ref`` names; it must be of one of ``stages``, of this workdir (an output records its
    inputs by fingerprint, so one of another workdir could never be found again by what reads it), complete,
    and of the ``where`` params (``--limb`` and a joint render's fingerprint contradict each other)."""
    path = Path(ref)
    found = load_output(path) if path.is_dir() else None
    if found is None and path.is_dir() and path.resolve().parent.name in stages:  # "0 outputs match" would hide it
        raise SkelError(f"{path}: no {MANIFEST}: not a stage output, or one whose manifest was lost")
    if found is None:
        matches = [o for o in outputs(workdir, stages) if o.fingerprint.startswith(ref)]
        if len(matches) != 1:
            raise SkelError(f"{workdir}: {len(matches)} {' or '.join(stages)} outputs match {ref!r}")
        found = matches[0]
    if found.stage not in stages:
        raise SkelError(f"{found.path}: a {found.stage} output, expected {' or '.join(stages)}")
    # as the workdir spells it (not a symlink to it, or a path from inside it): its inputs are found from there; an
    # output the workdir holds as a link (moved to other storage and linked back) is the workdir's
    held = [hop for hop in _hops(found.path) if hop.parent.name == found.stage]  # stage/<dir> along its links
    ours = next((hop for hop in held if hop.parent.parent.resolve() == workdir.resolve()), None)
    if ours is None:
        home = (held[0] if held else found.path.resolve()).parent.parent
        raise SkelError(f"{found.path}: an output of workdir {home}, not of {workdir}: run with -w {home}")
    found = replace(found, path=output_dir(workdir, found.stage, ours.name))
    if found.state == "running":
        raise SkelError(f"{found.path}: {found.stage} output still being written by another run: wait for it")
    if not found.complete:
        # its own command may now pick other inputs (the newest), so the advice names the repair, which keeps its own
        failures = found.manifest.get("failures") or {}
        how = (f"`skel verify --repair -w {shell(workdir)} {found.fingerprint[:8]}` finishes it with its own inputs"
               if found.state != "failed" or found.failed_for_machine else
               f"it failed: {next(iter(failures.values()))}" if failures else
               "its samples failed: see its errors.parquet")
        raise SkelError(f"{found.path}: {found.state} {found.stage} output cannot be an input ({how})")
    params = found.manifest.get("params", {})
    wrong = {k: v for k, v in (where or {}).items() if params.get(k) != v}
    if wrong:
        has, asked = (", ".join(f"{k} {v}" for k, v in pairs) for pairs in
                      ([(k, params.get(k)) for k in wrong], wrong.items()))
        raise SkelError(f"{found.path}: a {found.stage} output with {has}, where {asked} is asked for")
    return found


def _hops(path: Path) -> list[Path]:
    """``path`` and each path its links lead to (absolute, not resolved), the real path last: an output held
    through a link in a workdir (moved to other storage), a link elsewhere to a workdir's output, or both."""
    hops = [Path(os.path.abspath(path))]
    while hops[-1].is_symlink() and len(hops) < 40:  # the kernel's own limit of links followed
        hops.append(Path(os.path.abspath(hops[-1].parent / os.readlink(hops[-1]))))
    return [*hops, path.resolve()]


def find_output(
    workdir: Path,
    stages: tuple[str, ...],
    ref: str | None = None,
    *,
    where: dict | None = None,
    like: dict[str, Upstream] | None = None,
) -> Output:
    """The output of one of ``stages`` named by ``ref``, else the most recently used complete one whose
    params match ``where`` and whose inputs agree with ``like`` (input name -> upstream); checked for
    missing or truncated files either way."""
    if ref is not None:
        found = _named(workdir, stages, ref, where)
    else:
        found = newest_complete(workdir, stages, where, {name: up.fingerprint for name, up in (like or {}).items()})
        if found is not None:
            _say_newer_unfinished(workdir, stages, found)
        if found is None:
            wanted = " ".join(f"{k}={v}" for k, v in (where or {}).items())
            of = "".join(f" of {up.stage} {up.fingerprint[:8]}" for up in (like or {}).values())
            with_ = f" with {wanted}" if wanted else ""
            raise SkelError(f"no complete {' or '.join(stages)}{' ' + wanted if wanted else ''} output{of} in "
                            f"{workdir} (run `skel {stages[0]} -w {shell(workdir)}`{with_} first)")
    problems = output_problems(found)
    if problems:
        p = problems[0]
        raise SkelError(f"{found.path}: damaged ({len(problems)} file(s), e.g. {p.path} {p.what}); "
                        f"run `skel verify --repair -w {shell(workdir)}`")
    return found


def _say_newer_unfinished(workdir: Path, stages: tuple[str, ...], chosen: Output) -> None:
    """A run started after the chosen output and not finished (interrupted, failed, running) is likely the one the
    user meant: name it beside the one taken, which would otherwise go unsaid."""
    newer = [o for o in outputs(workdir, stages) if o.last_used > chosen.last_used and not o.complete]
    if newer:
        o = newer[-1]
        log.warning("%s %s, started after %s %s, is %s: using %s, the newest complete one (finish the other by running "
                    "its command again, or name one with --from)", o.stage, o.fingerprint[:8], chosen.stage,
                    chosen.fingerprint[:8], o.state, chosen.fingerprint[:8])


Given = Mapping[str, "Upstream | str | None"]  # input name -> an Upstream, a --from reference, or None (default)


def resolve_inputs(
    stage: Stage, workdir: Path, params: Any, given: Given | None = None, where: Mapping[str, dict] | None = None
) -> dict[str, Upstream]:
    """The inputs of ``stage`` for ``params``: an Upstream given is used as is, a string names an output
    (``--from``: a directory or fingerprint prefix) of the stages the stage declares for that input, and
    every other input the stage needs (``Stage.inputs_for``) defaults to the most recently used complete
    output that matches ``where[name]`` and agrees with the inputs resolved before it."""
    where = where or {}
    resolved: dict[str, Upstream] = {}
    for name, value in (given or {}).items():
        if isinstance(value, Upstream):
            resolved[name] = value
        elif value is not None:
            producers = stage.producers(name, params)
            resolved[name] = Upstream.of(find_output(workdir, producers, value, where=where.get(name)))
    for name, producers in stage.inputs_for(params).items():
        if name not in resolved:
            resolved[name] = Upstream.of(find_output(workdir, producers, where=where.get(name), like=resolved))
    stage.check_inputs(resolved, params)
    return resolved


def ancestors(outs: list[Path]) -> list[Output]:
    """The outputs at ``outs`` and every output they were made from, as their manifests record them, each
    loaded once (inputs after what reads them; a missing or unreadable manifest ends its line: the reader of
    it refuses it)."""
    found: dict[Path, Output | None] = {}
    todo = list(outs)
    while todo:
        out = todo.pop(0)
        if out in found:
            continue
        o = found[out] = load_output(out)
        if o is not None and not o.corrupt:
            todo += [output_dir(out.parent.parent, up["stage"], up["fingerprint"])
                     for up in o.manifest.get("inputs", {}).values() if isinstance(up, dict)]
    return [o for o in found.values() if o is not None]


def inputs_of(out: Path) -> dict[str, Path]:
    """The outputs ``out`` was made from (input name -> directory), as its manifest records them, found in
    its own workdir (and refused, like any input, when incomplete or damaged)."""
    found = load_output(out)
    if found is None or found.corrupt:
        raise SkelError(f"{out}: no readable manifest" + (f" ({found.corrupt})" if found else ""))
    workdir = out.parent.parent
    paths = {name: output_dir(workdir, up["stage"], up["fingerprint"])
             for name, up in found.manifest.get("inputs", {}).items()}
    for name, path in paths.items():
        if not path.is_dir():
            raise SkelError(f"{out}: its {name} input {path} is gone: run its stage again with the same parameters "
                            "(a cache miss rebuilds it with the same fingerprint)")
    return {name: find_output(workdir, (path.parent.name,), str(path)).path for name, path in paths.items()}
