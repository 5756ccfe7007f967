"""User-facing errors: one line, naming the file or sample and what is wrong."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.machinery import EXTENSION_SUFFIXES

from pipeline.code import PACKAGES


class SkelError(Exception):
    """An error the CLI prints as a single line (no traceback) before exiting non-zero."""


class SourceGone(SkelError):
    """A file from outside the workdir that an output is made from (an imported pickle) is not where its plan
    says; ``rerun`` is the command that makes the output again from the file's new place (``skel import NEWPATH``),
    which a repair suggests."""

    def __init__(self, path: str | os.PathLike, rerun: str):
        super().__init__(f"{path}: no such file")
        self.path = str(path)
        self.rerun = rerun


def exit_on_next_interrupt() -> None:
    """Once a Ctrl-C has been answered: another ends this process at once, as ``kill -9`` would (every write is
    atomic), instead of interrupting Python on its way out (joining the processes it started) with a traceback.
    Only the main thread sets handlers; elsewhere nothing changes."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: _leave())


def _leave(code: int = 130) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class Interrupts:
    """A SIGINT handler: Ctrl-C as KeyboardInterrupt, except inside ``held()``, where it is raised when the block
    ends (a second one there ends the process at once, as ``exit_on_next_interrupt``). Main thread only."""

    def __init__(self) -> None:
        self.holding = self.pending = False

    def __call__(self, signum: int, frame: object) -> None:
        if not self.holding:
            raise KeyboardInterrupt
        if self.pending:
            _leave()
        self.pending = True

    @contextmanager
    def held(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            if self.pending:
                raise KeyboardInterrupt


@contextmanager
def interrupts_held() -> Iterator[None]:
    """The block runs to its end through a Ctrl-C, raised when it ends: for a library call that turns an interrupt
    into errors of its own (torch's ONNX exporter: an AttributeError's traceback). Main thread only; elsewhere the
    block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupts = Interrupts()
    previous = signal.signal(signal.SIGINT, interrupts)
    try:
        with interrupts.held():
            yield
    finally:
        signal.signal(signal.SIGINT, previous)


NOT_UTF8 = "its name is not valid UTF-8, which skel keeps names in (and OpenCV crashes on): rename it"


def utf8_name(text: str | os.PathLike) -> bool:
    """Whether a file name (as Python decodes what the file system gives) is valid UTF-8 text."""
    try:
        str(text).encode("utf-8")
    except UnicodeEncodeError:  # a byte that is not UTF-8, which Python keeps as a lone surrogate
        return False
    return True


def printable(text: str | os.PathLike) -> str:
    """A file name as a message can show it: bytes that are not UTF-8 as \\xNN (other lone surrogates as \\udNNN)."""
    try:
        return os.fsencode(str(text)).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file system byte gives (from a pickle's text)
        return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


class FileError(ValueError):
    """A file that cannot be used; the message is ``<path>: <problem>``."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


MEMORY_LIMIT = "(a memory limit? ulimit -v)"


def expected(exc: BaseException) -> bool:
    """Whether ``exc`` is bad input or a limit of the machine, which the CLI prints as one line, not a programming
    error, which keeps its traceback: a SkelError, ValueError or OSError, a MemoryError, or a compiled library that
    would not load (torch under ``ulimit -v``)."""
    return (isinstance(exc, SkelError | ValueError | OSError | MemoryError) or _unloaded(exc) is not None
            or _missing(exc) is not None)


def _missing(exc: BaseException) -> str | None:
    """The package a ModuleNotFoundError says is not installed (None for a module of skel's own: the code's fault):
    torch on a machine set up to predict with --onnx alone, say."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    package = exc.name.partition(".")[0]
    return None if package in PACKAGES else package


def _unloaded(exc: BaseException) -> str | None:
    """The package whose compiled library would not load, for an ImportError naming one (else None: an import of
    Python code that fails is the code's fault). The package is the module that was importing it (torch for
    torch/_C.so); the failing import is the innermost frame of the traceback."""
    if not isinstance(exc, ImportError) or not (exc.path or "").endswith(tuple(EXTENSION_SUFFIXES)):
        return None
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return module.partition(".")[0] or os.path.basename(exc.path)


def error_message(exc: BaseException) -> str:
    """One line for an exception: a file system error names its path first, memory short of what was asked names
    the likely limit."""
    if isinstance(exc, SkelError | FileError) or (type(exc) is ValueError and str(exc)):  # it says what is wrong
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename is not None else exc.strerror
    if (package := _missing(exc)) is not None:
        return f"{package} is not installed here, and this command needs it" + (
            " (skel predict --onnx runs without it)" if package == "torch" else "")
    if isinstance(exc, MemoryError):
        return f"out of memory {MEMORY_LIMIT}" + (f": {exc}" if str(exc) else "")
    if (package := _unloaded(exc)) is not None:
        limit = f" {MEMORY_LIMIT}" if "map" in str(exc) or "memory" in str(exc).lower() else ""
        return f"cannot load {package}{limit}: {exc}"
    return " ".join(f"{type(exc).__name__}: {exc}".split("\n"))  # a library's message may run over lines


def shell(path: object) -> str:
    """A path as a command line to copy needs it: quoted when it holds spaces or other shell characters."""
    return shlex.quote(str(path))
