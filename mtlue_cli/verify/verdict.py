"""What `verify` found: per-task victim accuracies, the robustness profile per defence, and the verdict:
effective = every task within the threshold with no defence and under every defence, and the clean-trained
victim learnt every task (above the threshold itself); otherwise "not effective" (some task above it) or
"inconclusive" (nothing above it, but the originals were not learnt either, so a low score proves nothing).

The threshold counts from each task's no-skill baseline: the better of always answering the training
majority class and a uniform guess over its classes (0.5 for AUC). The majority class alone can score
below a guess on a test split where it happens to be rare (the demo's `shape`: 28% with 3 classes), and
would then ask a victim to be systematically wrong before the data counted as unlearnable.

With several victim seeds (`VerifyConfig.seeds`) every accuracy here is the mean over the seeds, the verdict
is judged on the mean, and the per-seed values are kept (`*_seeds`). A task is *within noise* of its
threshold when its mean is less than one standard deviation of the seeds (sample sd, n - 1) from the
threshold line: victims differing only in their seed land on both sides of it, so another set of seeds
could turn that verdict. One sd, not the standard error 2·sd/√N: victims are few (3), their sd is itself
rough, and the user's attacker trains one victim, whose spread is sd."""

from __future__ import annotations

import json
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
    chance: float = 0.0  # a uniform guess: 1 / classes (accuracy) or 0.5 (AUC)
    # One value per victim seed (the fields above hold their means); empty for a report built without seeds.
    by_defense_seeds: dict[str, list[float]] = field(default_factory=dict)
    clean_by_defense_seeds: dict[str, list[float]] = field(default_factory=dict)

    def sd(self, defense: str, clean: bool = False) -> float:
        """Sample standard deviation over the victim seeds of the (clean- or protected-)trained accuracy with
        `defense`; 0 with one seed."""
        return mean_sd((self.clean_by_defense_seeds if clean else self.by_defense_seeds).get(defense, []))[1]

    @property
    def baseline(self) -> float:
        """What a victim that learned nothing scores: the majority class, or a uniform guess where that is higher."""
        return max(self.majority, self.chance)

    @property
    def drop(self) -> float:
        return self.clean_acc - self.protected_acc

    def within(self, acc: float, threshold: float) -> bool:
        """`acc` (a victim's, on this task) at most `threshold` points above the no-skill baseline: protected."""
        return acc <= self.baseline + threshold / 100

    def within_noise(self, defense: str, threshold: float) -> bool:
        """The mean with `defense` is less than one seed sd from the threshold line: the verdict could turn."""
        sd = self.sd(defense)
        return sd > 0 and abs(self.by_defense[defense] - (self.baseline + threshold / 100)) < sd


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
    seconds: float = 0.0
    # "clean"/"protected" -> defence -> per epoch, per task test accuracy (the --plot curves)
    curves: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    detect: Any = None  # detect.Detectability with --detect
    plot: str | None = None  # the PNG written by --plot
    notes: list[str] = field(default_factory=list)  # things the run could not do, said plainly

    @property
    def broken_by(self) -> dict[str, list[str]]:
        """Defence -> the tasks above the threshold with it (which defence broke the protection, for what)."""
        return judge(self.tasks, self.threshold)

    @property
    def within_noise(self) -> dict[str, list[str]]:
        """Defence -> the tasks whose mean over the victim seeds is within one sd of the threshold line."""
        noisy: dict[str, list[str]] = {}
        for row in self.tasks:
            for defense in row.by_defense:
                if row.within_noise(defense, self.threshold):
                    noisy.setdefault(defense, []).append(row.task)
        return noisy

    @property
    def failing(self) -> list[str]:
        """Tasks above the threshold with no defence or under some defence."""
        return sorted({task for tasks in self.broken_by.values() for task in tasks})

    @property
    def unlearned(self) -> list[str]:
        """Tasks the victim trained on the originals did not learn either (within the threshold of the baseline):
        for them a low protected-trained score says nothing about the protection (too few epochs, noisy labels)."""
        return [t.task for t in self.tasks if t.within(t.clean_acc, self.threshold)]

    @property
    def verdict(self) -> str:
        """One of: "not effective" (some task above the threshold somewhere), "inconclusive" (none, but the
        clean-trained victim did not learn some task) or "effective"."""
        if self.broken_by:
            return "not effective"
        return "inconclusive" if self.unlearned else "effective"

    @property
    def effective(self) -> bool:
        """Every task within the threshold with no defence AND under each defence, on a set the clean victim learnt."""
        return self.verdict == "effective"

    @property
    def profile(self) -> list[DefenseProfile]:
        """Per defence, in `defenses` order: the clean- and protected-trained means and the verdict."""
        return robustness_profile(self.tasks, self.defenses, self.broken_by)

    def mean(self, attr: str) -> float:
        values = [getattr(t, attr) for t in self.tasks if getattr(t, attr) is not None]
        return sum(values) / len(values) if values else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(effective=self.effective, verdict=self.verdict, unlearned=self.unlearned, failing=self.failing,
                   broken_by=self.broken_by, within_noise=self.within_noise,
                   profile=[asdict(p) for p in self.profile])
        out["mean"] = {k: self.mean(k) for k in ("majority", "clean_acc", "protected_acc", "protected_train_acc")}
        out["mean"]["by_defense"] = {d: sum(t.by_defense[d] for t in self.tasks) / len(self.tasks) for d in self.defenses}
        # The task mean of each seed's victim, and its sd over the seeds (what a mean ± sd table shows).
        seeds = {d: [sum(v) / len(v) for v in zip(*(t.by_defense_seeds[d] for t in self.tasks))]
                 for d in self.defenses if all(d in t.by_defense_seeds for t in self.tasks)}
        out["mean"]["by_defense_seeds"] = seeds
        out["mean"]["by_defense_sd"] = {d: mean_sd(v)[1] for d, v in seeds.items()}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for fewer than two values) of the victims' accuracies."""
    if not values:
        return float("nan"), 0.0
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def judge(rows: list[TaskRow], threshold: float) -> dict[str, list[str]]:
    """Defence -> the tasks whose protected-trained accuracy is above baseline + threshold points with it.
    Empty means effective: every task within the threshold with no defence and under every squeeze."""
    broken: dict[str, list[str]] = {}
    for row in rows:
        for defense, acc in row.by_defense.items():
            if not row.within(acc, threshold):
                broken.setdefault(defense, []).append(row.task)
    return broken


