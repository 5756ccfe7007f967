"""Workflows: TOML recipes that chain stages with their parameters (like pyskl's configs, as data).

A recipe::

    [workflow]
    name = "penn_action"
    [vars]                      # ${NAME} in strings; the environment wins over these defaults
    SKEL_SHARED = "../../shared"  # a value starting with . is a path relative to the recipe file
    [[step]]
    id = "import"
    stage = "import"
    source = "${SKEL_SHARED}/data/penn_action/penn_action_coco17.pkl"
    [[step]]
    id = "render_joint"
    stage = "render"
    inputs = { triplets = "import" }
    kind = "joint"

Every step is parsed into its stage's frozen Params dataclass up front, so a typo fails before any
work starts. Planning chains fingerprints through the steps: a ``--set`` on one step changes its
fingerprint and therefore those of the steps that depend on it, and nothing else.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from pipeline.cluster import Cluster
from pipeline.errors import SkelError
from pipeline.runner import Plan, Upstream, hit_output, make_plan, run_plan
from pipeline.stage import Stage, check_params
from pipeline.together import run_together
from pipeline.values import make_params
from pipeline.workdir import SHARDS, load_output

RESERVED = {"id", "stage", "inputs"}
WORKFLOW_KEYS = ("name", "workdir", "side_by_side")


@dataclass(frozen=True)
class Step:
    id: str
    stage: Stage
    params: Any
    inputs: dict[str, str]  # input name -> id of an earlier step


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    steps: list[Step]
    workdir: str | None = None
    side_by_side: int = 1  # trainings run at once by default (``skel run --side-by-side`` overrides)


def _parse_value(text: str) -> Any:
    """A --set value: TOML syntax when it parses (1.0, true, [2, 3]), else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _substitute(value: Any, variables: dict[str, str]) -> Any:
    """``${NAME}`` (or ``$NAME``; ``$$`` is a literal ``$``) in strings and lists of strings."""
    if isinstance(value, str):
        try:
            return Template(value).substitute(variables)
        except KeyError as exc:
            raise SkelError(f"undefined variable ${{{exc.args[0]}}} (define it in [vars]; the environment sets only "
                            "names [vars] defines, and SKEL_*)") from None
        except ValueError:
            raise SkelError(f"{value!r}: a $ that starts no ${{NAME}} (write $$ for a literal $)") from None
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    return value


def _expand_vars(variables: dict[str, str], literal: set[str]) -> dict[str, str]:
    """[vars] values that name other variables (``PKL = "${DATA}/x.pkl"``) expanded; the ``literal`` ones (set
    in the environment or by the caller) are taken as they are."""
    done = {k: v for k, v in variables.items() if k in literal}

    def expand(name: str, chain: tuple[str, ...]) -> str:
        if name in done:
            return done[name]
        if name in chain:
            raise SkelError(f"[vars] refer to each other in a cycle: {' -> '.join((*chain, name))}")
        value = variables[name]
        refs = {ref: expand(ref, (*chain, name)) for ref in Template(value).get_identifiers() if ref in variables}
        try:
            done[name] = _substitute(value, refs)
        except SkelError as exc:
            raise SkelError(f"[vars] {name}: {exc}") from None
        return done[name]

    return {name: expand(name, ()) for name in variables}


