"""The `mtlue` command line: `app` (the commands in `commands`, the rendering in `render`) and `main`."""

from __future__ import annotations

from mtlue_cli.cli import commands, publishing  # noqa: F401 (register the commands on the app)
from mtlue_cli.cli.options import app

__all__ = ["app", "main"]


def main() -> None:
    app()
