"""A generator fitted on a folder of labelled images: the recipe `auto` resolved for this machine, the images
decoded at the recipe's working size, the holdout left out. `mtlue fit` and `protect` without --generator
run it; `fit.fit_generator` is the training loop it calls on the decoded images.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlue_cli.config import DataConfig, FitConfig, make_config
from mtlue_cli.data.dataset import load_dataset
from mtlue_cli.data.labels import LabelTable
from mtlue_cli.errors import ConfigError, FileProblem
from mtlue_cli.events import OnEvent, log, noop
from mtlue_cli.recipes import FIT_RECIPES


def default_recipe(device: str = "auto") -> str:
    """The recipe `auto` stands for: `strong` where a CUDA GPU will run the fit, `cpu` elsewhere."""
    from mtlue_cli.models.engine import resolve_device

    return "strong" if resolve_device(device).type == "cuda" else "cpu"


def fit_config(recipe: str = "auto", **flags: Any) -> tuple[str, FitConfig]:
    """(recipe name, config): `auto` is `default_recipe` on the flags' device; then the recipe's values, then the
    flags that are not None."""
    if recipe == "auto":
        recipe = default_recipe(flags.get("device") or "auto")
    if recipe not in FIT_RECIPES:
        raise ConfigError(f"--recipe must be auto or one of {', '.join(FIT_RECIPES)}")
    return recipe, make_config(FitConfig, FIT_RECIPES[recipe], **flags)


@dataclass
class FitReport:
    result: Any  # fit.FitResult
    out: Path
    tasks: list[str]
    images: int  # the images the generator was fitted on
    skipped: list[FileProblem] = field(default_factory=list)  # --skip-bad: the files left out
    measures: list[str] = field(default_factory=list)  # per task, what its "accuracy" is: accuracy, or a label map's
    # agreement (pixel_accuracy, delta1, within_11.25)
    clusters: dict[str, list[int]] | None = None  # unlabelled images: members per cluster of each pseudo-task


def fit_folder(data: DataConfig, cfg: FitConfig, out: Path, on_event: OnEvent | None = None,
               table: LabelTable | None = None, exclude: set[str] | None = None, replace: bool = False) -> FitReport:
    """Decode `data` at the generator's working size (`cfg.image_size`), leave out the `exclude` paths, fit
    and write the generator to `out`. `out` may hold a generator only with cfg.resume or `replace`."""
    from mtlue_cli.fit.loop import fit_generator
    from mtlue_cli.models.persistence import WEIGHTS

    out = Path(out)
    if (out / WEIGHTS).exists() and not (cfg.resume or replace):
        raise ConfigError(f"{out} already holds a generator; choose another --out or pass --resume")
    dataset = load_dataset(dataclasses.replace(data, size=cfg.image_size), on_event, table=table)
    dataset = dataset.without(exclude or set())
    clusters = None
    if dataset.table.layout == "unlabelled":  # issue 30: k-means pseudo-tasks, and the labeller protect will use
        from mtlue_cli.fit import pseudo
        from mtlue_cli.models.persistence import save_labeller

        labeller = pseudo.cluster_labeller(dataset.images, cfg.clusters, cfg.seed)
        dataset = pseudo.relabelled(dataset, labeller)
        clusters = pseudo.cluster_counts(dataset)
        log(on_event or noop, f"no labels: fitting on {len(clusters)} pseudo-task(s) of k-means clusters of the images "
            f"({', '.join(f'{t}: {len(c)} clusters' for t, c in clusters.items())}); protect predicts them the same way. "
            "Clusters are not an attacker's labels: on faces they gave no protection against models trained on true "
            "labels (benchmarks/RESULTS.md). Forgot --labels? Stop now and pass them", "warning")
        save_labeller(labeller, out)
    result = fit_generator(dataset, cfg, out, on_event)
    return FitReport(result, out, list(dataset.spec.names), len(dataset), dataset.skipped,
                     [kind.agreement for kind in dataset.spec.kinds], clusters)
