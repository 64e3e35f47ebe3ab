"""Checks of one configuration value, each raising a ConfigError that names the flag, the value and what is allowed
(style rule 7): a choice, an integer or a number in a range, a list of epochs."""

from __future__ import annotations

import math
from typing import Any

from mtlue_cli.errors import ConfigError


def bad(name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"--{name.replace('_', '-')} {value!r} is not allowed: use {allowed}")


def choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise bad(name, value, "one of " + ", ".join(map(str, allowed)))


def integer(name: str, value: Any, low: int, high: int | None = None, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
        raise bad(name, value, allowed + (", or none" if optional else ""))


def integers(name: str, values: Any, low: int, high: int, most: int) -> None:
    """1 to `most` different integers, each from `low` to `high` (e.g. --clusters 2,5,10)."""
    if not values or len(values) > most or len(set(values)) < len(values):
        raise bad(name, ",".join(map(str, values or ())) or "none", f"1 to {most} different integers, e.g. 2,5,10")
    for value in values:
        integer(name, value, low, high)


def number(name: str, value: Any, low: float, high: float = math.inf, *, low_open: bool = False,
            high_open: bool = False, optional: bool = False, shown: str = "") -> None:
    """`value` in the interval from `low` to `high`, each end open or closed (shown as `shown` if given)."""
    if optional and value is None:
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if not number or value < low or (low_open and value == low) or value > high or (high_open and value == high):
        if not shown and high == math.inf:
            shown = f"{'>' if low_open else '>='} {low:g}"
        elif not shown:
            shown = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise bad(name, value, f"a number {shown}" + (", or none" if optional else ""))


def milestones(name: str, value: Any) -> None:
    if value is not None:
        for epoch in value:
            integer(name, epoch, 0)
