"""Writing a file so that a reader, a crash or a full disk never leaves half of it under its final name; and
the digest that says whether a file is the one written."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp)` on a temporary beside `path`, then rename it over `path` (atomic on one file system).

    The temporary is hidden (image scans skip it) and named per process and thread (parallel runs may share a
    cache folder, and protect's threads write side by side); it is removed if `write` fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.mtlue-tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """`text` as UTF-8 with "\\n" line ends, written atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline="\n"))


def copy_file(source: Path, path: Path) -> None:
    """A copy of `source` at `path`, written atomically."""
    atomic_write(path, lambda tmp: shutil.copyfile(source, tmp))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
