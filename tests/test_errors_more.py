"""One-line errors for bad input found before anything runs (issue 22): pickle labels a training head cannot
use, malformed recipes and model arguments, out-of-range stage parameters; a full disk while training, and too few
file descriptors for the workers or memory for torch.

Every case is a real CLI run on real files: it exits non-zero with exactly one ``error:`` line naming the file,
step or parameter and what is wrong, and no traceback.
"""

from __future__ import annotations

import os
import pickle
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.errors import error_message, expected
from stores.safepickle import load_pickle
from tests.support import REPO, error_line, remount, skel


def _pickle(data: dict, path: Path) -> Path:
    path.write_bytes(pickle.dumps(data, protocol=4))
    return path


# --- import: labels ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("relabel, missing", [
    (lambda labels: [99999, *labels[1:]], "missing labels 6..99998"),  # one stray label: a 100,000-class head
    (lambda labels: [v + 1 for v in labels], "missing labels 0 "),  # 1-based labels
    (lambda labels: [v if v != 2 else 3 for v in labels], "missing labels 2 "),
])  # fmt: skip
def test_labels_with_gaps_and_no_class_list_fail_before_any_output(synth_pkl: Path, tmp_path: Path, relabel,
                                                                   missing: str) -> None:
    data = load_pickle(synth_pkl)
    del data["classes"]
    for ann, label in zip(data["annotations"], relabel([a["label"] for a in data["annotations"]]), strict=True):
        ann["label"] = label
    pkl = _pickle(data, tmp_path / "gaps.pkl")
    text = error_line(skel("import", pkl, "-w", tmp_path / "w", "-j", "0", "-q", check=False))
    assert str(pkl) in text and missing in text and "add a 'classes' list" in text
    assert not (tmp_path / "w" / "import").exists()  # nothing written, nothing left to resume


def test_negative_and_out_of_range_labels_are_bad_samples(synth_pkl: Path, tmp_path: Path) -> None:
    """A label outside the class list (or negative) is one sample's error, recorded; the rest imports."""
    data = load_pickle(synth_pkl)
    first, second = data["annotations"][:2]
    first["label"], second["label"] = -1, len(data["classes"])
    pkl = _pickle(data, tmp_path / "range.pkl")
    skel("import", pkl, "-w", tmp_path / "w", "-j", "0", "-q")
    (out,) = (tmp_path / "w" / "import").iterdir()
    errors = {e["sample_id"]: e["message"] for e in pq.read_table(out / "errors.parquet").to_pylist()}
    assert errors == {first["frame_dir"]: "label -1 is out of range (expected [0, 6))",
                      second["frame_dir"]: "label 6 is out of range (expected [0, 6))"}

    del data["classes"]  # without a class list: -1 is still a bad sample, and 6 is the seventh class
    pkl = _pickle(data, tmp_path / "no_classes.pkl")
    skel("import", pkl, "-w", tmp_path / "w2", "-j", "0", "-q")
    (out,) = (tmp_path / "w2" / "import").iterdir()
    errors = {e["sample_id"]: e["message"] for e in pq.read_table(out / "errors.parquet").to_pylist()}
    assert errors == {first["frame_dir"]: "label -1 is out of range (expected >= 0)"}


# --- recipes: refused whole before any step runs -------------------------------------------------------------

