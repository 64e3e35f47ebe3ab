"""The Typer app, the options several commands share (aliases and option groups), and the option -> config
helpers (a flag's text parsed into a config value).

Nothing here imports torch, so `mtlue --help` answers instantly (style rule 2).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from mtlue_cli import __version__
from mtlue_cli.cli.render import out_console
from mtlue_cli.config import (
    DEVICES_HELP,
    EPSILON_PRESETS,
    LAYOUTS,
    MAX_EPSILON,
    SPLITS,
    DataConfig,
)
from mtlue_cli.errors import ConfigError

app = typer.Typer(
    name="mtlue",
    help=(
        "Make an image dataset unlearnable: models trained on the protected copies learn nothing useful "
        "(MTL-UE, Yu et al., ICML 2025).\n\n"
        "Typical run: [bold]mtlue inspect[/] -> [bold]mtlue fit[/] -> [bold]mtlue protect[/] -> "
        "[bold]mtlue verify[/]. Try [bold]mtlue demo[/] first: it needs no data of your own."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

DataArg = Annotated[Path, typer.Argument(help="Folder that holds the images.", show_default=False)]
LabelsOpt = Annotated[Optional[Path], typer.Option("--labels", "-l", help="Labels file: CSV/TSV (first column = path relative to DATA) or CelebA list_attr_celeba.txt. Omit for a folder tree or UTKFace names.")]
ClustersOpt = Annotated[Optional[str], typer.Option(help="Images without labels: the k-means pseudo-tasks to fit on, one per cluster count (default 2,5,10).")]
LayoutOpt = Annotated[str, typer.Option(help=f"Label layout: {'|'.join(LAYOUTS)}.")]
PathColumnOpt = Annotated[Optional[str], typer.Option(help="CSV column holding the image paths (default: the first).")]
TasksOpt = Annotated[Optional[str], typer.Option(help="Comma-separated task columns to use (default: all but the path column); names the levels of a folder tree.")]
PartitionOpt = Annotated[Optional[Path], typer.Option(help="CelebA list_eval_partition.txt.")]
SplitOpt = Annotated[str, typer.Option(help=f"CelebA partition to use with --partition: {'|'.join(SPLITS)}.")]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Skip unusable files and report them instead of stopping.")]
DeviceOpt = Annotated[str, typer.Option(help=f"{DEVICES_HELP} (auto: CUDA, then MPS, then CPU).")]
SeedOpt = Annotated[int, typer.Option(help="Random seed (recorded in the outputs).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
WorkersOpt = Annotated[int, typer.Option(help="Image decode/encode threads.")]
AmpOpt = Annotated[str, typer.Option(help="auto|bf16|fp16|off (CUDA only).")]


def names(text: str | None) -> tuple[str, ...] | None:
    """'a, b,c' -> ('a', 'b', 'c'); None or '' -> None."""
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else None


def parse_clusters(text: str | None) -> tuple[int, ...] | None:
    """'2,5,10' -> (2, 5, 10): one k-means pseudo-task per count (FitConfig.clusters); None or '' -> None."""
    if not text:
        return None
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"--clusters {text!r}: give cluster counts separated by commas, e.g. 2,5,10") from None


def parse_epsilon(text: str) -> float:
    """'8/255', '0.0314', '8' (read as /255) or a preset name -> a fraction in (0, 1)."""
    text = text.strip().lower()
    if text in EPSILON_PRESETS:
        return EPSILON_PRESETS[text]
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
            if value >= 1:  # integers like 8 mean 8/255, as the research CLIs write it
                value /= 255
    except ValueError:
        raise ConfigError(
            f"epsilon {text!r} is not a number: write e.g. 8/255, 0.0314, 8 or one of "
            f"{', '.join(EPSILON_PRESETS)}"
        ) from None
    if not 0 < value <= MAX_EPSILON:
        raise ConfigError(f"epsilon {text!r} = {value:.4f} is outside (0, 64/255]")
    return value


def parse_duration(text: str) -> float:
    """'15m', '1h', '90s', '900' (seconds) -> seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        value = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        raise ConfigError(f"duration {text!r} is not one: write e.g. 15m, 1h, 90s or 900 (seconds)") from None
    if value <= 0:
        raise ConfigError(f"duration {text!r} must be positive")
    return value


@dataclass(frozen=True)
class LabelOptions:
    """How a labels file is read: the options every command that reads labels shares (DataConfig's fields)."""

    layout: LayoutOpt = "auto"
    path_column: PathColumnOpt = None
    tasks: TasksOpt = None


