"""User-facing errors: one line, naming the file or sample and what is wrong."""


class SkelError(Exception):
    """An error the CLI prints as a single line (no traceback) before exiting non-zero."""
