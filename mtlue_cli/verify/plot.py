"""`verify --plot FILE`: the victims' test accuracy per epoch, one panel per task, as a PNG.

matplotlib is an optional extra (`pip install "mtlue[plot]"`); without it verify runs as usual and says
how to get the plot. Only matplotlib's object API is used (no pyplot), so no global backend is touched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mtlue_cli.errors import ConfigError
from mtlue_cli.files import atomic_write

INSTALL_HINT = 'the plot needs matplotlib: pip install "mtlue[plot]"'


def missing() -> str | None:
    """None when the plot can be drawn; otherwise what to install."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return INSTALL_HINT
    return None


def plot_curves(report: Any, path: Path | str) -> Path:
    """Write `report.curves` (VerifyReport) as a PNG (`figure`). Returns the path."""
    fig = figure(report)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight"))
    return path


def figure(report: Any) -> Any:
    """A matplotlib Figure, one panel per task: a solid line per protected-trained victim, a dotted one per
    clean-trained victim, one colour per defence, the majority baseline dashed."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    tasks = report.tasks
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig = Figure(figsize=(max(4.2 * cols, 6.4), 3.2 * rows + 1.0), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colours = {d: f"C{i % 10}" for i, d in enumerate(report.defenses)}
    styles = {"clean": ":", "protected": "-"}
    metric = "AUC" if report.recipe.get("metric") == "auc" else "test accuracy"
    for k, (ax, row) in enumerate(zip(axes, tasks)):
        for defense in report.defenses:
            for trained, style in styles.items():
                curve = report.curves.get(trained, {}).get(defense)
                if curve:
                    ax.plot(range(1, len(curve) + 1), [epoch[k] for epoch in curve], style, color=colours[defense],
                            marker="." if len(curve) < 3 else None)
        ax.axhline(row.baseline, color="black", linestyle="--", linewidth=1)  # the verdict's baseline
        ax.set_title(row.task)
        ax.set_xlabel("epoch")
        dense = getattr(row, "dense", False)  # a label map: its own score (depth error in metres, angles in degrees)
        ax.set_ylabel(f"{row.metric} ({'higher' if row.higher_is_better else 'lower'} = better)" if dense else metric)
        if not dense or row.metric in ("miou", "pixel_accuracy"):
            ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    # One legend entry per defence (its colour), then the two line styles and the baseline.
    handles = [Line2D([], [], color=colours[d], label=d) for d in report.defenses]
    handles += [Line2D([], [], color="black", linestyle="-", label="trained on the protected files"),
                Line2D([], [], color="black", linestyle=":", label="trained on the originals"),
                Line2D([], [], color="black", linestyle="--", linewidth=1, label="majority class (or a guess, if higher)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3 * cols + 1), fontsize="small")
    fig.suptitle("victims tested on clean images (lower is better for you)")
    return fig
