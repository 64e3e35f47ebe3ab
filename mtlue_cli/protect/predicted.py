"""Labels for images that lack some or all of a generator's tasks (issue 30): the generator's labeller
(`models.labeller`, saved beside it) predicts them, `protect` says so, and OUT/predicted_labels.csv records them
by the originals' paths (what `verify` checks against when no true labels are given, as a sanity check only).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

from mtlue_cli.config import DataConfig
from mtlue_cli.data.tasks import LabelTable, TaskSpec
from mtlue_cli.errors import DatasetError
from mtlue_cli.events import OnEvent, log
from mtlue_cli.files import atomic_write
from mtlue_cli.protect.outputs import PREDICTED


def predict_missing(table: LabelTable, loaded: Any, data: DataConfig,
                    on_event: OnEvent) -> tuple[LabelTable, list[str], set[str]]:
    """`table` with the generator's tasks it lacks predicted by the generator's labeller (appended as tasks in the
    generator's vocabulary), the names of those tasks and the paths of the images predicted; `table` unchanged when
    nothing is to be predicted. An image that cannot be decoded gets no guess: class 0 in `table` (protect fails on
    it again and reports it), and no row in predicted_labels.csv."""
    import torch

    from mtlue_cli.data.dataset import load_dataset
    from mtlue_cli.fit.pseudo import predict

    tasks, labeller = loaded.model.tasks, loaded.labeller
    missing = [t for t in tasks if t not in table.spec.names]
    if labeller is None or not missing:
        if not table.spec.names:
            raise DatasetError(f"{table.root}: these images have no labels, and the generator {loaded.spec!r} has no "
                               "labeller to predict its tasks: pass --labels, or fit a generator on the images "
                               "(`mtlue fit` clusters unlabelled images into pseudo-labels)")
        return table, [], set()
    names = [t for t in missing if labeller.tasks.get(t) == list(tasks[t])]
    if len(names) < len(missing):  # a labeller of other classes is no use for these tasks: said, not hidden
        log(on_event, f"the generator's labeller does not predict {', '.join(t for t in missing if t not in names)} "
            "in the generator's classes; those tasks cannot be predicted", "warning")
    if not names:
        return table, [], set()
    bare = dataclasses.replace(table, spec=TaskSpec((), ()), problems=[],
                               records=[dataclasses.replace(r, labels=(), maps=()) for r in table.records])
    # Decoded at the generator's working size, as fit decoded them: the same images get the same pseudo-labels.
    decoded = load_dataset(dataclasses.replace(data, size=loaded.model.image_size, skip_bad=True, maps=(), map_columns=()),
                           on_event, table=bare)
    columns = [list(labeller.tasks).index(t) for t in names]
    guessed = {r.path: row for r, row in zip(decoded.records, predict(labeller, decoded.images)[:, columns].tolist())}
    records = []
    for r in table.records:
        extra = tuple(guessed.get(r.path, [0] * len(names)))
        records.append(dataclasses.replace(r, labels=r.labels + extra, maps=r.maps + (None,) * len(names) if r.maps else ()))
    spec = table.spec
    kinds = tuple(k.name for k in spec.kinds) + tuple("binary" if len(tasks[t]) == 2 else "multiclass" for t in names)
    spec = TaskSpec(spec.names + tuple(names), spec.classes + tuple(tuple(tasks[t]) for t in names),
                    kinds if spec.kind_names else ())
    counts = {t: torch.bincount(torch.tensor([g[j] for g in guessed.values()], dtype=torch.long),
                                minlength=len(tasks[t])).tolist() for j, t in enumerate(names)}
    log(on_event, f"predicted {', '.join(names)} for {len(guessed)} image(s) with the generator's "
        f"{labeller.kind} labeller (" + "; ".join(f"{t}: " + ", ".join(f"{c} {n}" for c, n in zip(tasks[t], counts[t]) if n)
                                                  for t in names) + f"); recorded in {PREDICTED}", "warning")
    return dataclasses.replace(table, spec=spec, records=records), names, set(guessed)


def write_predicted(out: Path, table: LabelTable, names: list[str], guessed: set[str]) -> None:
    """OUT/predicted_labels.csv: each predicted original's path (relative to the originals' folder; those in
    `guessed`), then its predicted class per predicted task."""
    columns = [table.spec.names.index(t) for t in names]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", *names])
            writer.writerows([r.path, *(table.spec.classes[k][r.labels[k]] for k in columns)] for r in table.records
                             if r.path in guessed)

    atomic_write(out / PREDICTED, write)


def labelled_as_originals(prot: Any, clean: Any, sources: dict[str, str]) -> Any:
    """The protected images (a MultiTaskImageDataset) with their originals' labels from `clean`: how `verify` trains
    the attacker on a folder whose labels were predicted. The attacker has true labels of their own; the
    generator's guesses in labels.csv are not theirs. Images whose original is not in `clean` are left out."""
    from mtlue_cli.data.dataset import MultiTaskImageDataset

    index = {r.path: i for i, r in enumerate(clean.records)}
    rows = [index.get(sources.get(r.path, r.path)) for r in prot.records]
    keep = [j for j, i in enumerate(rows) if i is not None]
    prot = prot.subset(keep)
    idx = [rows[j] for j in keep]
    return MultiTaskImageDataset(clean.table, prot.images, clean.labels[idx], prot.records, prot.skipped,
                                 [None if m is None else m[idx] for m in clean.maps])