IMPORT_STEP = '[vars]\nPKL = "unset.pkl"\n[[step]]\nid = "import"\nstage = "import"\nsource = "${PKL}"\n'
RENDER_STEP = '[[step]]\nid = "render"\nstage = "render"\n'
TRAIN_STEP = RENDER_STEP + '[[step]]\nid = "train"\nstage = "train"\n'  # model checks follow the recipe's shape
RECIPES = {
    "bogus model_args": (IMPORT_STEP + TRAIN_STEP + "model_args = {bogus = 1}\n",
                         "step 'train': model_args {'bogus': 1} do not fit model slowonly",
                         "unexpected keyword argument 'bogus'"),
    "model_args of another model": (IMPORT_STEP + TRAIN_STEP + 'model = "c3d_light"\n'
                                    "model_args = {base_channels = 8, stage_blocks = [1, 1, 1]}\n",
                                    "do not fit model c3d_light", "unexpected keyword argument 'stage_blocks'"),
    "wrong type": (IMPORT_STEP + TRAIN_STEP + 'epochs = "ten"\n', "step 'train': parameter epochs = 'ten'",
                   "should be int"),
    "step is a string": ('step = "import"\n', "step must be an array of tables ([[step]] sections)",
                         "got a string ('import')"),
    "step without a stage": (IMPORT_STEP + '[[step]]\nid = "render"\n', "[[step]] #2: needs stage",
                             "got nothing"),
    "zero test size": (IMPORT_STEP + '[[step]]\nid = "test"\nstage = "test"\ninput_size = 0\n',
                       "step 'test': input_size", "must be >= 1, got 0"),
    "a misspelt input": (IMPORT_STEP + RENDER_STEP + '[[step]]\nid = "train"\nstage = "train"\n'
                         'inputs = { volume = "render" }\n', "step 'train': stage train has no input 'volume'"),
    "an input of the wrong kind": (IMPORT_STEP + RENDER_STEP + '[[step]]\nid = "train"\nstage = "train"\n'
                                   'inputs = { volumes = "import" }\n', "input volumes = 'import' is a import step",
                                   "takes the output of a render step"),
    "fuse without inputs": (IMPORT_STEP + '[[step]]\nid = "fuse"\nstage = "fuse"\n',
                            "step 'fuse': stage fuse needs at least 1 input"),
    "fuse weights of another count": (IMPORT_STEP + TRAIN_STEP + '[[step]]\nid = "test"\nstage = "test"\n[[step]]\n'
                                      'id = "fuse"\nstage = "fuse"\ninputs = { scores0 = "test" }\n'
                                      'weights = [1.0, 2.0]\n',
                                      "step 'fuse': 2 weights for 1 score inputs"),
    "a misspelt workflow key": ('[workflow]\nworkdri = "x"\n' + IMPORT_STEP, "unknown key(s) workflow.workdri",
                                "known: name, workdir, side_by_side"),
    "an unknown table": ('[extra]\nfoo = 1\n' + IMPORT_STEP, "unknown table or key(s) extra"),
    "a var naming an undefined one": (IMPORT_STEP.replace("[vars]\n", '[vars]\nQ = "${NOPE}/x"\n'),
                                      "[vars] Q: undefined variable ${NOPE}"),
    "a NaN number": (IMPORT_STEP + TRAIN_STEP + "lr = nan\n", "step 'train': lr must be a finite number, got nan"),
    "side_by_side a string": ('[workflow]\nside_by_side = "2"\n' + IMPORT_STEP,
                              "workflow.side_by_side must be an integer >= 1", "got a string ('2')"),
    "side_by_side zero": ("[workflow]\nside_by_side = 0\n" + IMPORT_STEP,
                          "workflow.side_by_side must be an integer >= 1", "got an integer (0)"),
    "two steps training one output": ("[workflow]\nside_by_side = 2\n" + IMPORT_STEP + TRAIN_STEP
                                      + TRAIN_STEP.split("\n", 3)[3].replace('"train"', '"twin"', 1),
                                      "steps 'train' and 'twin' train the same output"),
    "a missing pickle": (IMPORT_STEP.replace("${PKL}", "nowhere.pkl"), "step 'import': ", "nowhere.pkl: no such file"),
    "not UTF-8": ("# caf\xe9\n" + IMPORT_STEP, "codec can't decode byte 0xe9"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(RECIPES))
def test_bad_recipes_fail_whole_before_any_step_runs(synth_pkl: Path, tmp_path: Path, case: str) -> None:
    text, *expected = RECIPES[case]
    recipe = tmp_path / "r.toml"
    recipe.write_bytes(text.encode("latin-1"))  # one case is not UTF-8
    proc = skel("run", recipe, "-w", tmp_path / "w", "-j", "0", "-q", check=False,
                env_extra={"PKL": str(synth_pkl), "COLUMNS": "1000"})
    line = error_line(proc)
    assert proc.stderr.strip() == line  # nothing else: no plan, no step
    assert line.startswith(f"error: {recipe}: ") and all(part in line for part in expected), line
    assert not (tmp_path / "w").exists()


# --- stage parameters: checked by the Params dataclasses, for the CLI and recipes alike -----------------------

@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (("test", "--input-size", "0"), "input_size must be >= 1, got 0"),
    (("test", "--num-clips", "0"), "num_clips must be >= 1, got 0"),
    (("train", "--input-size", "0"), "input_size must be >= 1, got 0"),
    (("train", "--clip-len", "-4"), "clip_len must be >= 1, got -4"),
    (("train", "--model", "c3d_light", "--stage-blocks", "1,1,1"), "unexpected keyword argument 'stage_blocks'"),
    (("train", "--stage-blocks", "2,x"), "--stage-blocks '2,x' is not a comma-separated list of integers"),
    (("train", "--stage-blocks", "0,1,1"), "stage_blocks must be >= 1 in every stage, got (0, 1, 1)"),
    (("train", "--lr", "nan"), "lr must be a finite number, got nan"),
    (("train", "--device", "tpu"), "device must be one of auto, cpu, cuda, got 'tpu'"),
    (("test", "--device", "tpu"), "device must be one of auto, cpu, cuda, got 'tpu'"),
    (("render", "--sigma", "inf"), "sigma must be a finite number, got inf"),
    (("fuse", "a", "b", "--weights", "1,x"), "--weights '1,x' is not a comma-separated list of numbers"),
    (("fuse", "a", "b", "--weights", "0,0"), "weights must be >= 0 with a positive sum, got 0.0, 0.0"),
    (("extract", "v.mp4", "--fps", "0"), "fps must be > 0, got 0.0"),  # checked before any video is read
    (("extract", "v.mp4", "--detector-size", "100"), "detector_size must be a positive multiple of 32, got 100"),
    (("extract", "v.mp4", "--min-score", "5"), "min_score must be in [0, 1], got 5.0"),
    (("extract", "v.mp4", "--device", "tpu"), "device must be one of auto, cpu, cuda, got 'tpu'"),
])  # fmt: skip
def test_out_of_range_stage_parameters_are_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = skel(*args, "-w", tmp_path / "w", "-q", check=False)
    assert message in error_line(proc)
    assert not (tmp_path / "w").exists()