def _shape(doc: dict) -> list[dict]:
    """Check the recipe's layout (tables where tables belong, string ids, stages and input references) and
    return its [[step]] tables, so that a malformed recipe is one line naming what is wrong."""
    unknown = sorted(set(doc) - {"workflow", "vars", "step"})
    if unknown:
        raise SkelError(f"unknown table or key(s) {', '.join(unknown)} (a recipe has [workflow], [vars] "
                        "and [[step]])")
    for key in ("workflow", "vars"):
        if not isinstance(doc.get(key, {}), dict):
            raise SkelError(f"{key} must be a [{key}] table, got {_toml_type(doc[key])}")
    wf = doc.get("workflow", {})
    unknown = sorted(set(wf) - set(WORKFLOW_KEYS))
    if unknown:
        raise SkelError(f"unknown key(s) {', '.join('workflow.' + k for k in unknown)} (known: "
                        f"{', '.join(WORKFLOW_KEYS)})")
    for key in ("name", "workdir"):
        if not isinstance(wf.get(key, ""), str):
            raise SkelError(f"workflow.{key} must be a string, got {_toml_type(wf[key])}")
    side = wf.get("side_by_side", Recipe.side_by_side)
    if type(side) is not int or side < 1:
        raise SkelError(f"workflow.side_by_side must be an integer >= 1, got {_toml_type(side)}")
    steps = doc.get("step", [])
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        got = _toml_type(steps) if not isinstance(steps, list) else "an array holding a non-table"
        raise SkelError(f"step must be an array of tables ([[step]] sections), got {got}")
    if not steps:
        raise SkelError("no [[step]] tables")
    for i, step in enumerate(steps, 1):
        where = f"[[step]] #{i}"
        for key in ("id", "stage"):
            if not isinstance(step.get(key), str) or not step[key]:
                raise SkelError(f"{where}: needs {key} = \"...\" (a string), got {_toml_type(step.get(key))}")
        inputs = step.get("inputs", {})
        if not isinstance(inputs, dict) or not all(isinstance(v, str) for v in inputs.values()):
            raise SkelError(f"{where} ({step['id']}): inputs must be a table of step ids, e.g. "
                            f"{{ volumes = \"render\" }}, got {inputs!r}")
    return steps


def _toml_type(value: Any) -> str:
    """How a TOML value reads in an error: its kind, and a scalar's value (``a string ('import')``)."""
    if value is None:
        return "nothing"
    if isinstance(value, dict | list):
        return "a table" if isinstance(value, dict) else "an array"
    kinds = {str: "a string", int: "an integer", float: "a float", bool: "a boolean"}
    return f"{kinds.get(type(value), type(value).__name__)} ({value!r})"


def load_recipe(
    path: Path,
    registry: Callable[[str], Stage],
    overrides: list[str] = (),
    given: dict[str, str] | None = None,
) -> Recipe:
    """Parse and validate a recipe; ``overrides`` are ``step.param=value`` strings, ``given`` variables win
    over the environment, which wins over the recipe's [vars]."""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not TOML
        raise SkelError(f"{path}: {exc}") from None
    try:
        return _recipe(path, doc, registry, overrides, given)
    except SkelError as exc:
        raise SkelError(f"{path}: {exc}") from None


