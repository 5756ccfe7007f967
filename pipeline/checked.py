"""Reading a file of a stage output only once it is checked against the output's manifest.

The runner checks a stage's inputs before the stage runs; the readers outside it (`skel export`,
`skel predict`, `skel export-pkl`, the fusion of test scores) pass each file they read through ``checked``,
so that a damaged file is refused with the way to repair it instead of read as data.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import SkelError, shell
from pipeline.fingerprint import FP_LEN
from pipeline.integrity import check
from pipeline.workdir import MANIFEST, Output, load_output


def holding_output(path: Path) -> Path | None:
    """The stage output ``path`` lies in, if any: the nearest directory above it laid out as one,
    ``<stage>/<fingerprint: FP_LEN hex digits>/manifest.json`` (a folder of the user's may hold a manifest.json of its
    own: a web app's, a dataset's)."""
    return _nearest_output(Path(path).resolve().parent)


def _nearest_output(directory: Path) -> Path | None:
    return next((d for d in (directory, *directory.parents) if (d / MANIFEST).is_file() and _fingerprint_named(d)),
                None)


def _fingerprint_named(directory: Path) -> bool:
    return len(directory.name) == FP_LEN and all(c in "0123456789abcdef" for c in directory.name)


def checked(path: Path) -> Path:
    """``path`` once it is the file its stage output's manifest records (size and full sha256; cheap for a
    checkpoint or a Parquet part); else SkelError, one line naming the file, what is wrong and the repair.

    The output is the nearest directory above the file holding a manifest; a file outside any output (a
    user's own checkpoint) is returned as is, and so is one of an output whose manifest has no file table
    (made before skel recorded digests), as the runner takes such inputs. A file of an output that is not
    complete is refused too.
    """
    # the file where it is named, its folders' links followed (an output moved to other storage and linked back),
    # not its own: a checkpoint replaced by a link to another output's is checked against this output's record
    folder = Path(path).absolute().parent.resolve()
    real, out = folder / Path(path).name, _nearest_output(folder)
    if out is None:  # a link of the user's to a file of an output: that output's
        real = Path(path).resolve()
        out = holding_output(real)
    if out is None:
        return path
    found = load_output(out) or Output(out, {})
    repair = f"run `skel verify --repair -w {shell(out.parent.parent)}`"
    if not found.complete:
        raise SkelError(f"{path}: its {found.stage} output {out} is {found.state}, not complete; {repair}")
    files = found.manifest.get("files")
    if files is None:  # made before skel recorded digests: nothing to check against (as for the runner's inputs)
        return path
    rel = real.relative_to(out).as_posix()
    entry = files.get(rel)
    if entry is None:
        raise SkelError(f"{path}: not recorded in its complete {found.stage} output's {MANIFEST}; {repair}")
    problems = check(out, {rel: entry}, full=True)
    if problems:
        raise SkelError(f"{path}: {problems[0].what} (checked against its output's {MANIFEST}); {repair}")
    return path
