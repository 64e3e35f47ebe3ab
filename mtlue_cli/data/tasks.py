"""What the readers produce: the tasks with their vocabularies and kinds (`TaskSpec`), one labelled image
(`Record`) and the whole table with its problems (`LabelTable`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from mtlue_cli.data.kinds import TaskKind, kind_named, kinds_of
from mtlue_cli.errors import ConfigError, FileProblem, examples

CLASSIFICATION = ("multiclass", "binary")
TaskEntry = Union[list[str], dict[str, Any]]  # one task in `TaskSpec.to_dict`


@dataclass(frozen=True)
class TaskSpec:
    """Task names, class vocabularies (as the user wrote them; index = position) and, where a task's kind does
    not follow from its class count, the kinds.

    `kind_names` is () when every task is a classification task (its kind follows from its class count, so every
    spec written before issue 28 is unchanged), else one name per task (data.kinds.kind_named). Segmentation
    tasks have class names ("0".."C-1" unless an id2label.json names them); depth and normals tasks have none.
    """

    names: tuple[str, ...]
    classes: tuple[tuple[str, ...], ...]
    kind_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.names) != len(self.classes):
            raise ValueError("one class list per task")
        if self.kind_names:
            if len(self.kind_names) != len(self.names):
                raise ValueError("one kind per task, or none for classification tasks only")
            for name, classes in zip(self.kind_names, self.classes):
                kind_named(name, len(classes))  # raises on an unknown kind or a class count it cannot have
            if all(k in CLASSIFICATION for k in self.kind_names):
                object.__setattr__(self, "kind_names", ())  # one spelling per spec: equal specs compare equal

    @property
    def num_classes(self) -> list[int]:
        """Classes per task (0 for depth and normals)."""
        return [len(c) for c in self.classes]

    @property
    def kinds(self) -> list[TaskKind]:
        """Each task's kind (data.kinds): how its labels are lossed, predicted, scored and baselined."""
        if not self.kind_names:
            return kinds_of(self.num_classes)
        return [kind_named(k, n) for k, n in zip(self.kind_names, self.num_classes)]

    @property
    def binary(self) -> tuple[bool, ...]:
        """Binary tasks get one logit and BCE (method-spec §3.2); the rest get CE."""
        return tuple(kind.name == "binary" for kind in self.kinds)

    @property
    def dense(self) -> tuple[bool, ...]:
        """Label-map tasks (segmentation, depth, normals): targets in `MultiTaskImageDataset.maps`, not `labels`."""
        return tuple(kind.dense for kind in self.kinds)

    def generator_tasks(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        """The two arguments a `PerturbationGenerator` takes for these tasks: name -> class names (none for depth and
        normals) and name -> kind for the label-map tasks only."""
        tasks = {name: list(classes) for name, classes in zip(self.names, self.classes)}
        return tasks, {name: kind.name for name, kind in zip(self.names, self.kinds) if kind.dense}

    @classmethod
    def from_generator(cls, tasks: dict[str, list[str]], task_kinds: dict[str, str] | None = None) -> TaskSpec:
        """Inverse of `generator_tasks`: the spec of a generator's `tasks` and `task_kinds`."""
        task_kinds = task_kinds or {}
        classes = tuple(tuple(str(c) for c in v) for v in tasks.values())
        kinds = tuple(task_kinds.get(name) or ("binary" if len(c) == 2 else "multiclass")
                      for name, c in zip(tasks, classes))
        return cls(tuple(tasks), classes, kinds)

    def to_dict(self) -> dict[str, TaskEntry]:
        """JSON form (a generator's config.json `tasks`): name -> class list for a classification task, as before
        issue 28; name -> {"kind": ..., "classes": [...]} for a label-map task ("classes" for segmentation only)."""
        out: dict[str, TaskEntry] = {}
        for name, classes, kind in zip(self.names, self.classes, self.kinds):
            if not kind.dense:
                out[name] = list(classes)
            else:
                out[name] = {"kind": kind.name, **({"classes": list(classes)} if kind.name == "segmentation" else {})}
        return out

    @classmethod
    def from_dict(cls, tasks: dict[str, TaskEntry]) -> TaskSpec:
        """Inverse of `to_dict`; reads every `tasks` mapping written before issue 28 (all lists)."""
        classes: list[tuple[str, ...]] = []
        kinds: list[str | None] = []
        for name, entry in tasks.items():
            if isinstance(entry, dict):
                unknown = set(entry) - {"kind", "classes"}
                if "kind" not in entry or unknown:
                    raise ValueError(f"task {name!r}: expected {{'kind': ..., 'classes': [...]}}, got {entry!r}")
                kinds.append(str(entry["kind"]))
                entry = entry.get("classes", [])
            else:
                kinds.append(None)
            classes.append(tuple(str(c) for c in entry))
        if all(k is None for k in kinds):
            return cls(tuple(tasks), tuple(classes))
        named = tuple(k or ("binary" if len(c) == 2 else "multiclass") for k, c in zip(kinds, classes))
        return cls(tuple(tasks), tuple(classes), named)


@dataclass(frozen=True)
class Record:
    """One labelled image: a POSIX path relative to the root, class indices, labels-file row, label maps.

    `labels` holds one entry per task: the class index of a classification task, 0 for a label-map task.
    `maps` is () when the spec has no label-map task, else one entry per task: None for a classification task,
    the map file of a label-map task (relative POSIX to the image root when under it, else absolute:
    `root / maps[k]` opens it either way).
    """

    path: str
    labels: tuple[int, ...]
    row: int | None = None
    maps: tuple[str | None, ...] = ()


@dataclass
class LabelTable:
    """What every reader returns."""

    root: Path
    spec: TaskSpec
    records: list[Record]
    layout: str
    labels_file: Path | None = None
    path_column: str = "path"
    problems: list[FileProblem] = field(default_factory=list)

    @property
    def unlabelled(self) -> list[str]:
        """Images under the root that no label row names (CSV layouts): left out of training, never protected."""
        return [p.path for p in self.problems if p.reason == UNLABELLED]

    @property
    def bad(self) -> list[FileProblem]:
        """The label rows that cannot be used (missing file, unknown class, duplicate...)."""
        return [p for p in self.problems if p.reason != UNLABELLED]


UNLABELLED = "image has no label row; add one or move the file out of the root"


def unlabelled_note(table: LabelTable) -> str:
    """One line for the images without a label row, however many there are."""
    paths = table.unlabelled
    return f"{len(paths)} image(s) in {table.root} have no label row (e.g. {examples(paths)})"
