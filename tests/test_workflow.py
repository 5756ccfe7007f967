"""`skel run`: recipes parse up front, the plan says hit/repair/resume/run, --set reruns only what depends on it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.errors import SkelError
from pipeline.workdir import outputs
from pipeline.workflow import load_recipe, plan_recipe, plan_state
from stages import get_stage
from tests.support import REPO, RESUME_RECIPE, error_line, skel

RECIPES = sorted((REPO / "workflows").glob("*.toml"))


def _plan_table(stderr: str) -> dict[str, tuple[str, str]]:
    """step id -> (fingerprint, action) from the plan table that `skel run` prints."""
    rows = {}
    for line in stderr.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 5:  # step, stage, fingerprint, inputs, action
            rows[cells[0]] = (cells[2], cells[4])
    return rows


RECIPE = """
[workflow]
name = "small"
[vars]
PKL = "unset.pkl"
[[step]]
id = "import"
stage = "import"
source = "${PKL}"
[[step]]
id = "render_joint"
stage = "render"
kind = "joint"
[[step]]
id = "render_limb"
stage = "render"
inputs = { triplets = "import" }
kind = "limb"
"""


@pytest.mark.slow
def test_run_then_set_reruns_only_dependents(synth_pkl: Path, tmp_path: Path) -> None:
    recipe, w, given = tmp_path / "small.toml", tmp_path / "w", {"PKL": str(synth_pkl)}
    recipe.write_text(RECIPE)
    plans = plan_recipe(load_recipe(recipe, get_stage, given=given), w)
    assert [plan_state(p) for p in plans] == ["run", "run", "run"]
    out = skel("run", recipe, "-w", w, "-j", "0", "--dry-run", env_extra={"PKL": str(synth_pkl)})
    steps = ["import", "render_joint", "render_limb"]
    assert _plan_table(out.stderr) == {s: (p.fingerprint, "run") for s, p in zip(steps, plans, strict=True)}
    assert not (w / "import").exists() and not (w / "render").exists()  # a dry run runs nothing

    skel("run", recipe, "-w", w, "-j", "0", env_extra={"PKL": str(synth_pkl)})
    assert [plan_state(p) for p in plan_recipe(load_recipe(recipe, get_stage, given=given), w)] == ["hit"] * 3
    again = skel("run", recipe, "-w", w, "-j", "0", "--dry-run", env_extra={"PKL": str(synth_pkl)})
    assert [action for _, action in _plan_table(again.stderr).values()] == ["hit"] * 3

    changed = plan_recipe(load_recipe(recipe, get_stage, ["render_limb.sigma=1.0"], given), w)
    assert [plan_state(p) for p in changed] == ["hit", "hit", "run"]
    assert changed[2].params.sigma == 1.0 and changed[2].fingerprint != plans[2].fingerprint
    changed = plan_recipe(load_recipe(recipe, get_stage, ["import.part_size=7"], given), w)
    assert [plan_state(p) for p in changed] == ["run", "run", "run"]  # the change propagates downstream

    (w / "render" / plans[1].fingerprint / "index.parquet").unlink()  # damaged: repaired, not a cache hit
    repaired = skel("run", recipe, "-w", w, "-j", "0", "-q", env_extra={"PKL": str(synth_pkl)})
    assert [action for _, action in _plan_table(repaired.stderr).values()] == ["hit", "repair", "hit"]
    assert "3 steps done, 2 from cache" in " ".join(repaired.stderr.split())
    assert [plan_state(p) for p in plan_recipe(load_recipe(recipe, get_stage, given=given), w)] == ["hit"] * 3


@pytest.mark.slow
def test_demo_runs_end_to_end_then_is_all_cache_hits(demo_run) -> None:
    w, first = demo_run
    assert "demo: results" in first.stderr
    streams = re.findall(r"^\W*(test_joint|test_limb|fuse)\W+\d+\.\d%", first.stderr, re.MULTILINE)  # the table
    assert streams == ["test_joint", "test_limb", "fuse"], first.stderr
    stages = [o.stage for o in outputs(w)]
    assert sorted(stages) == sorted(["import", "render", "render", "train", "train", "test", "test", "fuse"])
    assert all(o.complete for o in outputs(w))
    assert list((w / "render").glob("*/previews/*.png")) and list((w / "fuse").glob("*/confusion.png"))
    assert len(list((w / "train").glob("*/curves.png"))) == 2
    second = skel("demo", "-w", w, "--per-class", "6", "-j", "0")
    assert "8 steps done, 8 from cache" in second.stderr.replace("\n", " ")


@pytest.mark.parametrize("override, message", [
    ("render_limb.foo=1", "unknown parameter(s) foo"),
    ("render_limb.kind=hand", "kind must be one of"),
    ("nostep.sigma=1", "expected STEP.PARAM=VALUE"),
    ("render_limb.inputs=import", "inputs is part of the recipe's structure, not a parameter"),
])  # fmt: skip
def test_bad_overrides_fail_before_running(synth_pkl: Path, monkeypatch, override: str, message: str) -> None:
    monkeypatch.setenv("DEMO_PKL", str(synth_pkl))
    with pytest.raises(SkelError, match=re.escape(message)):
        load_recipe(REPO / "workflows" / "demo.toml", get_stage, [override])


@pytest.mark.parametrize("source, expected", [
    ("${PKL}", "/data/x.pkl"), ("$PKL", "/data/x.pkl"), ("$${PKL}", "${PKL}"),
    ("${NOPE}", "undefined variable ${NOPE}"), ("cost $5", "a $ that starts no ${NAME}"),
])  # fmt: skip
def test_variables(tmp_path: Path, source: str, expected: str) -> None:
    recipe = tmp_path / "vars.toml"
    recipe.write_text(f'[vars]\nPKL = "/data/x.pkl"\n[[step]]\nid = "import"\nstage = "import"\nsource = "{source}"\n')
    if expected.startswith("/") or expected.startswith("${PKL"):
        assert load_recipe(recipe, get_stage).steps[0].params.source == expected
    else:
        with pytest.raises(SkelError, match=re.escape(expected)):
            load_recipe(recipe, get_stage)


def test_set_reaches_a_step_whose_id_holds_a_dot(tmp_path: Path) -> None:
    recipe = tmp_path / "dots.toml"
    recipe.write_text('[[step]]\nid = "import"\nstage = "import"\nsource = "/data/x.pkl"\n'
                      '[[step]]\nid = "render.joint"\nstage = "render"\n')
    assert load_recipe(recipe, get_stage, ["render.joint.size=16"]).steps[1].params.size == 16


def test_an_integer_for_a_float_parameter_is_that_float(tmp_path: Path) -> None:
    """``sigma = 1`` in a recipe is ``--sigma 1`` on the command line: the same parameters, the same fingerprint
    (a cache shared by both), lists of floats too."""
    from pipeline.fingerprint import canonical_json, fingerprint_params
    from stages.render.params import RenderParams
    from stages.test.params import FuseParams

    def params(text: str) -> list:
        (tmp_path / "r.toml").write_text(f'[[step]]\nid = "import"\nstage = "import"\nsource = "x.pkl"\n{text}')
        steps = load_recipe(tmp_path / "r.toml", get_stage).steps
        return [canonical_json(fingerprint_params(s.params)) for s in steps if s.id in ("r", "f")]

    steps = ('[[step]]\nid = "r"\nstage = "render"\nsigma = {}\n[[step]]\nid = "t"\nstage = "train"\n'
             '[[step]]\nid = "e"\nstage = "test"\n[[step]]\nid = "f"\nstage = "fuse"\ninputs = {{ scores0 = "e" }}\n'
             'weights = [{}]\n')
    assert params(steps.format(1, 2)) == params(steps.format("1.0", "2.0")) == [
        canonical_json(fingerprint_params(RenderParams(sigma=1.0))),
        canonical_json(fingerprint_params(FuseParams(weights=(2.0,))))]


def test_vars_may_name_other_vars_and_the_environment_wins(tmp_path: Path, monkeypatch) -> None:
    recipe = tmp_path / "vars.toml"
    recipe.write_text('[vars]\nPKL = "${BASE}/x.pkl"\nBASE = "/data"\n'
                      '[[step]]\nid = "import"\nstage = "import"\nsource = "${PKL}"\n')
    assert load_recipe(recipe, get_stage).steps[0].params.source == "/data/x.pkl"
    monkeypatch.setenv("BASE", "/env$$")  # a value from the environment is taken as it is
    assert load_recipe(recipe, get_stage).steps[0].params.source == "/env$$/x.pkl"


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_shipped_recipe_parses_and_plans(recipe: Path, shared: Path, synth_pkl: Path, tmp_path: Path,
                                               monkeypatch) -> None:
    monkeypatch.setenv("SKEL_SHARED", str(shared))
    # data sets that are not shipped (NTU) are stood in for by the synthetic pickle
    given = {name: str(synth_pkl) for name in tomllib.loads(recipe.read_text()).get("vars", {})
             if name.endswith("_PKL")}
    proxies = tmp_path / "proxies"  # the Penn subsets tools/penn_proxies.py writes: stood in for the same way
    proxies.mkdir()
    for name in ("penn_small", "penn_folds", "penn_pre8", "penn_fine7"):
        (proxies / f"{name}.pkl").symlink_to(synth_pkl)
    given["SKEL_PROXIES"] = str(proxies)
    plans = plan_recipe(load_recipe(recipe, get_stage, given=given), tmp_path)
    assert plans and all(plan_state(p) == "run" for p in plans)
    assert os.path.commonpath([p.out for p in plans]) == str(tmp_path)


def test_parsing_and_planning_leave_torch_out(synth_pkl: Path, tmp_path: Path) -> None:
    """A recipe with every torch stage parses, is planned and prints its plan in a process that never imports
    torch (the train stage's model check, which does, runs apart: pipeline.workflow.check_recipe)."""
    recipe = REPO / "workflows" / "demo.toml"
    code = ("import sys; from pathlib import Path; from pipeline.workflow import load_recipe, plan_recipe; "
            "from stages import get_stage; "
            f"r = load_recipe(Path({str(recipe)!r}), get_stage, given={{'DEMO_PKL': {str(synth_pkl)!r}}}); "
            f"plans = plan_recipe(r, Path({str(tmp_path)!r})); "
            "print(sorted({p.stage.name for p in plans}), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['fuse', 'import', 'render', 'test', 'train'] False", out


@pytest.mark.slow
def test_transfer_recipe_runs_short(synth_pkl: Path, tmp_path: Path) -> None:
    """workflows/penn_transfer.toml end to end at a few steps: pretrain on every synthetic class, fine-tune
    on three of them under new names (classes the pretraining never saw, as in the Penn proxy: a new head) and
    from scratch, both tested."""
    import pickle

    data = pickle.loads(synth_pkl.read_bytes())
    proxies = tmp_path / "proxies"
    proxies.mkdir()
    (proxies / "penn_pre8.pkl").symlink_to(synth_pkl)
    fine = [a for a in data["annotations"] if a["label"] < 3]
    names = {a["frame_dir"] for a in fine}
    split = {k: [n for n in v if n in names] for k, v in data["split"].items()}
    (proxies / "penn_fine7.pkl").write_bytes(pickle.dumps(
        {"split": split, "classes": [f"new_{c}" for c in data["classes"][:3]], "annotations": fine}))
    short = [f"{s}.steps=3" for s in ("pretrain", "finetune", "scratch")]
    short += [f"{s}.num_clips=1" for s in ("test_finetune", "test_scratch")]
    proc = skel("run", REPO / "workflows" / "penn_transfer.toml", "-w", tmp_path / "w", "-j", "0", "-q",
                *[a for s in short for a in ("--set", s)], env_extra={"SKEL_PROXIES": str(proxies)})
    assert "head replaced: cls_head.fc_cls.weight" in " ".join(proc.stderr.split())
    tests = outputs(tmp_path / "w", "test")
    assert len(tests) == 2
    for out in tests:
        table = pq.read_table(out.path / "scores.parquet").to_pydict()
        assert len(table["sample_id"]) == len(split["test"]) and set(table["label"]) <= {0, 1, 2}
        assert all(len(row) == 3 for row in table["scores"])


@pytest.mark.slow
def test_small_data_recipe_runs_on_my_dataset_short(synth_pkl: Path, tmp_path: Path) -> None:
    """workflows/small_data.toml as a user runs it on their own pickle (`--set import.source=...`), at a few
    steps: the joint stream starts from its shipped pretrained model with a new head for the 6 synthetic
    classes, the limb stream from scratch, each prints its plan, the test split is scored by both and fused."""
    import pickle

    short = [f"{s}.{k}={v}" for s in ("train_joint", "train_limb") for k, v in (("steps", 3), ("min_epochs", 1))]
    proc = skel("run", REPO / "workflows" / "small_data.toml", "-w", tmp_path / "w", "-j", "0",
                "--set", f"import.source={synth_pkl}", *(a for kv in short for a in ("--set", kv)))
    text = " ".join(proc.stderr.split())
    assert "penn-joint-s16.pt" in text and "penn-limb-s16.pt" not in text
    assert text.count("head replaced: cls_head.fc_cls.weight") == 1
    assert len(re.findall(r"plan: \d+ training clips x 1 / batch 16 = \d+ steps per epoch, \d+ epochs", text)) == 2
    data = pickle.loads(synth_pkl.read_bytes())
    tests = outputs(tmp_path / "w", "test")
    assert len(tests) == 2 and len(outputs(tmp_path / "w", "fuse")) == 1
    for test in tests:
        table = pq.read_table(test.path / "scores.parquet").to_pydict()
        assert sorted(table["sample_id"]) == sorted(data["split"]["test"])
        assert all(len(row) == len(data["classes"]) for row in table["scores"])


def test_names_with_brackets_print_as_written(synth_pkl: Path, tmp_path: Path) -> None:
    """Recipe names, step ids and workdirs are text, not rich markup (a stray [/b] used to raise)."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[workflow]\nname = "x[/b]"\n[[step]]\nid = "imp[/]"\nstage = "import"\n'
                      f'source = "{synth_pkl}"\n')
    proc = skel("run", recipe, "-w", tmp_path / "w[/i]x", "-j", "0", "-q")
    text = " ".join(proc.stderr.split())
    assert "plan: x[/b] in" in text and "imp[/]" in text and f"workflow x[/b]: 1 steps done, 0 from cache -> " \
        f"{tmp_path}/w[/i]x" in text


def test_recipe_paths_are_the_current_directory_s_and_repair_finds_them_from_another(synth_pkl: Path,
                                                                                     tmp_path: Path) -> None:
    """A step's path given relative (`--set import.source=mine.pkl`) is the run's current directory's, made absolute
    in the plan as the CLI makes it: a repair from another directory, beside another mine.pkl, reads the run's pickle
    (once it said `mine.pkl: no such file`, or 'its inputs or source files changed'), the import's fingerprint is the
    absolute path's, and a pickle that is gone is named with the command that makes the output again."""
    import json
    import shutil

    from pipeline.runner import make_plan
    from stages.import_pkl import ImportParams, ImportStage

    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "r1.toml"
    recipe.write_text('[[step]]\nid = "import"\nstage = "import"\nsource = "unset.pkl"\n')
    run_dir, sub = tmp_path / "t2", tmp_path / "t2" / "sub"
    sub.mkdir(parents=True)
    shutil.copy(synth_pkl, run_dir / "mine.pkl")
    skel("run", "../recipes/r1.toml", "--set", "import.source=mine.pkl", "-w", "wd", "-j", "0", "-q", cwd=run_dir)
    (out,) = outputs(run_dir / "wd", "import")
    assert json.loads((out.path / "plan.json").read_text())["params"]["source"] == str(run_dir / "mine.pkl")
    absolute = make_plan(ImportStage(), tmp_path / "x", ImportParams(str(run_dir / "mine.pkl")))
    assert absolute.fingerprint == out.fingerprint

    part = out.path / "triplets" / "part-00000.parquet"
    clean = part.read_bytes()
    (sub / "mine.pkl").write_bytes(b"another pickle")
    part.write_bytes(clean[: len(clean) // 2])
    skel("verify", "--repair", "-w", "../wd", "-j", "0", "-q", cwd=sub)
    assert part.read_bytes() == clean

    (run_dir / "mine.pkl").unlink()
    part.write_bytes(clean[: len(clean) // 2])
    proc = skel("verify", "--repair", "-w", "../wd", "-j", "0", "-q", cwd=sub, check=False)
    said = (f"error: cannot repair import {out.fingerprint[:8]}: its source {run_dir / 'mine.pkl'} is gone; "
            "rerun `skel import NEWPATH -w ../wd`")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "".join(said.split()) in "".join(proc.stderr.split()), proc.stderr  # rich may wrap a long path


@pytest.mark.slow
def test_a_misspelt_split_fails_before_the_steps_that_do_not_need_it(synth_pkl: Path, tmp_path: Path) -> None:
    """A test step's split is checked once the render it scores is made, not when the step starts: a typo failed
    only after every training before it (25 minutes of the Penn recipe)."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RESUME_RECIPE.format(pkl=synth_pkl).replace("num_clips = 2", 'num_clips = 2\nsplit = "tset"'))
    line = error_line(skel("run", recipe, "-w", tmp_path / "w", "-j", "0", "-q", check=False))
    assert line == (f"error: {recipe}: step 'test': split = 'tset' is not a split of render's labelled samples "
                    "(splits: test, train); fix it, or --set test.split=... ('' for every labelled sample): the steps "
                    "done are kept")
    assert sorted(o.stage for o in outputs(tmp_path / "w")) == ["import", "render"]  # no training ran
    # a dry run checks against the render there is; a render whose index is lost is repaired before it is read
    assert error_line(skel("run", recipe, "-w", tmp_path / "w", "--dry-run", check=False)) == line
    (render,) = [o.path for o in outputs(tmp_path / "w") if o.stage == "render"]
    (render / "index.parquet").unlink()
    again = skel("run", recipe, "-w", tmp_path / "w", "-j", "0", "-q", check=False)
    assert error_line(again) == line and (render / "index.parquet").is_file(), again.stderr


def test_a_parameter_refused_names_the_set_that_gave_it(tmp_path: Path) -> None:
    """`--set render_joint.sigma=abc` was refused as the file's: 'r.toml: step ...: sigma = 'abc' should be float',
    though abc is nowhere in the file."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    with pytest.raises(SkelError, match=re.escape(
            f"{recipe}: step 'render_joint' (with --set render_joint.sigma=abc): parameter sigma = 'abc' should be "
            "float")):
        load_recipe(recipe, get_stage, ["render_joint.sigma=abc"], {"PKL": "x.pkl"})


RECIPE_PRE = ('[[step]]\nid = "import"\nstage = "import"\nsource = "x.pkl"\n[[step]]\nid = "render"\nstage = "render"\n'
              '[[step]]\nid = "pre"\nstage = "train"\n')


def test_the_workflows_name_and_workdir_take_variables(tmp_path: Path) -> None:
    """A recipe's ${NAME} in [workflow] workdir made a folder named ${RUNS} in the current directory (recipe
    audit): it is substituted there as in the steps, and an undefined one is refused."""
    recipe = tmp_path / "r.toml"
    body = '[[step]]\nid = "import"\nstage = "import"\nsource = "x.pkl"\n'
    recipe.write_text(f'[workflow]\nname = "${{NAME}}"\nworkdir = "${{RUNS}}/w"\n[vars]\nRUNS = "/data/runs"\n'
                      f'NAME = "mine"\n{body}')
    loaded = load_recipe(recipe, get_stage)
    assert (loaded.workdir, loaded.name) == ("/data/runs/w", "mine")
    recipe.write_text(f'[workflow]\nworkdir = "${{RUNS}}/w"\n{body}')
    with pytest.raises(SkelError, match=re.escape("[workflow]: undefined variable ${RUNS}")):
        load_recipe(recipe, get_stage)


@pytest.mark.parametrize("step, message", [
    ('[[step]]\nid = "import"\nstage = "import"\n', "step 'import': needs source = ... (stage import has no default"),
    (f'{RECIPE_PRE}[[step]]\nid = "ft"\nstage = "train"\ninit = "/x/best.pt"\ninputs = {{ pretrained = "pre" }}\n',
     "step 'ft': init = '/x/best.pt' and a pretrained input: give one of them"),
    (f'{RECIPE_PRE}[[step]]\nid = "ft"\nstage = "train"\ninputs = {{ volume = "render" }}\n',
     "has no input 'volume' (inputs: volumes; optional: pretrained)"),
    (f'{RECIPE_PRE}[[step]]\nid = "limb"\nstage = "render"\nkind = "limb"\n[[step]]\nid = "ft"\nstage = "train"\n'
     'inputs = { volumes = "limb", pretrained = "pre" }\n',
     "step 'ft': input pretrained trains on joint heatmaps, these volumes are limb: start the limb stream from a "
     "limb training"),
])  # fmt: skip
def test_recipe_mistakes_are_said_before_any_step_runs(tmp_path: Path, step: str, message: str) -> None:
    """A train step given both init and a pretrained input was refused only when it started, after the pretraining
    had run; a missing required parameter read as a Python TypeError; the optional input went unnamed."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(step)
    with pytest.raises(SkelError, match=re.escape(message)):
        load_recipe(recipe, get_stage)


@pytest.mark.parametrize("value", ["none", "null", ""])
def test_set_resets_a_parameter_that_may_be_none(tmp_path: Path, value: str) -> None:
    """TOML has no null, so `--set t.lr=none` was refused ('should be float | None') and a recipe's lr could not be
    reset to its default rule (recipe audit). A parameter that takes no text reads none, null or nothing as None."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'{RECIPE_PRE}lr = 0.1\n')
    [pre] = [s for s in load_recipe(recipe, get_stage, [f"pre.lr={value}"]).steps if s.id == "pre"]
    assert pre.params.lr is None
    with pytest.raises(SkelError, match=re.escape("parameter sigma = 'none' should be float")):
        load_recipe(recipe, get_stage, ["render.sigma=none"])  # it may not be None: refused as before
