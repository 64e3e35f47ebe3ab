"""The progress protocol between the library and the CLI (the library never prints, style rule 8).

A library function takes `on_event(kind, info)` and calls it with:
  ("start",    {"stage": str, "total": int | None, "description": str})
  ("progress", {"stage": str, "done": int, **metrics})   # metrics are shown next to the bar
  ("end",      {"stage": str})
  ("log",      {"message": str, "level": "info" | "warning"})
  ("victim",   {"trained_on": "clean" | "protected", "defense": str, "seed": int, "final": [float], "best": [float]})
               # verify: one victim done, its per-task test accuracy (a long run's partial results)
"""

from __future__ import annotations

from typing import Any, Callable

OnEvent = Callable[[str, dict[str, Any]], None]


def noop(kind: str, info: dict[str, Any]) -> None:
    pass


def log(on_event: OnEvent, message: str, level: str = "info") -> None:
    on_event("log", {"message": message, "level": level})
