"""Typed errors. Messages say what is wrong and what to do; the CLI prints them as one red line."""

from __future__ import annotations


class MtlueError(Exception):
    """Base class. `exit_code` is what the CLI exits with (style rule 7)."""

    exit_code = 1


class ConfigError(MtlueError):
    """A bad option or option combination: a usage error."""

    exit_code = 2


class DatasetError(MtlueError):
    """Labels or images that cannot be used as given."""


class WeightsError(MtlueError):
    """A generator that cannot be found, trusted or loaded."""


class Interrupted(MtlueError):
    """Ctrl-C: the run stopped cleanly and can be resumed."""

    exit_code = 130


class FileProblem(MtlueError):
    """One input file that cannot be used (missing, unreadable, outside the root...).

    Raised per file; with ``--skip-bad`` the caller records it instead of stopping.
    """

    def __init__(self, path: str, reason: str, row: int | None = None) -> None:
        self.path, self.reason, self.row = path, reason, row
        where = f"{path} (labels row {row})" if row is not None else path
        super().__init__(f"{where}: {reason}")
