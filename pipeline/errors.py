"""User-facing errors: one line, naming the file or sample and what is wrong."""

from __future__ import annotations

import os


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


class FileError(ValueError):
    """A file that cannot be used; the message is ``<path>: <problem>``."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def error_message(exc: BaseException) -> str:
    """One line for an exception: a file system error names its path first."""
    if isinstance(exc, SkelError | FileError) or (type(exc) is ValueError and str(exc)):  # it says what is wrong
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename is not None else exc.strerror
    return " ".join(f"{type(exc).__name__}: {exc}".split("\n"))  # a library's message may run over lines
