"""Typed errors. Messages say what is wrong and what to do; the CLI prints them as one red line."""

from __future__ import annotations

SHOWN = 5  # file names quoted in one line


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


class BadFiles(DatasetError):
    """Some input files cannot be used and --skip-bad was not given. `problems` lists them for the CLI."""

    def __init__(self, message: str, problems: list[FileProblem]) -> None:
        self.problems = problems
        super().__init__(message)


class ProtectFailed(MtlueError):
    """--strict: a file failed, so the run stopped (exit code 3, ecosystem §3.2)."""

    exit_code = 3


class PublishRefused(MtlueError):
    """The folder is not safe or not complete enough to publish. `problems` lists the files."""

    def __init__(self, message: str, problems: list[FileProblem] | None = None) -> None:
        self.problems = problems or []
        super().__init__(message)


class PublishError(MtlueError):
    """The Hub refused or could not be reached."""


def examples(paths: list[str], shown: int = SHOWN) -> str:
    """'a, b, c, d, e ...': the first few names of a list that may be thousands long, for one line."""
    return ", ".join(paths[:shown]) + (" ..." if len(paths) > shown else "")


def raise_problems(problems: list[FileProblem], what: str = "input") -> None:
    """Stop on the per-file problems of a run without --skip-bad (the CLI lists them)."""
    if problems:
        raise BadFiles(f"{len(problems)} bad {what} file(s); fix them or pass --skip-bad to skip and report them",
                       problems)


def problems_of(error: BaseException) -> list[FileProblem]:
    """The files a BadFiles error is about (none for any other error)."""
    return list(error.problems) if isinstance(error, BadFiles) else []
