"""What the readers produce: the tasks with their vocabularies and kinds (`TaskSpec`), one labelled image
(`Record`) and the whole table with its problems (`LabelTable`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mtlue_cli.data.kinds import TaskKind, kinds_of
from mtlue_cli.errors import FileProblem, examples


@dataclass(frozen=True)
class TaskSpec:
    """Task names and class vocabularies (as the user wrote them; index = position)."""

    names: tuple[str, ...]
    classes: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.classes):
            raise ValueError("one class list per task")

    @property
    def num_classes(self) -> list[int]:
        return [len(c) for c in self.classes]

    @property
    def kinds(self) -> list[TaskKind]:
        """Each task's kind (data.kinds): how its labels are lossed, predicted, scored and baselined."""
        return kinds_of(self.num_classes)

    @property
    def binary(self) -> tuple[bool, ...]:
        """Binary tasks get one logit and BCE (method-spec §3.2); the rest get CE."""
        return tuple(kind.name == "binary" for kind in self.kinds)

    def to_dict(self) -> dict[str, list[str]]:
        return {name: list(cls) for name, cls in zip(self.names, self.classes)}

    @classmethod
    def from_dict(cls, tasks: dict[str, list[str]]) -> TaskSpec:
        return cls(tuple(tasks), tuple(tuple(str(c) for c in v) for v in tasks.values()))


@dataclass(frozen=True)
class Record:
    """One labelled image: a POSIX path relative to the root, class indices, labels-file row."""

    path: str
    labels: tuple[int, ...]
    row: int | None = None


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
