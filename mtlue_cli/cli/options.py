"""The Typer app, the options several commands share, and the option -> config helpers.

Nothing here imports torch, so `mtlue --help` answers instantly (style rule 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mtlue_cli import __version__
from mtlue_cli.cli.render import out_console
from mtlue_cli.config import DEVICES_HELP, LAYOUTS, SPLITS, DataConfig

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


def data_config(data: Path, labels: Path | None, layout: str, path_column: str | None, tasks: str | None,
                partition: Path | None, split: str, skip_bad: bool, workers: int = 2) -> DataConfig:
    """The DATA options as a DataConfig (which checks them). The working size is the library's to set."""
    return DataConfig(root=data, labels=labels, layout=layout, path_column=path_column, tasks=names(tasks),
                      partition=partition, split=split, skip_bad=skip_bad, workers=workers)


def _version_callback(value: bool) -> None:
    if value:
        out_console.print(f"mtlue {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")] = False,
) -> None:
    """mtlue: protect image datasets against unauthorised training."""
