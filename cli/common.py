"""What every command shares: the typer app, the common options (declared once, handed to a command as
``opts: Common``), the ``command`` decorator and small option and printing helpers."""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.fields import Opt, parameters
from pipeline.checked import holding_output
from pipeline.cluster import Cluster, default_workers
from pipeline.errors import NOT_UTF8, SkelError, error_message, exit_on_next_interrupt, expected, printable, utf8_name
from pipeline.log import INTERRUPTED, LAUNCHER_FILE, console, print_error, setup_logging
from pipeline.runner import MAX_ERRORS
from pipeline.workdir import load_output, outputs

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    help="skel — skeleton-based action recognition with PoseConv3D: extract, render, train, test.",
)


@dataclass(frozen=True)
class Common:
    workdir: Path | None = None
    workers: int | None = None
    scheduler: str | None = None
    max_errors: float = MAX_ERRORS
    quiet: bool = False
    verbose: bool = False

    def cluster(self) -> Cluster:
        """The Dask cluster these options ask for (started only if a stage has shards to run)."""
        return Cluster(workers=default_workers() if self.workers is None else self.workers, scheduler=self.scheduler)


_Workdir = Annotated[Path | None, typer.Option(
    "--workdir", "-w", envvar="SKEL_WORKDIR", file_okay=False, show_default=False, rich_help_panel="Common",
    help="Where stage outputs live (default: runs/default; `skel demo`: demo-run; `skel run`: the recipe's "
    "workflow.workdir, else runs/<name>).")]
SHARED: dict[str, inspect.Parameter] = {p.name: p for p in (
    inspect.Parameter("workdir", inspect.Parameter.KEYWORD_ONLY, annotation=_Workdir, default=None),
    inspect.Parameter("workers", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        int | None, typer.Option("--workers", "-j", min=0, rich_help_panel="Cluster", help="Local Dask worker "
                                 "processes (0 = run in this process). Default: one per core.")]),
    inspect.Parameter("scheduler", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        str | None, typer.Option("--scheduler", rich_help_panel="Cluster", help="Address of an existing "
                                 "dask.distributed scheduler, e.g. tcp://host:8786.")]),
    inspect.Parameter("max_errors", inspect.Parameter.KEYWORD_ONLY, default=MAX_ERRORS, annotation=Annotated[
        float, typer.Option("--max-errors", min=0.0, max=1.0, rich_help_panel="Common", help="Share of the samples "
                            f"that may fail (recorded in errors.parquet) before the stage fails, rounded up; default "
                            f"{MAX_ERRORS:g} = {MAX_ERRORS:.0%}. A failed stage exits non-zero and is never used as "
                            "a default input.")]),
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars.", rich_help_panel="Common")]),
    inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging and full tracebacks.", rich_help_panel="Common")]),
)}
STAGE = ("workdir", "workers", "scheduler", "max_errors", "quiet", "verbose")  # a stage on Dask