def robustness_profile(rows: list[TaskRow], defenses: list[str], broken_by: dict[str, list[str]]) -> list[DefenseProfile]:
    """The robustness profile: per defence, the clean-trained and protected-trained means and the verdict."""
    out = []
    for d in defenses:
        clean = [r.clean_by_defense[d] for r in rows if d in r.clean_by_defense]
        prot = [r.by_defense[d] for r in rows if d in r.by_defense]
        broken = broken_by.get(d, [])
        out.append(DefenseProfile(d, sum(clean) / len(clean) if clean else None, sum(prot) / max(len(prot), 1), list(broken),
                                  "broken" if broken else "holds"))
    return out


def noise_text(report: VerifyReport) -> str:
    """'age after grayscale (24.0% ± 2.1, line 21.6%)': the tasks within noise of their threshold, in words."""
    parts = []
    for defense, tasks in report.within_noise.items():
        for task in tasks:
            row = next(r for r in report.tasks if r.task == task)
            where = "with no defence" if defense == "none" else f"after {defense}"
            parts.append(f"{task} {where} ({row.by_defense[defense]:.1%} ± {row.sd(defense):.1%}, line "
                         f"{row.baseline + report.threshold / 100:.1%})")
    return "; ".join(parts)


def broken_text(broken_by: dict[str, list[str]]) -> str:
    """'age, race with no defence; gender after jpeg10': which defence broke it, for which tasks, in words."""
    return "; ".join(f"{', '.join(tasks)} " + ("with no defence" if d == "none" else f"after {d}")
                     for d, tasks in broken_by.items())