def _recipe(path: Path, doc: dict, registry: Callable[[str], Stage], overrides: list[str],
            given: dict[str, str] | None) -> Recipe:
    """``load_recipe``'s work; its errors name the step, ``load_recipe`` adds the file."""
    raw_steps = _shape(doc)
    base = path.resolve().parent
    variables = {
        k: str((base / v).resolve()) if isinstance(v, str) and v.startswith(".") else str(v)
        for k, v in doc.get("vars", {}).items()
    }
    literal = {k: v for k, v in os.environ.items() if k in variables or k.startswith("SKEL_")} | (given or {})
    variables = _expand_vars(variables | literal, set(literal))
    ids = [s["id"] for s in raw_steps]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise SkelError(f"duplicate step id {', '.join(map(repr, twice))} (every [[step]] needs its own id)")
    by_id = {s.get("id"): dict(s) for s in raw_steps}
    given_here: dict[str, list[str]] = {}  # step id -> its --set items, named where its parameters are refused
    for item in overrides:
        key, sep, value = item.partition("=")
        step_id = max((i for i in by_id if key.startswith(f"{i}.")), key=len, default=None)  # an id may hold a dot
        param = key[len(step_id or "") + 1:]
        if not sep or step_id is None or not param:
            raise SkelError(f"--set {item!r}: expected STEP.PARAM=VALUE with STEP one of {', '.join(by_id)}")
        if param in RESERVED:
            raise SkelError(f"--set {item!r}: {param} is part of the recipe's structure, not a parameter")
        by_id[step_id][param] = _parse_value(value)
        given_here.setdefault(step_id, []).append(f"--set {item}")
    steps: list[Step] = []
    described: dict[str, dict] = {}  # step id -> Stage.describes of its output
    for raw in by_id.values():
        step_id = raw["id"]
        try:
            stage = registry(raw["stage"])
        except SkelError as exc:
            raise SkelError(f"step {step_id!r}: {exc}") from None
        inputs = dict(raw.get("inputs", {}))
        for name, ref in inputs.items():
            if ref not in {s.id for s in steps}:
                raise SkelError(f"step {step_id!r}: input {name} = {ref!r} is not an earlier step")
        try:
            values = {k: _substitute(v, variables) for k, v in raw.items() if k not in RESERVED}
        except SkelError as exc:
            raise SkelError(f"step {step_id!r}: {exc}") from None
        sets = f" (with {', '.join(given_here[step_id])})" if step_id in given_here else ""
        params = make_params(stage, values, f"step {step_id!r}{sets}")
        kinds = {s.id: s.stage.name for s in steps}
        for name, ref in inputs.items():  # a misspelt input would leave the real one to its default
            try:
                producers = stage.producers(name, params)
            except SkelError as exc:
                raise SkelError(f"step {step_id!r}: {exc}") from None
            if kinds[ref] not in producers:
                raise SkelError(f"step {step_id!r}: input {name} = {ref!r} is a {kinds[ref]} step; {name} takes "
                                f"the output of a {' or '.join(producers)} step")
        for name, producers in stage.inputs_for(params).items():  # default: the latest earlier step that fits
            if name not in inputs:
                fits = [s.id for s in steps if s.stage.name in producers]
                if not fits:
                    raise SkelError(f"step {step_id!r}: no earlier {' or '.join(producers)} step for input {name}")
                inputs[name] = fits[-1]
        given = {name: described[ref] for name, ref in inputs.items()}
        try:
            stage.check_inputs(inputs, params, given)
        except SkelError as exc:
            raise SkelError(f"step {step_id!r}: {exc}") from None
        described[step_id] = stage.describes(params, given)
        steps.append(Step(step_id, stage, params, inputs))
    wf = doc.get("workflow", {})
    try:
        name, workdir = (_substitute(wf[key], variables) if key in wf else None for key in ("name", "workdir"))
    except SkelError as exc:
        raise SkelError(f"[workflow]: {exc}") from None
    return Recipe(name or path.stem, path, steps, workdir, wf.get("side_by_side", Recipe.side_by_side))


def plan_recipe(recipe: Recipe, workdir: Path) -> list[Plan]:
    """Plans for every step, fingerprints chained through the declared inputs (nothing runs)."""
    plans: dict[str, Plan] = {}
    for step in recipe.steps:
        ups = {name: Upstream(plans[ref].stage.name, plans[ref].fingerprint, plans[ref].out)
               for name, ref in step.inputs.items()}
        try:
            plans[step.id] = make_plan(step.stage, workdir, step.params, ups)
        except SkelError as exc:  # e.g. its pickle or checkpoint is not there
            raise SkelError(f"{recipe.path}: step {step.id!r}: {exc}") from None
        twin = next((i for i, plan in plans.items() if i != step.id and plan.out == plans[step.id].out), None)
        if twin is not None and step.stage.sequential:  # trainings side by side would race for one output
            raise SkelError(f"{recipe.path}: steps {twin!r} and {step.id!r} train the same output (the same "
                            "parameters and inputs): remove one, or point its readers at the other")
    return list(plans.values())


def check_recipe(recipe: Recipe) -> None:
    """Every step's ``Stage.check`` (the heavy checks planning leaves out), before any step runs."""
    for step in recipe.steps:
        try:
            check_params(step.stage, step.params)
        except ValueError as exc:
            raise SkelError(f"{recipe.path}: step {step.id!r}: {exc}") from None