# --- a full disk while training ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_train_on_a_full_disk_is_one_line_then_resumes(synth_pkl: Path, tmpfs: Path, nproc: int) -> None:
    """Under DDP too: the rank that failed first is the one line (torchrun's launcher prints it), not a line per
    rank, and no rank's traceback."""
    w = tmpfs / "w"
    skel("import", synth_pkl, "-w", w, "-j", "0", "-q")
    skel("render", "--size", "32", "-w", w, "-j", "0", "-q")
    # room for the run's small files, not for a checkpoint (base 16: 0.6 MB of weights, as much of momentum)
    st = os.statvfs(tmpfs)
    remount(tmpfs, f"size={(st.f_blocks - st.f_bfree) * st.f_frsize + 400_000}")
    train = ("train", "-w", w, "--base-channels", "16", "--stage-blocks", "1,1,1", "--clip-len", "8",
             "--input-size", "32", "-b", "6", "--epochs", "1", "--val-split", "", "--loader-workers", "0",
             "--threads", "1", "--nproc", str(nproc), "-q")
    line = error_line(skel(*train, check=False))
    (out,) = (w / "train").iterdir()
    assert f"{out}/" in line and line.endswith(".pt: No space left on device"), line
    remount(tmpfs, "size=64m")
    assert "trained 1 epochs" in skel(*train).stderr


# --- limits of the environment ------------------------------------------------------------------------------

def _limit(kind: int, value: int) -> Callable[[], None]:
    """A ``preexec_fn`` that sets a resource limit (``ulimit``) for the command it starts."""
    return lambda: resource.setrlimit(kind, (value, value))


def test_too_few_file_descriptors_for_the_workers_is_one_line_before_any_output(synth_pkl: Path,
                                                                                 tmp_path: Path) -> None:
    """Dask's nanny cannot start its worker processes: the cause, not its AssertionError and RuntimeError, and no
    output left 'interrupted'."""
    w = tmp_path / "w"
    skel("import", synth_pkl, "-w", w, "-j", "0", "-q")
    proc = skel("render", "-w", w, "-j", "2", "-q", "--size", "40", check=False,
                preexec_fn=_limit(resource.RLIMIT_NOFILE, 32))
    assert error_line(proc) == ("error: could not start 2 Dask worker processes: too many open files (raise "
                                "`ulimit -n` or run with -j 0)")
    assert not (w / "render").exists()


