"""What `verify` does per task kind, so that label-map tasks (segmentation, depth, normals; issue 28) train and score
beside the class labels: the protected folder read with its maps, the protected labels put in the originals'
vocabularies (and the maps checked to be the originals'), each task's no-skill baseline on the centre crops the
victims are scored on, the best epoch per task, the seeds' scores averaged, and the random targets that time a step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlue_cli.config import DataConfig
from mtlue_cli.data.tasks import TaskSpec
from mtlue_cli.errors import DatasetError
from mtlue_cli.protect import outputs

if TYPE_CHECKING:
    import torch

    from mtlue_cli.data.dataset import MultiTaskImageDataset


def protected_config(clean: DataConfig, spec: TaskSpec, protected: Path, res: int) -> DataConfig:
    """How verify reads OUT: labels.csv holds `path`, then a class name per classification task and, per label-map
    task, the path (relative to OUT) of `protect`'s byte-identical copy of the original map; the maps are read as
    the originals are (their void value and depth scale)."""
    columns = tuple(f"{name}={kind.name}" for name, kind in zip(spec.names, spec.kinds) if kind.dense)
    return outputs.protected_data_config(protected, res, map_columns=columns, ignore_index=clean.ignore_index,
                                         depth_scale=clean.depth_scale, skip_bad=clean.skip_bad, workers=clean.workers)


def align(prot: MultiTaskImageDataset, spec: TaskSpec) -> MultiTaskImageDataset:
    """`prot` with its class indices in the originals' vocabularies `spec` (matched by name: vocabularies are sorted
    per set and could differ in coverage); its label-map tasks must be of the originals' kinds."""
    import torch

    from mtlue_cli.data.dataset import MultiTaskImageDataset

    if prot.spec.names != spec.names:
        raise DatasetError(f"the protected labels have tasks {list(prot.spec.names)}, the clean ones {list(spec.names)}")
    labels = prot.labels.clone()
    for k, (kind, theirs) in enumerate(zip(spec.kinds, prot.spec.kinds)):
        name = spec.names[k]
        if kind.dense or theirs.dense:  # a map's values are the original file's: class indices need no renaming
            if kind.name != theirs.name:
                raise DatasetError(f"task {name!r} is {theirs.name} in the protected labels, {kind.name} in the clean ones")
            if getattr(theirs, "classes", 0) > getattr(kind, "classes", 0):
                raise DatasetError(f"the protected {name!r} maps hold class indices up to {theirs.classes - 1}, the "
                                   f"originals' only up to {kind.classes - 1}")
            continue
        index = {c: i for i, c in enumerate(spec.classes[k])}
        unknown = [c for c in prot.spec.classes[k] if c not in index]
        if unknown:
            raise DatasetError(f"protected labels use class(es) {unknown} of task {name!r} absent from the clean labels")
        labels[:, k] = torch.tensor([index[c] for c in prot.spec.classes[k]])[prot.labels[:, k]]
    return MultiTaskImageDataset(prot.table, prot.images, labels, prot.records, prot.skipped, prot.maps)


def check_maps(prot: MultiTaskImageDataset, originals: MultiTaskImageDataset, sources: dict[str, str]) -> None:
    """Every protected label map must be its original's (`protect` copies maps unchanged): a victim trained on other
    maps would measure them, not the perturbation. Raises naming the first file that differs."""
    import torch

    by_path = {r.path: i for i, r in enumerate(originals.records)}
    pairs = [(i, by_path[s]) for i, r in enumerate(prot.records) if (s := sources.get(r.path, r.path)) in by_path]
    if not pairs:
        return
    mine, theirs = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    for k, maps in enumerate(prot.maps):
        if maps is None:
            continue
        differs = (maps[mine] != originals.maps[k][theirs]).flatten(1).any(1).nonzero().flatten()
        if len(differs):
            i, j = pairs[int(differs[0])]
            raise DatasetError(
                f"{prot.table.root / prot.records[i].maps[k]}: the {prot.spec.names[k]!r} label map of "
                f"{prot.records[i].path} is not its original's ({originals.table.root / originals.records[j].maps[k]}; "
                f"{len(differs)} map(s) differ). protect copies label maps unchanged: check --clean and the --map / "
                "--map-column options against the originals it read, or protect again")


def baselines(kinds: Sequence[Any], train: MultiTaskImageDataset, test: MultiTaskImageDataset, crop: int,
              metric: str = "acc") -> tuple[list[float], list[dict[str, float]]]:
    """Per task, the no-skill score a victim must beat (the kind's primary) and every score of that predictor: the
    training majority class (0.5 for AUC; no scores kept), or for a label map its kind's `trivial` predictor fitted on
    `train`'s maps and scored on `test`'s, both centre-cropped as the victims are scored."""
    from mtlue_cli.models.engine import center_crop

    train_t, test_t = train.targets(list(range(len(train)))), test.targets(list(range(len(test))))
    primary, scores = [], []
    for k, kind in enumerate(kinds):
        if kind.dense:
            trivial = kind.trivial(center_crop(train_t[k], crop), center_crop(test_t[k], crop))
            primary.append(trivial[kind.primary])
            scores.append(trivial)
        else:
            primary.append(kind.majority(train_t[k], test_t[k]) if metric == "acc" else 0.5)
            scores.append({})
    return primary, scores


def best_scores(history: list[dict[str, Any]], kinds: Sequence[Any]) -> list[float]:
    """The best epoch's test scores: the epoch with the best task mean (classification), or with label maps each
    task's own best (a mean of accuracies and errors has no best)."""
    if not any(kind.dense for kind in kinds):
        return max(history, key=lambda r: r["test_acc"])["test_acc_tasks"]
    curves = [[r["test_acc_tasks"][k] for r in history] for k in range(len(kinds))]
    return [max(c) if kind.higher_is_better else min(c) for c, kind in zip(curves, kinds)]


def mean_scores(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Each score's mean over the victim seeds."""
    return {key: sum(s[key] for s in per_seed) / len(per_seed) for key in per_seed[0]} if per_seed else {}


def random_targets(kinds: Sequence[Any], batch: int, crop: int) -> Any:
    """Targets of the right shapes and kinds for timing a training step: (B, K) class indices, or one per task."""
    import torch

    if not any(kind.dense for kind in kinds):
        return torch.stack([torch.randint(0, kind.classes, (batch,)) for kind in kinds], 1)
    out: list[torch.Tensor] = []
    for kind in kinds:
        if kind.name == "segmentation":
            out.append(torch.randint(0, kind.classes, (batch, crop, crop)))
        elif kind.name == "depth":
            out.append(torch.rand(batch, 1, crop, crop) + 0.1)
        elif kind.name == "normals":
            out.append(torch.nn.functional.normalize(torch.randn(batch, 3, crop, crop), dim=1))
        else:
            out.append(torch.randint(0, kind.classes, (batch,)))
    return out


def classification(kinds: Sequence[Any]) -> list[int]:
    """The indices of the classification tasks (what orthogonal projection and the linear probe can use)."""
    return [k for k, kind in enumerate(kinds) if not kind.dense]
