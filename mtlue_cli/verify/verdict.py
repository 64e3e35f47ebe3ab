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
rough, and the user's attacker trains one victim, whose spread is sd.

A label-map task (segmentation, depth, normals; issue 28) is scored by its kind's primary metric (mIoU, absolute
depth error, mean angular error) and judged by its protection ratio (metrics.protection_ratio): the share of the
clean-trained victim's lead over the no-skill predictor (data.dense_kinds `trivial`) that the protected-trained
victim keeps. It counts as protected when that ratio is at most `VerifyConfig.dense_threshold` with no defence and
after each one (each ratio over the clean-trained victim's lead without defence); a task whose clean-trained victim
does not beat the no-skill predictor has no ratio and so no verdict ("inconclusive", as an unlearned class task).
Points and means over tasks stay the classification tasks' own: an error in metres does not average with accuracy."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from mtlue_cli.metrics import protection_ratio


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
    # The task's kind and the score its figures are (the kind's `primary`: accuracy, miou, abs_error, mean_angle).
    kind: str = ""
    metric: str = "accuracy"
    higher_is_better: bool = True
    # Label-map tasks only (None / empty otherwise): the largest protection ratio that counts as protected, every
    # score of the no-skill predictor, of the clean-trained victim (no defence) and of the protected-trained one per
    # defence (means over the victim seeds); `majority`, `clean_acc` and `by_defense` hold their `metric`.
    ratio_threshold: float | None = None
    trivial: dict[str, float] = field(default_factory=dict)
    clean_scores: dict[str, float] = field(default_factory=dict)
    scores_by_defense: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def dense(self) -> bool:
        """A label-map task: judged by its protection ratio, not in points."""
        return self.ratio_threshold is not None

    def ratio(self, value: float) -> float | None:
        """The protection ratio of a protected-trained `value` of this task's metric (None: the clean-trained victim
        did not beat the no-skill predictor)."""
        return protection_ratio(value, self.clean_acc, self.majority, self.higher_is_better)

    def ratios(self) -> dict[str, float | None]:
        """Defence -> the protection ratio of the protected-trained victim with it (label-map tasks; {} otherwise)."""
        return {d: self.ratio(v) for d, v in self.by_defense.items()} if self.dense else {}

    def line(self, threshold: float) -> float:
        """The protected-trained score at the threshold: baseline + `threshold` points, or for a label-map task the
        no-skill score plus `ratio_threshold` of the clean-trained victim's lead."""
        if self.ratio_threshold is not None:
            return self.majority + self.ratio_threshold * (self.clean_acc - self.majority)
        return self.baseline + threshold / 100

    def show(self, value: float) -> str:
        """A figure of this task as the report prints it: a percentage, or the label-map metric's own value."""
        return f"{value:.3g}" if self.dense else f"{value:.1%}"

    def learned(self, threshold: float) -> bool:
        """Whether the clean-trained victim learnt the task: above the threshold itself, or (label maps) better than
        the no-skill predictor, so that a ratio exists."""
        if self.dense:
            return self.ratio(self.clean_acc) is not None
        return not self.within(self.clean_acc, threshold)

    def sd(self, defense: str, clean: bool = False) -> float:
        """Sample standard deviation over the victim seeds of the (clean- or protected-)trained accuracy with
        `defense`; 0 with one seed."""
        return mean_sd((self.clean_by_defense_seeds if clean else self.by_defense_seeds).get(defense, []))[1]

    @property
    def baseline(self) -> float:
        """What a victim that learned nothing scores: the majority class, or a uniform guess where that is higher
        (label maps: the no-skill predictor's score)."""
        return self.majority if self.dense else max(self.majority, self.chance)

    @property
    def drop(self) -> float:
        return self.clean_acc - self.protected_acc

    def within(self, acc: float, threshold: float) -> bool:
        """`acc` (a victim's, on this task) at most `threshold` points above the no-skill baseline: protected. A
        label-map task: its protection ratio at most `ratio_threshold`, or no ratio (no verdict: `learned`)."""
        if self.ratio_threshold is not None:
            ratio = self.ratio(acc)
            return ratio is None or ratio <= self.ratio_threshold
        return acc <= self.baseline + threshold / 100

    def within_noise(self, defense: str, threshold: float) -> bool:
        """The mean with `defense` is less than one seed sd from the threshold line: the verdict could turn."""
        sd = self.sd(defense)
        if sd == 0 or not self.learned(threshold):
            return False
        return abs(self.by_defense[defense] - self.line(threshold)) < sd


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
    dense_threshold: float | None = None  # VerifyConfig.dense_threshold where there are label-map tasks
    sanity: bool = False  # the victims used mtlue's own predicted labels (issue 30): never "effective"

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
        return [t.task for t in self.tasks if not t.learned(self.threshold)]

    @property
    def verdict(self) -> str:
        """One of: "not effective" (some task above the threshold somewhere), "inconclusive" (none, but the
        clean-trained victim did not learn some task) or "effective"."""
        if self.broken_by:
            return "not effective"
        return "inconclusive" if self.unlearned or self.sanity else "effective"

    @property
    def effective(self) -> bool:
        """Every task within the threshold with no defence AND under each defence, on a set the clean victim learnt."""
        return self.verdict == "effective"

    @property
    def profile(self) -> list[DefenseProfile]:
        """Per defence, in `defenses` order: the clean- and protected-trained means and the verdict."""
        return robustness_profile(self.tasks, self.defenses, self.broken_by)

    @property
    def classified(self) -> list[TaskRow]:
        """The classification tasks: the ones whose figures are accuracies that average into the means."""
        return [t for t in self.tasks if not t.dense]

    def mean(self, attr: str) -> float:
        """The mean of a figure over the classification tasks (nan without any)."""
        values = [getattr(t, attr) for t in self.classified if getattr(t, attr) is not None]
        return sum(values) / len(values) if values else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(effective=self.effective, verdict=self.verdict, sanity=self.sanity, unlearned=self.unlearned, failing=self.failing,
                   broken_by=self.broken_by, within_noise=self.within_noise,
                   profile=[asdict(p) for p in self.profile])
        for row, task in zip(self.tasks, out["tasks"]):  # label maps: the ratio each verdict read
            ratios = row.ratios()
            task.update(ratio=ratios.get("none"), ratio_by_defense=ratios)
        rows = self.classified
        out["mean"] = {k: self.mean(k) for k in ("majority", "clean_acc", "protected_acc", "protected_train_acc")}
        out["mean"]["by_defense"] = {d: sum(t.by_defense[d] for t in rows) / len(rows) if rows else float("nan")
                                     for d in self.defenses}
        # The task mean of each seed's victim, and its sd over the seeds (what a mean ± sd table shows).
        seeds = {d: [sum(v) / len(v) for v in zip(*(t.by_defense_seeds[d] for t in rows))]
                 for d in self.defenses if rows and all(d in t.by_defense_seeds for t in rows)}
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


INFORMED = ("op", "ueraser-lite")  # the informed attacker's defences (verify.defenses.ADAPTIVE)


def informed_note(broken_by: dict[str, list[str]]) -> str | None:
    """What to tell a user whose protection an informed attacker's defence broke (issue 29): that no recipe we
    measured holds there, with the figures, and what the defence costs the attacker; None when none broke it."""
    hit = [d for d in INFORMED if d in broken_by]
    if not hit:
        return None
    return (f"{' and '.join(hit)} broke the protection, as expected: no recipe measured so far holds against "
            "orthogonal projection or UEraser-lite within 8/255. On UTKFace the default generator's victims reach "
            "54.1% (op) and 54.0% (ueraser-lite), as much as victims of the originals under the same defence (54.7%, "
            "57.6%), and every variant built against them (δ shifted per image, OP in the fit's loop, a luminance-only "
            "δ, hand-made class textures) did no better; no published method is shown to hold either "
            "(benchmarks/RESULTS.md, \"Informed attacker\"). What these defences cost the attacker is the drop of the "
            "clean-trained victim under them (12-15 points there).")


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
    """The robustness profile: per defence, the clean-trained and protected-trained means over the classification tasks
    (nan without any) and the verdict over every task."""
    out = []
    rows = [r for r in rows if not r.dense]
    for d in defenses:
        clean = [r.clean_by_defense[d] for r in rows if d in r.clean_by_defense]
        prot = [r.by_defense[d] for r in rows if d in r.by_defense]
        broken = broken_by.get(d, [])
        out.append(DefenseProfile(d, sum(clean) / len(clean) if clean else None,
                                  sum(prot) / len(prot) if prot else float("nan"), list(broken),
                                  "broken" if broken else "holds"))
    return out


def noise_text(report: VerifyReport) -> str:
    """'age after grayscale (24.0% ± 2.1, line 21.6%)': the tasks within noise of their threshold, in words."""
    parts = []
    for defense, tasks in report.within_noise.items():
        for task in tasks:
            row = next(r for r in report.tasks if r.task == task)
            where = "with no defence" if defense == "none" else f"after {defense}"
            parts.append(f"{task} {where} ({row.show(row.by_defense[defense])} ± {row.show(row.sd(defense))}, line "
                         f"{row.show(row.line(report.threshold))})")
    return "; ".join(parts)


def broken_text(broken_by: dict[str, list[str]]) -> str:
    """'age, race with no defence; gender after jpeg10': which defence broke it, for which tasks, in words."""
    return "; ".join(f"{', '.join(tasks)} " + ("with no defence" if d == "none" else f"after {d}")
                     for d, tasks in broken_by.items())