def command(name: str, *, shared: tuple[str, ...], workdir: Path | None = Path("runs/default"),
            panel: str = "Stages", options: tuple[type, list[Opt]] | None = None,
            interrupted: str = INTERRUPTED,
            ) -> Callable[[Callable], Callable]:
    """Register ``fn(opts: Common, ...)`` as a command that also takes the ``shared`` options and, with
    ``options`` (a Params class and its Opts), those options as keyword arguments; expected failures (bad
    input, missing upstream, a machine short of memory: ``pipeline.errors.expected``) print as one line and exit 1
    (``--verbose``: the traceback), Ctrl-C as the line
    ``interrupted`` (a command that commits nothing says no more than that) and exit 130."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(**kwargs: Any) -> Any:
            # ~ as a shell would make it, which it does not after = (--workdir=~/runs, SKEL_WORKDIR="~/runs",
            # --run=~/w): a folder named ~ here, and readers that expand it (pyarrow) looked elsewhere
            kwargs = {k: _home(v) for k, v in kwargs.items()}
            given = {k: kwargs.pop(k) for k in shared}
            opts = Common(**{**given, "workdir": given.get("workdir") or _home(workdir)})
            setup_logging(opts.verbose)
            try:
                _utf8_paths([opts.workdir, *kwargs.values()])
                return fn(opts, **kwargs)
            except Exception as exc:
                if opts.verbose or not expected(exc):  # a programming error keeps its traceback
                    raise
                print_error(error_message(exc))
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                if opts.verbose:
                    raise
                exit_on_next_interrupt()
                if not os.environ.get(LAUNCHER_FILE):  # a torchrun rank: the skel that started torchrun says it
                    console.print(interrupted, highlight=False)
                raise typer.Exit(130) from None

        own = [p for p in list(inspect.signature(fn, eval_str=True).parameters.values())[1:]
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        derived = parameters(*options) if options else []
        run.__signature__ = inspect.Signature([*own, *derived, *(SHARED[k] for k in shared)])
        return app.command(name, rich_help_panel=panel, help=help_text(fn.__doc__ or ""))(run)

    return register


def help_text(doc: str) -> str:
    """A docstring as help: its paragraphs kept, each one's lines joined, since rich prints a source line
    break as a break and the wrapped lines come out ragged."""
    return "\n\n".join(" ".join(line.strip() for line in para.splitlines())
                        for para in inspect.cleandoc(doc).split("\n\n"))


Force = Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")]


def _home(value: Any) -> Any:
    """A path option's value (or a list of them) with a leading ``~`` made the home folder, as a shell makes it; a
    ``~name`` of no user stays as it is, as the shell leaves it."""
    if isinstance(value, list):
        return [_home(v) for v in value]
    return Path(os.path.expanduser(value)) if isinstance(value, Path) else value


def _utf8_paths(values: list[Any]) -> None:
    """Refuse a path option whose name is not UTF-8 text: outputs keep paths as text, and OpenCV ends the process on
    such a name."""
    for value in values:
        for path in value if isinstance(value, list) else [value]:
            if isinstance(path, Path) and not utf8_name(path):
                raise SkelError(f"{printable(path)}: {NOT_UTF8}")


def _named(path: Path, option: str) -> str:
    """A path as an error line names it: after the option that gave it, when one did (``--out x.mp4``)."""
    return f"{option} {path}" if option else str(path)


def refuse_existing(out: Path, force: bool, option: str = "") -> None:
    """A file the user has is replaced only with --force (it may be an input: a pickle, a checkpoint), and none in a
    stage output, --force or not (its stage alone writes there: an export over best.pt left the model damaged);
    ``option`` names the option that gave the path, when one did."""
    named = _named(out, option)
    if (inside := holding_output(out)) is not None:
        raise SkelError(f"{named} is inside the stage output {inside}, which only its stage writes: give a path "
                        "outside it")
    if (out.exists() or out.is_symlink()) and not force:  # a dangling link too: the path is taken
        raise SkelError(f"{named} exists: give another path, or --force to replace it")


@contextmanager
def made_meanwhile(dest: Path, option: str = "") -> Iterator[None]:
    """A file written without --force (``overwrite`` off) found at ``dest`` when it is put in place: another
    command made it while this one ran, and it is kept; named in one line."""
    try:
        yield
    except FileExistsError:
        raise SkelError(f"{_named(dest, option)} exists (made while this command ran, by another one): give another "
                        "path, or --force to replace it") from None


def writable(dest: Path, force: bool, option: str = "", inputs: tuple[Path, ...] | list[Path] = ()) -> None:
    """Checked before any work, so that none is done for a file that cannot be written: ``dest`` is not an input of
    the command (a video, the model; --force or not), not a directory, under folders (or where they can be made)
    that can be written, and ``refuse_existing``."""
    named = _named(dest, option)
    if any(dest.resolve() == src.resolve() for src in inputs):
        raise SkelError(f"{named} is an input of this command: refusing to write over it")
    if dest.is_dir():
        raise SkelError(f"{named}: is a directory")
    there = next(p for p in dest.absolute().parents if p.exists())
    if not there.is_dir():
        raise SkelError(f"{named}: {there} is not a directory")
    if not os.access(there, os.W_OK):  # a read-only folder or mount: found after all the work before
        raise SkelError(f"{named}: {there} is not writable")
    refuse_existing(dest, force, option)


def number_list(text: str | None, kind: type[int] | type[float], option: str) -> tuple | None:
    """A comma-separated option value (``--stage-blocks 2,3,2``) as a tuple of ``kind``; None when empty."""
    if not text:
        return None
    try:
        return tuple(kind(v) for v in text.split(","))
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise SkelError(f"{option} {text!r} is not a comma-separated list of {what}") from None


def _from_help(stages: str) -> str:
    return (f"The {stages} output to read (fingerprint prefix or directory); default: the most recently used "
            "complete one.")


def from_option(stages: str) -> Opt:
    """The --from option naming the output to read, for an Opt list (the command receives it as ``source``)."""
    return Opt("source", _from_help(stages), "Common", ("--from",), type=str | None, default=None)


def from_argument(stages: str) -> Any:
    """The --from option naming the output to read, as a parameter annotation."""
    return Annotated[str | None, typer.Option("--from", help=_from_help(stages), rich_help_panel="Common")]


def summary(out: Path) -> dict:
    """The summary a stage output's manifest records (just written by the command that prints it)."""
    found = load_output(out)
    return found.manifest.get("summary", {}) if found else {}


def trained_on(train_dir: Path) -> str:
    """What a train output learnt from, for the line that names the model a command took: its volumes' kind (joint,
    limb), which tells a recipe's streams apart where a fingerprint does not."""
    from pipeline.inputs import inputs_of

    try:
        volumes = inputs_of(train_dir).get("volumes")
    except SkelError:  # its volumes are gone: the model still is what the command took
        return ""
    made = load_output(volumes) if volumes is not None else None
    kind = made.manifest.get("params", {}).get("kind") if made is not None else None
    return f" ({kind} volumes)" if kind else ""


def print_metrics(out: Path) -> None:
    """One line of a test or fuse output's metrics."""
    s = summary(out)
    console.print(f"{s['samples']} samples: top-1 {s['top1']:.4f}, top-5 {s['top5']:.4f}, "
                  f"mean class {s['mean_class_accuracy']:.4f} -> {out}")


def say_the_model_taken(workdir: Path, train_dir: Path, flag: str) -> None:
    """A model taken by default (the most recently used train output) is named with the others the workdir holds: a
    two-stream recipe leaves its joint and limb streams, and the one taken is the limb one, which it only fuses."""
    others = [o for o in outputs(workdir, ("train",)) if o.complete and o.path.resolve() != train_dir.resolve()]
    if others:
        also = ", ".join(f"{o.fingerprint[:8]}{trained_on(o.path)}" for o in reversed(others))
        logging.getLogger("skel").warning("using train %s%s, the most recently used of the %d trained models in %s "
                                          "(also %s): %s names another", train_dir.name[:8], trained_on(train_dir),
                                          len(others) + 1, workdir, also, flag)