_GC_WITHOUT_DESCRIPTORS = """
import gc, os, resource, sys
if sys.argv[1] == "quiet":
    from pipeline.cluster import _quiet_dask_diagnostics
    _quiet_dask_diagnostics()
from distributed.gc import enable_gc_diagnosis
enable_gc_diagnosis()
free = os.open(os.devnull, os.O_RDONLY)
os.close(free)
resource.setrlimit(resource.RLIMIT_NOFILE, (free, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
gc.collect()
"""


def test_dasks_gc_diagnosis_without_file_descriptors_prints_no_traceback() -> None:
    """The local scheduler's GC diagnosis reads /proc on each full collection; without a file descriptor left (the
    case above, when a collection comes while the nanny gives up) Python printed its ignored OSError's traceback
    beside the one-line error (a CI run saw it). With skel's hook it goes to the debug log; without, it is printed."""
    def run(mode: str) -> str:
        return subprocess.run([sys.executable, "-c", _GC_WITHOUT_DESCRIPTORS, mode], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parents[1]).stderr
    assert "Too many open files" in run("loud")
    assert run("quiet") == ""


def test_torch_that_cannot_load_under_a_memory_limit_is_one_line(tmp_path: Path) -> None:
    """train's check imports torch, whose library cannot be mapped under ``ulimit -v``: one line saying so, and the
    traceback with --verbose."""
    args = ("train", "-w", tmp_path / "w", "-q")
    limited = _limit(resource.RLIMIT_AS, 700_000 * 1024)
    line = error_line(skel(*args, check=False, preexec_fn=limited))
    assert line.startswith("error: cannot load torch (a memory limit? ulimit -v): lib"), line
    verbose = skel(*args, "-v", check=False, preexec_fn=limited)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr and "ImportError" in verbose.stderr


def test_memory_errors_are_one_line_and_python_import_errors_stay_programming_errors() -> None:
    with pytest.raises(MemoryError) as err:
        np.empty(2**62, np.uint8)  # more than any machine has
    assert expected(err.value)
    assert error_message(err.value).startswith("out of memory (a memory limit? ulimit -v): Unable to allocate 4.00 EiB")
    assert error_message(MemoryError()) == "out of memory (a memory limit? ulimit -v)"
    with pytest.raises(ImportError) as err:
        from pipeline import no_such_module  # noqa: F401
    assert not expected(err.value)


def test_ctrl_c_while_the_commands_load_exits_130_without_a_traceback() -> None:
    """A real SIGINT, sent while ``cli`` imports its commands (torch takes about half a second), as a user's early
    Ctrl-C lands: exit 130 and no KeyboardInterrupt traceback."""
    hook = ("import builtins, os, signal\n"
            "load = builtins.__import__\n"
            "def ctrl_c(name, *args, **kw):\n"
            "    if name == 'stages.train.params':\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "    return load(name, *args, **kw)\n"
            "builtins.__import__ = ctrl_c\n"
            "import runpy\n"
            "runpy.run_module('cli', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", hook, "status"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr


def test_a_command_that_needs_torch_where_it_is_not_installed_is_one_line(tmp_path: Path) -> None:
    """A machine set up to predict with --onnx alone has no torch: `skel export` (or predict --run) printed a
    ModuleNotFoundError traceback. One line naming the package, and the torch-free way."""
    (hidden := tmp_path / "no_torch").mkdir()
    (hidden / "sitecustomize.py").write_text(
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'torch':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoTorch())\n")
    proc = skel("export", tmp_path / "m.onnx", "-w", tmp_path / "w", check=False,
                env_extra={"PYTHONPATH": f"{hidden}{os.pathsep}{REPO}"})
    assert error_line(proc) == "error: torch is not installed here, and this command needs it (skel predict --onnx " \
                               "runs without it)"


# --- help ----------------------------------------------------------------------------------------------------

def test_help_paragraphs_wrap_at_the_terminal_not_at_the_source_lines() -> None:
    """A docstring's line breaks are the source's, not the terminal's: rich printed each as a break, so a
    command's help came out ragged, with a word or two on lines of their own."""
    line = next(ln for ln in skel("status", "--help").stdout.splitlines() if "States:" in ln)
    assert "failed (errors over budget or a shard failed), interrupted" in line, line
    listing = skel("--help").stdout
    line = next(ln for ln in listing.splitlines() if "export-pkl" in ln)
    assert "checked against its recorded sha256 first" in line, line
