"""What `verify` found: per-task victim accuracies, the robustness profile per defence, and the verdict
(effective = every task within the threshold with no defence and under every defence)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TaskRow:
    task: str
    majority: float
    clean_acc: float
    clean_best: float
    protected_acc: float  # defence "none"
    protected_best: float
    protected_train_acc: float  # the shortcut signature: high train, low test
    by_defense: dict[str, float] = field(default_factory=dict)
    stl_clean_acc: float | None = None
    stl_protected_acc: float | None = None
    clean_by_defense: dict[str, float] = field(default_factory=dict)  # the clean-trained victim under each defence

    @property
    def drop(self) -> float:
        return self.clean_acc - self.protected_acc


@dataclass
class DefenseProfile:
    """One defence's robustness figures, means over the tasks. The clean-trained figure is the defence's cost to
    clean data: a defence that costs clean data as much as protected data gives the attacker nothing."""

    defense: str
    clean_mean: float | None  # the victim trained on the originals, with this defence (None: not trained)
    protected_mean: float  # the victim trained on the protected files, with this defence
    broken: list[str]  # tasks above the threshold with it
    verdict: str  # "holds" | "broken"


@dataclass
class VerifyReport:
    tasks: list[TaskRow]
    defenses: list[str]
    train_images: int
    test_images: int
    quality: dict[str, float]
    recipe: dict[str, Any]
    threshold: float
    effective: bool  # every task within the threshold with no defence AND under each defence
    failing: list[str]  # tasks above the threshold (any defence)
    seconds: float
    broken_by: dict[str, list[str]] = field(default_factory=dict)  # defence -> tasks above the threshold with it
    profile: list[DefenseProfile] = field(default_factory=list)  # per defence, in `defenses` order
    # "clean"/"protected" -> defence -> per epoch, per task test accuracy (the --plot curves)
    curves: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    detect: Any = None  # detect.Detectability with --detect
    plot: str | None = None  # the PNG written by --plot
    notes: list[str] = field(default_factory=list)  # things the run could not do, said plainly

    def mean(self, attr: str) -> float:
        values = [getattr(t, attr) for t in self.tasks if getattr(t, attr) is not None]
        return sum(values) / len(values) if values else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"] = {k: self.mean(k) for k in ("majority", "clean_acc", "protected_acc", "protected_train_acc")}
        out["mean"]["by_defense"] = {d: sum(t.by_defense[d] for t in self.tasks) / len(self.tasks) for d in self.defenses}
        return out


def judge(rows: list[TaskRow], threshold: float) -> dict[str, list[str]]:
    """Defence -> the tasks whose protected-trained accuracy is above majority + threshold points with it.
    Empty means effective: every task within the threshold with no defence and under every squeeze."""
    broken: dict[str, list[str]] = {}
    for row in rows:
        for defense, acc in row.by_defense.items():
            if acc > row.majority + threshold / 100:
                broken.setdefault(defense, []).append(row.task)
    return broken


def profile(rows: list[TaskRow], defenses: list[str], broken_by: dict[str, list[str]]) -> list[DefenseProfile]:
    """The robustness profile: per defence, the clean-trained and protected-trained means and the verdict."""
    out = []
    for d in defenses:
        clean = [r.clean_by_defense[d] for r in rows if d in r.clean_by_defense]
        prot = [r.by_defense[d] for r in rows if d in r.by_defense]
        broken = broken_by.get(d, [])
        out.append(DefenseProfile(d, sum(clean) / len(clean) if clean else None, sum(prot) / max(len(prot), 1), list(broken),
                                  "broken" if broken else "holds"))
    return out