def run_recipe(
    recipe: Recipe,
    plans: list[Plan],
    workdir: Path,
    cluster: Cluster,
    *,
    quiet: bool = False,
    max_errors: float = 1.0,
    jobs: int = 1,
    on_step: Callable[[list[Step]], None] | None = None,
) -> None:
    """Run the planned steps, each once its inputs are done: cluster steps one at a time, in recipe order and
    before any in-process step that is ready with them; in-process (sequential) steps that are ready
    together, up to ``jobs`` at a time, side by side in processes of their own, each on its share of the cores
    (pipeline.together; ``jobs`` = 1: one after another, in this process). The cluster is closed while
    in-process steps run (idle Dask workers would only take CPU) and restarted by the next step that needs it.
    ``on_step`` is called with the steps about to run. The caller has run ``check_recipe`` (cli.run does,
    before it prints the plan)."""
    pending = dict(zip((s.id for s in recipe.steps), zip(recipe.steps, plans, strict=True), strict=True))
    checked: set[str] = set()
    with cluster:
        while pending:
            check_splits(recipe, plans, [s for s, _ in pending.values()], checked)
            ready = [(s, p) for s, p in pending.values() if not set(s.inputs.values()) & pending.keys()]
            alone = [sp for sp in ready if sp[1].cached or not sp[1].stage.sequential]
            batch = alone[:1] or ready[:min(jobs, len(os.sched_getaffinity(0)))]  # at least a core each
            if on_step is not None:
                on_step([s for s, _ in batch])
            if len(batch) == 1:
                step, plan = batch[0]
                if plan.stage.sequential:
                    cluster.close()
                run_plan(plan, workdir, cluster, quiet=quiet, max_errors=max_errors)
            else:
                cluster.close()
                run_together([(s.id, p) for s, p in batch], workdir, quiet=quiet, max_errors=max_errors)
            for step, _ in batch:
                del pending[step.id]


def check_splits(recipe: Recipe, plans: list[Plan], steps: list[Step], checked: set[str]) -> None:
    """The split names of ``steps`` (``Stage.named_splits``) against the samples of their nearest complete upstream
    output that holds samples (``Stage.splits``: a render): a misspelt split in a test step fails once the render
    above it is made, not after the trainings between them. An output with files missing or truncated is not read
    (its step repairs it first). ``checked``: the steps done with (each is read once)."""
    by_out = {plan.out: (step, plan) for step, plan in zip(recipe.steps, plans, strict=True)}
    by_id = {step.id: plan for step, plan in zip(recipe.steps, plans, strict=True)}

    def held(plan: Plan) -> tuple[str, set[str]] | None:
        for up in plan.inputs.values():
            if up.path not in by_out:
                continue
            step, above = by_out[up.path]
            if hit_output(up.path) is not None and (names := step.stage.splits(up.path)) is not None:
                return step.id, names
            if (deeper := held(above)) is not None:
                return deeper
        return None

    for step in steps:
        wanted = step.stage.named_splits(step.params)
        if step.id in checked or not wanted or (source := held(by_id[step.id])) is None:
            continue
        checked.add(step.id)
        src, names = source
        for key, name in wanted.items():
            if name not in names:
                raise SkelError(f"{recipe.path}: step {step.id!r}: {key} = {name!r} is not a split of {src}'s labelled "
                                f"samples (splits: {', '.join(sorted(names)) or 'none'}); fix it, or --set "
                                f"{step.id}.{key}=... ('' for every labelled sample): the steps done are kept")


def plan_state(plan: Plan) -> str:
    """hit (complete output), repair (complete, but files are missing or truncated), resume (some shards
    committed) or run."""
    if plan.cached:
        return "hit"
    existing = load_output(plan.out)
    if existing is not None and existing.complete:
        return "repair"
    return "resume" if any((plan.out / SHARDS).glob("*.json")) else "run"