@dataclass(frozen=True)
class ReadOptions(LabelOptions):
    """The label options and the CelebA partition: how inspect, fit and protect read DATA."""

    partition: PartitionOpt = None
    split: SplitOpt = "train"

    def data_config(self, data: Path, labels: Path | None, skip_bad: bool, workers: int) -> DataConfig:
        """The DATA options as a DataConfig (which checks them). The working size is the library's to set."""
        return DataConfig(root=data, labels=labels, layout=self.layout, path_column=self.path_column,
                          tasks=names(self.tasks), partition=self.partition, split=self.split, skip_bad=skip_bad,
                          workers=workers)


MapsOpt = Annotated[Optional[list[str]], typer.Option("--map", help=(
    "A task whose labels are maps in a folder parallel to DATA, matched by path and stem: TASK=KIND:FOLDER, KIND "
    "one of segmentation (index or palette PNG, .npy), depth (16-bit PNG or float .npy; 0 = invalid), normals "
    "(RGB PNG or float .npy). Repeat for each task, e.g. --map seg=segmentation:./SegmentationClass "
    "--map depth=depth:./depth."), show_default=False)]
MapColumnsOpt = Annotated[Optional[list[str]], typer.Option("--map-column", help=(
    "A labels-file column whose values are paths to label maps: TASK=KIND (repeat per column)."), show_default=False)]
IgnoreIndexOpt = Annotated[Optional[int], typer.Option(help="The void value of segmentation PNGs (default 255, VOC's); .npy maps use -1.", show_default=False)]
DepthScaleOpt = Annotated[Optional[float], typer.Option(help="Stored depth / scale = depth: 1000 for millimetre PNGs, 256 for KITTI (default 1).", show_default=False)]


@dataclass(frozen=True)
class MapOptions:
    """How label maps (dense tasks) are found and read: DataConfig's `maps`, `map_columns`, `ignore_index`,
    `depth_scale`. Read by `inspect`, `fit`, `protect` and `verify` (whose default is what OUT/run.json records).
    An option not given is None, so a command can tell it from DataConfig's default (255, 1)."""

    maps: MapsOpt = None
    map_columns: MapColumnsOpt = None
    ignore_index: IgnoreIndexOpt = None
    depth_scale: DepthScaleOpt = None

    def fields(self) -> dict[str, Any]:
        """The options given, as DataConfig fields (DataConfig's defaults for the rest)."""
        given = {"maps": tuple(self.maps or ()), "map_columns": tuple(self.map_columns or ()),
                 "ignore_index": self.ignore_index, "depth_scale": self.depth_scale}
        return {k: v for k, v in given.items() if v is not None}


def option_groups(command: Callable[..., Any]) -> Callable[..., Any]:
    """Typer has no option groups (fastapi/typer#153): here a parameter typed with an options dataclass
    (`read: ReadOptions = ReadOptions()`) stands for the dataclass's fields, each an option in its place, so the
    options several commands share are declared once. Typer reads the signature made here (`__signature__`); the
    command receives the dataclass built from the options' values."""
    signature = inspect.signature(command, eval_str=True)
    groups = {p.name: p.annotation for p in signature.parameters.values() if dataclasses.is_dataclass(p.annotation)}
    parameters = []
    for param in signature.parameters.values():
        if param.name not in groups:
            parameters.append(param)
            continue
        hints = typing.get_type_hints(param.annotation, include_extras=True)
        parameters += [param.replace(name=f.name, default=f.default, annotation=hints[f.name])
                       for f in dataclasses.fields(param.annotation)]

    @functools.wraps(command)
    def run(**options: Any) -> Any:
        for name, group in groups.items():
            options[name] = group(**{f.name: options.pop(f.name) for f in dataclasses.fields(group)})
        return command(**options)

    run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return run


def installed_version() -> str:
    """The version pip installed (the distribution's metadata); the code's own where mtlue is not installed, and both
    where they differ (code run from another tree than the one installed)."""
    from importlib import metadata

    try:
        installed = metadata.version("mtlue")
    except metadata.PackageNotFoundError:
        return f"{__version__} (not installed)"
    return installed if installed == __version__ else f"{installed} (the code imported is {__version__})"


def _version_callback(value: bool) -> None:
    if value:
        out_console.print(f"mtlue {installed_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")] = False,
) -> None:
    """mtlue: protect image datasets against unauthorised training."""
