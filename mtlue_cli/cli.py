"""The `mtlue` command line: options -> config -> ONE library call -> Rich rendering (style rule 1).

Nothing here imports torch at module level, so `mtlue --help` answers instantly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtlue_cli import __version__
from mtlue_cli.config import (
    EPSILON_PRESETS,
    FIT_RECIPES,
    SQUEEZES,
    VERIFY_RECIPES,
    DataConfig,
    FitConfig,
    ProtectConfig,
    VerifyConfig,
    make_config,
    parse_duration,
    parse_epsilon,
)
from mtlue_cli.errors import ConfigError, MtlueError

EPILOG_PRESETS = ", ".join(f"{k} = {round(v * 255)}/255" for k, v in EPSILON_PRESETS.items())

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
# Progress, tables and errors on stderr; --json output on stdout. Logs and CI get 100 columns, not 80.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 100)
out_console = Console()

# ----------------------------------------------------------------------------- shared options

DataArg = Annotated[Path, typer.Argument(help="Folder that holds the images.", show_default=False)]
LabelsOpt = Annotated[Optional[Path], typer.Option("--labels", "-l", help="Labels file: CSV/TSV (first column = path relative to DATA) or CelebA list_attr_celeba.txt. Omit for a folder tree or UTKFace names.")]
LayoutOpt = Annotated[str, typer.Option(help="Label layout: auto|csv|folder|utkface|celeba.")]
PathColumnOpt = Annotated[Optional[str], typer.Option(help="CSV column holding the image paths (default: the first).")]
TasksOpt = Annotated[Optional[str], typer.Option(help="Comma-separated task columns to use (default: all but the path column); names the levels of a folder tree.")]
PartitionOpt = Annotated[Optional[Path], typer.Option(help="CelebA list_eval_partition.txt.")]
SplitOpt = Annotated[str, typer.Option(help="CelebA partition to use with --partition: train|valid|test|all.")]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Skip unusable files and report them instead of stopping.")]
DeviceOpt = Annotated[str, typer.Option(help="auto|cpu|cuda|cuda:N|mps (auto: CUDA, then MPS, then CPU).")]
SeedOpt = Annotated[int, typer.Option(help="Random seed (recorded in the outputs).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
WorkersOpt = Annotated[int, typer.Option(help="Image decode/encode threads.")]
GeneratorOpt = Annotated[str, typer.Option("--generator", "-g", help="A folder written by `mtlue fit`/`export`, a pretrained alias (see `mtlue export --list`), or a Hub repo id `org/name[@revision]`.")]


def _tasks(text: str | None) -> tuple[str, ...] | None:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else None


def _data_config(data: Path, labels: Path | None, layout: str, path_column: str | None, tasks: str | None,
                 partition: Path | None, split: str, skip_bad: bool, workers: int = 2, size: int = 64) -> DataConfig:
    if layout not in ("auto", "csv", "folder", "utkface", "celeba"):
        raise ConfigError(f"--layout must be auto, csv, folder, utkface or celeba, not {layout!r}")
    return DataConfig(root=data, labels=labels, layout=layout, path_column=path_column, tasks=_tasks(tasks),
                      partition=partition, split=split, skip_bad=skip_bad, workers=workers, size=size)


def _rank0_talks(quiet: bool) -> bool:
    """Under torchrun only rank 0 talks: the other ranks' console is silenced. Returns the `quiet` to use."""
    if os.environ.get("RANK", "0") != "0":
        console.quiet = True
        return True
    return quiet


class Renderer:
    """Turns library events into Rich progress bars and log lines (the only place that prints)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Renderer:
        if not self.quiet:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.progress = Progress(
                SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}"), console=console, transient=False,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def __call__(self, kind: str, info: dict[str, Any]) -> None:
        if kind == "log":
            style = "yellow" if info.get("level") == "warning" else "dim"
            if info.get("level") == "warning" or not self.quiet:
                console.print(f"[{style}]{escape(info['message'])}[/]")  # a message's brackets are text, not markup
            return
        if kind == "epoch":  # the protection forming: one line per generator epoch
            clean = f"clean {info['clean_acc']:.1%} -> " if info.get("clean_acc") is not None else ""
            line = (f"epoch {info['epoch']}/{info['of']}  surrogate accuracy {clean}on x+δ {info['attacked_acc']:.1%}  "
                    f"loss {info['loss']:.3f}  {info['seconds'] / 60:.1f} min")
            if not self.quiet:
                (self.progress.console if self.progress is not None else console).print(f"[dim]{line}[/]", highlight=False)
            return
        if self.progress is None:
            return
        stage = info.get("stage", "work")
        if kind == "start":
            self.tasks[stage] = self.progress.add_task(info.get("description", stage), total=info.get("total"), metrics="")
        elif kind == "progress" and stage in self.tasks:
            metrics = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in info.items() if k not in ("stage", "done", "total"))
            update: dict[str, Any] = {"completed": info["done"], "metrics": metrics}
            if "total" in info:
                update["total"] = info["total"]
            self.progress.update(self.tasks[stage], **update)
        elif kind == "end" and stage in self.tasks:
            task = self.tasks.pop(stage)
            total = self.progress.tasks[task].total if task in self.progress.task_ids else None
            if total is not None:
                self.progress.update(task, completed=total)


@contextmanager
def _errors(debug: bool) -> Iterator[None]:
    """One place that maps errors to a red line and an exit code (style rule 7)."""
    try:
        yield
    except MtlueError as error:
        if debug:
            console.print_exception()
        from mtlue_cli.data import problems_of

        _print_problems(problems_of(error), "red")
        console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/] (Ctrl-C); rerun with --resume to continue")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as error:  # noqa: BLE001 - the last line of defence; --debug shows the traceback
        if debug:
            raise
        console.print(f"[bold red]internal error:[/] {type(error).__name__}: {error}  (rerun with --debug for the traceback)", highlight=False)
        raise typer.Exit(1) from None


def _version_callback(value: bool) -> None:
    if value:
        out_console.print(f"mtlue {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")] = False,
) -> None:
    """mtlue: protect image datasets against unauthorised training."""


# ----------------------------------------------------------------------------- inspect


@app.command(epilog="Examples:\n\n  mtlue inspect ./photos --labels attrs.csv\n\n  mtlue inspect ./UTKFace --layout utkface --json")
def inspect(
    data: DataArg,
    labels: LabelsOpt = None,
    layout: LayoutOpt = "auto",
    path_column: PathColumnOpt = None,
    tasks: TasksOpt = None,
    partition: PartitionOpt = None,
    split: SplitOpt = "train",
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    workers: WorkersOpt = 2,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Dry run: tasks, classes, counts, image modes and problems, before any training."""
    with _errors(debug):
        from mtlue_cli.data import inspect_dataset

        cfg = _data_config(data, labels, layout, path_column, tasks, partition, split, False, workers)
        with Renderer(quiet or json_out) as render:
            report = inspect_dataset(cfg, on_event=render)
    if json_out:
        out_console.print_json(json.dumps(report.to_dict()))
        raise typer.Exit(1 if report.problems else 0)
    console.print(f"[bold]{report.images}[/] usable images in {report.root} (layout: {report.layout}"
                  + (f", labels: {report.labels_file})" if report.labels_file else ")"))
    for task in report.tasks:
        console.print(f"task [bold]{task.name}[/]: {len(task.classes)} classes, majority share {task.majority_share:.1%}")
        table = Table()
        table.add_column("class")
        table.add_column("images", justify="right")
        table.add_column("share", justify="right")
        total = sum(task.counts) or 1
        for cls, count in zip(task.classes, task.counts):
            table.add_row(cls, str(count), f"{count / total:.1%}")
        console.print(table)
    sizes = ", ".join(f"{k} x{v}" for k, v in list(report.sizes.items())[:5])
    console.print(f"sizes: {sizes}{' ...' if len(report.sizes) > 5 else ''}")
    console.print("modes: " + ", ".join(f"{k} x{v}" for k, v in report.modes.items()))
    if report.flags:
        console.print("notes: " + ", ".join(f"{k} x{v}" for k, v in report.flags.items()))
    console.print(f"estimated protected output (lossless PNG, rough): {report.estimated_output_bytes / 1e6:.1f} MB")
    if report.problems:
        console.print(f"[yellow]{len(report.problems)} problem(s):[/]")
        for p in report.problems[:50]:
            row = f" (row {p['row']})" if p["row"] else ""
            console.print(f"[yellow]  {p['path']}{row}: {p['reason']}[/]", highlight=False)
        raise typer.Exit(1)
    console.print("[green]no problems found[/]")



# ----------------------------------------------------------------------------- fit


@app.command(epilog=(
    "Strength presets (--preset): " + EPILOG_PRESETS + ". --epsilon overrides (8/255, 0.0314 or 8).\n\n"
    "Recipes (--recipe): auto = strong on a GPU, quick on the CPU. quick = TAP at 32 px, full-width generator, ε·tanh, "
    "squeeze training, as many epochs as fit a 19-minute budget (method-spec §14.3: smaller working size than the paper); "
    "strong = the same at 64 px, 60 epochs; paper-utkface = 140 px, crop 128, batch 128, 100 epochs, the paper's hard "
    "clamp and no squeeze training; paper-celeba = 70 px, crop 64, batch 512.\n\n"
    "Examples:\n\n  mtlue fit ./faces --labels attrs.csv --out gen/\n\n"
    "  mtlue fit ./faces --labels attrs.csv --time-budget 45m --out gen/\n\n"
    "  torchrun --nproc_per_node 4 -m mtlue_cli fit ./faces --labels attrs.csv --recipe paper-utkface --out gen/"
))
def fit(
    data: DataArg,
    labels: LabelsOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the generator to.")] = Path("runs/generator"),
    method: Annotated[str, typer.Option(help="Base objective: em|tap|sep (method-spec §3.2).")] = "tap",
    preset: Annotated[str, typer.Option(help="Strength: low|medium|high (L-inf 4, 8, 16 /255).")] = "medium",
    epsilon: Annotated[Optional[str], typer.Option(help="Explicit L-inf budget; overrides --preset.")] = None,
    recipe: Annotated[str, typer.Option(help="auto|quick|strong|paper-utkface|paper-celeba (see below).")] = "auto",
    quick: Annotated[bool, typer.Option("--quick", help="Shorthand for --recipe quick.")] = False,
    size: Annotated[Optional[int], typer.Option(help="Working resolution in px (overrides the recipe).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Cap on generator epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size.")] = None,
    surrogate_epochs: Annotated[Optional[int], typer.Option(help="Clean surrogate epochs (TAP/SEP).")] = None,
    stop_error: Annotated[Optional[float], typer.Option(help="Stop when the surrogate's error on x+δ against the method's targets is at most this.")] = None,
    lambda_intra: Annotated[Optional[float], typer.Option(help="Intra-task embedding regulariser weight (10).")] = None,
    lambda_inter: Annotated[Optional[float], typer.Option(help="Inter-task embedding regulariser weight (200).")] = None,
    intra_form: Annotated[Optional[str], typer.Option(help="code|paper form of the intra-task regulariser.")] = None,
    tap_binary: Annotated[Optional[str], typer.Option(help="auto|untargeted|targeted objective for binary tasks.")] = None,
    sep_recompute: Annotated[bool, typer.Option("--sep-recompute", help="SEP: regenerate δ per checkpoint, the official (slow) loop.")] = False,
    sep_paper_weighting: Annotated[bool, typer.Option("--sep-paper-weighting", help="SEP: official BN momentum (method-spec §14.1).")] = False,
    em_stop_mode: Annotated[Optional[str], typer.Option(help="EM stop check with the surrogate in eval (ours) or train (official) mode.")] = None,
    unprotected: TasksOpt = None,
    surrogate: Annotated[Optional[str], typer.Option(help="Surrogate trunk: resnet18|resnet50|vgg16|densenet121|vit_b_16.")] = None,
    bound: Annotated[Optional[str], typer.Option(help="How δ is kept within ±ε: clamp (the paper's hard clamp) or tanh (ε·tanh; learns faster in short runs).")] = None,
    width: Annotated[Optional[int], typer.Option(help="Generator width: 64 (the paper's), 32 or 16 (cheaper).")] = None,
    robust: Annotated[Optional[bool], typer.Option("--robust/--no-robust", help="Train through the attacker's cheap squeezes (grayscale, JPEG, bit depth, blur). On in auto/quick/strong, off in paper-*.")] = None,
    time_budget: Annotated[Optional[str], typer.Option(help="Wall-clock budget for the whole fit, e.g. 15m, 1h, 900 (seconds); 'none' lifts the recipe's: the generator epochs are planned to fit it.")] = None,
    stop_acc: Annotated[Optional[float], typer.Option(help="Stop once the surrogate's mean accuracy on x+δ (true labels) is at most this, e.g. 0.1.")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Save a resumable checkpoint every N epochs.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")] = False,
    amp: Annotated[str, typer.Option(help="auto|bf16|fp16|off (CUDA only).")] = "auto",
    layout: LayoutOpt = "auto",
    path_column: PathColumnOpt = None,
    tasks: TasksOpt = None,
    partition: PartitionOpt = None,
    split: SplitOpt = "train",
    skip_bad: SkipBadOpt = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    workers: WorkersOpt = 2,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a protection generator on your labelled images (EM, TAP or SEP + the MTL-UE regularisers)."""
    quiet = _rank0_talks(quiet)
    with _errors(debug):
        from mtlue_cli.data import load_dataset
        from mtlue_cli.fit import default_recipe, fit_generator

        if preset not in EPSILON_PRESETS:
            raise ConfigError(f"--preset must be one of {', '.join(EPSILON_PRESETS)}")
        name = "quick" if quick else recipe
        if name == "auto":
            name = default_recipe(device)
        if name not in FIT_RECIPES:
            raise ConfigError(f"--recipe must be auto or one of {', '.join(FIT_RECIPES)}")
        cfg = make_config(
            FitConfig, FIT_RECIPES[name], method=method, epsilon=parse_epsilon(epsilon or preset), image_size=size,
            epochs=epochs, batch_size=batch_size, surrogate_epochs=surrogate_epochs, stop_error=stop_error,
            lambda_intra=lambda_intra, lambda_inter=lambda_inter, intra_form=intra_form, tap_binary=tap_binary,
            sep_recompute=sep_recompute, sep_paper_weighting=sep_paper_weighting, em_stop_mode=em_stop_mode,
            unprotected=_tasks(unprotected), surrogate=surrogate, bound=bound, checkpoint_every=checkpoint_every, resume=resume,
            amp=amp, device=device, seed=seed, width=width, stop_acc=stop_acc,
            robust=None if robust is None else (SQUEEZES if robust else ()),
            time_budget=parse_duration(time_budget) if time_budget and time_budget.lower() != "none" else None,
        )
        if time_budget and time_budget.lower() == "none":  # lift the recipe's budget: --epochs alone decides
            cfg = dataclasses.replace(cfg, time_budget=None)
        if (out / "model.safetensors").exists() and not resume:
            raise ConfigError(f"{out} already holds a generator; choose another --out or pass --resume")
        data_cfg = _data_config(data, labels, layout, path_column, tasks, partition, split, skip_bad, workers, cfg.image_size)
        budget = f", time budget {cfg.time_budget / 60:.0f} min" if cfg.time_budget else ""
        console.print(f"recipe [bold]{name}[/]: {cfg.method.upper()} at {cfg.image_size} px, generator width {cfg.width}, "
                      f"up to {cfg.epochs} epochs{budget}, batch {cfg.batch_size}, epsilon {cfg.epsilon * 255:.4g}/255, "
                      f"{'robust to ' + '/'.join(s for s in cfg.robust if s != 'identity') if cfg.robust else 'no squeeze training'}")
        with Renderer(quiet) as render:
            dataset = load_dataset(data_cfg, on_event=render)
            result = fit_generator(dataset, cfg, out, on_event=render)
    _report_skipped(dataset.skipped)
    names = dataset.spec.names
    table = Table(title="surrogate accuracy on the training set", title_justify="left")
    table.add_column("task")
    table.add_column("clean images", justify="right")
    table.add_column("protected (x+δ)", justify="right")
    for k, task in enumerate(names):
        table.add_row(task, f"{result.surrogate_clean_acc[k]:.1%}" if result.surrogate_clean_acc else "-",
                      f"{result.attacked_train_acc[k]:.1%}")
    console.print(table)
    _render_fit_summary(result)
    console.print(f"[green]generator written to {out}[/]  next: mtlue protect {data} --generator {out} --out PROTECTED")


def _render_fit_summary(result: Any) -> None:
    clean = (f"{sum(result.surrogate_clean_acc) / len(result.surrogate_clean_acc):.1%} on clean images, "
             if result.surrogate_clean_acc else "")
    attacked = sum(result.attacked_train_acc) / len(result.attacked_train_acc)
    console.print(f"[bold]{result.method.upper()} generator:[/] surrogate accuracy {clean}{attacked:.1%} on x+δ after "
                  f"{result.epochs_run} epochs in {result.seconds / 60:.1f} min (stopped by {result.stop_reason})")


def _report_skipped(skipped: list[Any]) -> None:
    if skipped:
        console.print(f"[yellow]{len(skipped)} file(s) skipped:[/]")
        _print_problems(skipped, "yellow")


def _print_problems(problems: list[Any], style: str, limit: int = 20) -> None:
    """One line per file, except a reason shared by more than five files: one line, the count and five names."""
    by_reason: dict[str, list[Any]] = {}
    for problem in problems:
        by_reason.setdefault(problem.reason, []).append(problem)
    shown = 0
    for reason, group in by_reason.items():
        if len(group) > 5:
            names = ", ".join(p.path for p in group[:5])
            console.print(f"[{style}]  {len(group)} files: {reason} (e.g. {names})[/]", highlight=False, soft_wrap=True)
            shown += 1
            continue
        for problem in group:
            if shown < limit:
                console.print(f"[{style}]  {problem}[/]", highlight=False, soft_wrap=True)
            shown += 1
    if shown > limit:
        console.print(f"[{style}]  ... and {shown - limit} more[/]")


# ----------------------------------------------------------------------------- protect


@app.command(epilog=(
    "Output: the input tree mirrored under --out with names kept, lossless PNG by default, labels.csv with "
    "rewritten paths, manifest.jsonl (one line per file: hashes, measured L-inf, PSNR, SSIM) and run.json. "
    "Without --generator, a generator is fitted on DATA first with the default recipe and kept in OUT/generator/. "
    "Exit code 3 when some files failed. Under torchrun each process protects every Nth batch and rank 0 "
    "merges the manifest; the files are the same as one process writes.\n\n"
    "Examples:\n\n  mtlue protect ./photos --labels attrs.csv --out ./photos-protected --holdout 0.2\n\n"
    "  mtlue protect ./photos --labels attrs.csv --generator gen/ --out ./photos-protected\n\n"
    "  mtlue protect ./UTKFace --generator org/mtlue-utkface@v1 --out ./utk-protected --holdout 0.2 --preview 8\n\n"
    "  torchrun --nproc_per_node 4 -m mtlue_cli protect ./photos -l attrs.csv -g gen/ --out ./photos-protected"
))
def protect(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (must not be inside DATA).")],
    generator: Annotated[Optional[str], typer.Option("--generator", "-g", help="A folder written by `mtlue fit`/`export`, a pretrained alias (see `mtlue export --list`), or a Hub repo id `org/name[@revision]`. Omit it to fit one on DATA first (kept in OUT/generator/).")] = None,
    time_budget: Annotated[Optional[str], typer.Option(help="Without --generator: the fit's wall-clock budget (default: the recipe's, 19 min on a CPU).")] = None,
    labels: LabelsOpt = None,
    revision: Annotated[Optional[str], typer.Option(help="Hub revision (branch, tag or commit).")] = None,
    format: Annotated[str, typer.Option("--format", help="png|webp (lossless) or jpeg (lossy, weakens protection).")] = "png",
    quality: Annotated[int, typer.Option(help="JPEG quality.")] = 95,
    metadata: Annotated[str, typer.Option(help="strip|keep-safe (copyright, artist, ICC)|keep-all.")] = "strip",
    tag_no_ai: Annotated[bool, typer.Option("--tag-no-ai", help="Write the IPTC/PLUS 'prohibited for AI/ML training' XMP field.")] = False,
    holdout: Annotated[float, typer.Option(help="Leave this seeded fraction out (the clean test split for `verify --test-split`).")] = 0.0,
    resume: Annotated[bool, typer.Option("--resume", help="Skip files already written (manifest + hash match).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder's files.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first file that fails.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per generator batch.")] = 32,
    preview: Annotated[int, typer.Option(help="Write OUT.preview.png with N rows: original, protected, amplified δ.")] = 0,
    amp: Annotated[str, typer.Option(help="auto|bf16|fp16|off (CUDA only).")] = "auto",
    layout: LayoutOpt = "auto",
    path_column: PathColumnOpt = None,
    tasks: TasksOpt = None,
    partition: PartitionOpt = None,
    split: SplitOpt = "train",
    skip_bad: SkipBadOpt = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    workers: Annotated[int, typer.Option(help="Decode/encode threads; 0: one per core this process may use (shared by the torchrun processes of a node).")] = 0,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a protected copy of every labelled image (originals are never modified)."""
    quiet = _rank0_talks(quiet)
    with _errors(debug):
        from mtlue_cli.hub import load_generator
        from mtlue_cli.protect import protect_dataset, protect_with_fit

        cfg = ProtectConfig(format=format, quality=quality, metadata=metadata, tag_no_ai=tag_no_ai, resume=resume,
                            overwrite=overwrite, strict=strict, batch_size=batch_size, workers=workers, preview=preview,
                            holdout=holdout, seed=seed, device=device, amp=amp)
        fit_result = None
        if generator is None:
            from mtlue_cli.fit import default_recipe

            name = default_recipe(device)
            fit_cfg = make_config(FitConfig, FIT_RECIPES[name], device=device, seed=seed, amp=amp,
                                  time_budget=parse_duration(time_budget) if time_budget else None)
            data_cfg = _data_config(data, labels, layout, path_column, tasks, partition, split, skip_bad, workers,
                                    fit_cfg.image_size)
            budget = f" ({fit_cfg.time_budget / 60:.0f} min budget)" if fit_cfg.time_budget else ""
            console.print(f"no --generator: fitting one with the {name} recipe first{budget}")
            with Renderer(quiet) as render:
                fit_result, report = protect_with_fit(data_cfg, out, fit_cfg, cfg, on_event=render)
        else:
            if time_budget:
                raise ConfigError("--time-budget is for the fit that runs when no --generator is given")
            loaded = load_generator(generator, revision=revision)
            data_cfg = _data_config(data, labels, layout, path_column, tasks, partition, split, skip_bad, workers,
                                    loaded.model.image_size)
            with Renderer(quiet) as render:
                report = protect_dataset(loaded, data_cfg, out, cfg, on_event=render)
    if fit_result is not None:
        _render_fit_summary(fit_result)
    _render_protect(report)
    if report.failed:
        raise typer.Exit(3)


def _render_protect(report: Any) -> None:
    table = Table(title="protect summary", title_justify="left", show_header=False)
    table.add_column()
    table.add_column(justify="right")
    table.add_row("written", str(report.written))
    table.add_row("already done (--resume)", str(report.resumed))
    table.add_row("held out (clean test split)", str(report.held_out))
    table.add_row("failed", str(len(report.failed)))
    if report.unprotected_tasks:
        table.add_row("tasks protected", ", ".join(report.protected_tasks))
        table.add_row("tasks NOT protected", f"[yellow]{', '.join(report.unprotected_tasks)}[/]")
    ok = report.max_linf_255 <= round(report.epsilon_255) or report.format == "jpeg"
    table.add_row("max measured L-inf (files as written)", f"[{'green' if ok else 'red'}]{report.max_linf_255}/255[/] (budget {report.epsilon_255:.4g}/255)")
    table.add_row("mean PSNR / SSIM", f"{report.mean_psnr:.2f} dB / {report.mean_ssim:.4f}")
    table.add_row("time", f"{report.seconds:.1f} s ({report.images_per_second:.1f} img/s)")
    console.print(table)
    for failed in report.failed[:50]:
        console.print(f"[red]  failed: {failed.source}: {failed.reason}[/]", highlight=False)
    if report.preview:
        console.print(f"preview: {report.preview}")
    console.print(f"[green]protected copies in {report.out}[/] (manifest.jsonl, run.json, labels.csv)")


# ----------------------------------------------------------------------------- verify


@app.command(epilog=(
    "Exit codes: 0 = every task at or below the majority baseline + --threshold points with no defence and after "
    "each --defense (protection effective), 4 = some task above it, 1 = error.\n\n"
    "Examples:\n\n  mtlue protect ./photos -l attrs.csv -o prot/ --holdout 0.2 && mtlue verify prot/\n\n"
    "  mtlue verify prot/ --res 128 --recipe paper --time-budget none\n\n"
    "  mtlue verify prot/ --defense all --detect --plot curves.png --time-budget 1h\n\n"
    "  mtlue verify --clean ./photos --protected prot/ -l attrs.csv --test ./held-out --defense none,jpeg10"
))
def verify(
    out: Annotated[Optional[Path], typer.Argument(help="A folder written by `mtlue protect`: its run.json gives the originals, labels, layout and clean holdout.", show_default=False)] = None,
    clean: Annotated[Optional[Path], typer.Option("--clean", help="Folder with the original images (default: from OUT/run.json).")] = None,
    protected: Annotated[Optional[Path], typer.Option("--protected", help="Folder written by `mtlue protect` (the long form of OUT).")] = None,
    labels: LabelsOpt = None,
    test: Annotated[Optional[Path], typer.Option("--test", help="A separate folder of clean test images (same labels layout).")] = None,
    test_labels: Annotated[Optional[Path], typer.Option(help="Labels for --test (default: --labels).")] = None,
    test_split: Annotated[Optional[float], typer.Option(help="Seeded fraction of --clean used as the clean test set (default: protect's --holdout from run.json, else 0.2).")] = None,
    victim: Annotated[str, typer.Option(help="resnet18|resnet50|vgg16|densenet121|vit_b_16 (torchvision, no download).")] = "resnet18",
    recipe: Annotated[str, typer.Option(help="quick (15 epochs) | paper (60 epochs, method-spec §6.2).")] = "quick",
    epochs: Annotated[Optional[int], typer.Option(help="Victim epochs (overrides --recipe).")] = None,
    res: Annotated[Optional[int], typer.Option(help="Victim resolution (default: 64 px or the generator's working size if larger; the images' own size if smaller).")] = None,
    batch_size: Annotated[int, typer.Option(help="Victim batch size.")] = 128,
    weighting: Annotated[str, typer.Option(help="Task weighting: ew|uw|rlw.")] = "ew",
    defense: Annotated[str, typer.Option("--defense", help="Comma list: none, grayscale, jpegQ, bdrB, blurS, medianK, resizeF, op (orthogonal projection), ueraser-lite, or all. Each trains a protected-trained victim; the verdict covers every one.")] = "none,grayscale,jpeg10,bdr2",
    adv_train: Annotated[bool, typer.Option("--adv-train", help="PGD adversarial training of the victim (slow).")] = False,
    stl: Annotated[bool, typer.Option("--stl", help="Also train one single-task victim per task.")] = False,
    threshold: Annotated[float, typer.Option(help="Points above the majority baseline (0.5 for AUC) that still count as protected.")] = 5.0,
    metric: Annotated[str, typer.Option(help="acc (top-1 accuracy) or auc (ROC-AUC per task, for multi-label binary data).")] = "acc",
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON to this file.")] = None,
    profile: Annotated[bool, typer.Option("--profile", help="Also train a victim on the originals under each defence: what the defence costs clean data (one more victim per defence).")] = False,
    detect: Annotated[bool, typer.Option("--detect", help="Also test whether a linear model spots the protected classes (seconds).")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help='PNG of test accuracy per epoch per task (needs pip install "mtlue\\[plot]").')] = None,
    time_budget: Annotated[str, typer.Option(help="Budget for all victims (e.g. 20m, 1h, 900 s; 'none' = no limit): picks the victim epochs (at most --epochs).")] = "20m",
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse the clean-victim result of identical data and recipe (~/.cache/mtlue or MTLUE_CACHE_DIR).")] = True,
    amp: Annotated[str, typer.Option(help="auto|bf16|fp16|off (CUDA only).")] = "auto",
    layout: LayoutOpt = "auto",
    path_column: PathColumnOpt = None,
    tasks: TasksOpt = None,
    skip_bad: SkipBadOpt = False,
    device: DeviceOpt = "auto",
    seed: Annotated[Optional[int], typer.Option(help="Random seed (default: protect's, from run.json, else 0).")] = None,
    workers: WorkersOpt = 2,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train quick victims on the protected files as written and on the originals; test both on clean images."""
    with _errors(debug):
        from mtlue_cli.verify import verify as run_verify

        if recipe not in VERIFY_RECIPES:
            raise ConfigError(f"--recipe must be one of {', '.join(VERIFY_RECIPES)}")
        from mtlue_cli.verify import run_defaults

        if out is not None and protected is not None and out != protected:
            raise ConfigError("give the protected folder once: as OUT or as --protected")
        protected = protected or out
        if protected is None:
            raise ConfigError("give the folder `mtlue protect` wrote: mtlue verify OUT")
        # Whatever protect recorded is the default; explicit flags win.
        recorded = run_defaults(protected)
        clean = clean or recorded.get("clean")
        if clean is None:
            raise ConfigError(f"{protected}: no run.json names the originals; pass --clean")
        labels = labels or recorded.get("labels")
        layout = recorded.get("layout", layout) if layout == "auto" else layout
        path_column = path_column or recorded.get("path_column")
        tasks = tasks or recorded.get("tasks")
        test_split = test_split if test_split is not None else recorded.get("test_split", 0.2)
        seed = seed if seed is not None else recorded.get("seed", 0)
        if not test_split and test is None:
            raise ConfigError(f"{protected} was protected without --holdout, so no clean test split was left out: "
                              "protect again with --holdout 0.2, or pass --test with separate clean images")
        budget = None if time_budget.strip().lower() in ("none", "0", "off") else parse_duration(time_budget)
        cfg = make_config(VerifyConfig, VERIFY_RECIPES[recipe], victim=victim, epochs=epochs, res=res,
                          batch_size=batch_size, weighting=weighting, defenses=_tasks(defense) or ("none",),
                          adv_train=adv_train, stl=stl, test_split=test_split, threshold=threshold, seed=seed, metric=metric, cache=cache,
                          device=device, amp=amp, detect=detect, plot=plot, profile=profile)
        if recipe != "paper" or time_budget != "20m":  # the paper recipe trains in full unless a budget is given
            cfg = dataclasses.replace(cfg, time_budget=budget)
        clean_cfg = _data_config(clean, labels, layout, path_column, tasks, None, "all", skip_bad, workers)
        test_cfg = (_data_config(test, test_labels or labels, layout, path_column, tasks, None, "all", skip_bad, workers)
                    if test is not None else None)
        with Renderer(quiet) as render:
            report = run_verify(clean_cfg, protected, cfg, test_cfg, on_event=render)
    render_verify(report)
    if json_file is not None:
        json_file.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if out is not None:  # `mtlue publish OUT` puts this result in the dataset card
        try:
            (out / "verify.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        except OSError as exc:
            console.print(f"[yellow]could not write {out / 'verify.json'}: {exc}[/]", highlight=False)
    raise typer.Exit(0 if report.effective else 4)


SHORT_DEFENSE = {"grayscale": "gray", "ueraser-lite": "uer-lite"}  # table headers that keep 80-100 columns


def render_verify(report: Any) -> None:
    extra = [d for d in report.defenses if d != "none"]
    inline = extra if len(extra) <= 3 else []  # more defences get a table of their own
    table = Table(title="victim accuracy on clean test images (lower is better for you)", title_justify="left")
    for col in ("task", "majority", "clean", "protected", *inline, "best", "train*"):
        table.add_column(col, justify="left" if col == "task" else "right")

    def cell(value: float, limit: float) -> str:
        return f"[{'green' if value <= limit else 'red'}]{value:.1%}[/]"

    for row in report.tasks:
        limit = row.majority + report.threshold / 100
        table.add_row(row.task, f"{row.majority:.1%}", f"{row.clean_acc:.1%}", cell(row.protected_acc, limit),
                      *(cell(row.by_defense[d], limit) for d in inline), f"{row.protected_best:.1%}",
                      f"{row.protected_train_acc:.1%}")
    mean = report.to_dict()["mean"]
    table.add_row("[bold]mean[/]", f"{mean['majority']:.1%}", f"{mean['clean_acc']:.1%}", f"{mean['protected_acc']:.1%}",
                  *(f"{mean['by_defense'][d]:.1%}" for d in inline), "", f"{mean['protected_train_acc']:.1%}")
    console.print(table)
    if extra and not inline:
        wide = Table(title="protected-trained victim after each defence", title_justify="left")
        for col in ("task", *(SHORT_DEFENSE.get(d, d) for d in extra)):
            wide.add_column(col, justify="left" if col == "task" else "right")
        for row in report.tasks:
            limit = row.majority + report.threshold / 100
            wide.add_row(row.task, *(cell(row.by_defense[d], limit) for d in extra))
        wide.add_row("[bold]mean[/]", *(f"{mean['by_defense'][d]:.1%}" for d in extra))
        console.print(wide)
    console.print("[dim]clean / protected: victims trained on the originals / on the protected files; "
                  + ("defence columns: the protected files after the attacker's defence; " if extra else "")
                  + "best: the protected victim's best epoch; train*: its accuracy on its own training files "
                  "(high train with low test accuracy is the shortcut signature)[/]")
    _render_profile(report)
    if report.detect is not None:
        _render_detect(report.detect)
    if any(row.stl_protected_acc is not None for row in report.tasks):
        stl = Table(title="single-task victims", title_justify="left")
        for col in ("task", "clean-trained", "protected-trained"):
            stl.add_column(col)
        for row in report.tasks:
            stl.add_row(row.task, f"{row.stl_clean_acc:.1%}", f"{row.stl_protected_acc:.1%}")
        console.print(stl)
    q = report.quality
    if q:
        console.print(f"protected files: max L-inf {q['max_linf_255']}/255, mean PSNR {q['mean_psnr']:.2f} dB, "
                      f"mean SSIM {q['mean_ssim']:.4f} ({q['files']} files)")
    r = report.recipe
    console.print(f"victims: {r['victim']} ({r['stem']} stem), {r['epochs']} epochs at {r['res']} px (crop {r['crop']}), "
                  f"batch {r['batch_size']}, {r['weighting']} weighting{', adversarial training' if r['adv_train'] else ''}, "
                  f"on {r['device']}; {report.train_images} training / {report.test_images} clean test images "
                  f"({r['test']}); {report.seconds / 60:.1f} min")
    if report.effective:
        console.print(f"[bold green]protection effective[/]: every task stays within {report.threshold:g} points of the "
                      "majority baseline when trained on the protected files"
                      + (f", also after {', '.join(extra)}" if extra else ""))
    else:
        reasons = "; ".join(f"{', '.join(tasks)} " + ("with no defence" if d == "none" else f"after {d}")
                            for d, tasks in report.broken_by.items())
        console.print(f"[bold red]protection NOT effective[/]: above majority + {report.threshold:g} points for {reasons}")
        squeezed = [d for d in report.broken_by if d != "none"]
        if squeezed:
            console.print(f"[yellow]what this means: someone who converts your files ({', '.join(squeezed)}) before "
                          "training learns those tasks anyway. This is a known limit of mtlue's generators at 8/255: on "
                          "UTKFace faces the CPU default gives most of the clean accuracy back after grayscale and JPEG-10, "
                          "and no recipe we measured holds under every squeeze yet (benchmarks/RESULTS.md).[/]")
    if report.plot:
        console.print(f"plot: {escape(report.plot)}", highlight=False)
    for note in report.notes:  # e.g. pip install "mtlue[plot]": brackets that are not markup
        console.print(f"[yellow]{escape(note)}[/]", highlight=False)


def _render_profile(report: Any) -> None:
    if len(report.profile) < 2:  # defence "none" alone: the main table says it all
        return
    table = Table(title="robustness profile (means over tasks)", title_justify="left")
    for col in ("defence", "clean-trained", "protected-trained", "verdict"):
        table.add_column(col, justify="right" if col.endswith("trained") else "left")
    for p in report.profile:
        names = ", ".join(p.broken[:3]) + (f" +{len(p.broken) - 3}" if len(p.broken) > 3 else "")
        table.add_row(p.defense, "—" if p.clean_mean is None else f"{p.clean_mean:.1%}", f"{p.protected_mean:.1%}",
                      "[green]holds[/]" if p.verdict == "holds" else f"[red]broken[/]: {names}")
    console.print(table)
    console.print("[dim]clean-trained: what the defence costs a model of the originals; a defence that costs it "
                  "as much as it returns from the protected files gains the attacker nothing"
                  + ("" if all(p.clean_mean is not None for p in report.profile) else " (— : measured with --profile)")
                  + "[/]")


def _render_detect(detect: Any) -> None:
    table = Table(title="detectability: a linear model on raw pixels, held-out accuracy", title_justify="left")
    for col in ("task", "protected", "epoch", "originals", "epoch", "reading"):
        table.add_column(col, justify="left" if col in ("task", "reading") else "right")
    for row in detect.tasks:
        table.add_row(row.task, f"{row.protected.acc:.1%}", str(row.protected.epoch), f"{row.clean.acc:.1%}",
                      str(row.clean.epoch), "[red]easy to detect[/]" if row.detectable else "[green]not easier[/]")
    console.print(table)
    console.print(escape(detect.summary), highlight=False)


# ----------------------------------------------------------------------------- export


@app.command(epilog=(
    "Examples:\n\n  mtlue export runs/generator --to ./my-generator --verify-report verify.json\n\n"
    "  mtlue export runs/generator --to ./my-generator --push my-org/mtlue-faces --private\n\n"
    "  mtlue export --list"
))
def export(
    generator: Annotated[Optional[str], typer.Argument(help="Generator: folder, alias or Hub id.", show_default=False)] = None,
    to: Annotated[Optional[Path], typer.Option("--to", help="Folder to write the self-contained generator to.")] = None,
    verify_report: Annotated[Optional[Path], typer.Option(help="A `verify --json` file to put in the model card.")] = None,
    push: Annotated[Optional[str], typer.Option("--push", help="Upload to this Hub repo id (token from HF_TOKEN / `hf auth login`).")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the Hub repo as private.")] = False,
    revision: Annotated[Optional[str], typer.Option(help="Revision to load (Hub), or branch to push to.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files in a non-empty --to.")] = False,
    list_aliases: Annotated[bool, typer.Option("--list", help="List the pretrained aliases and exit.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Save a generator as a self-contained folder with a model card, or publish it on the Hugging Face Hub."""
    with _errors(debug):
        from mtlue_cli.hub import registry

        if list_aliases:
            table = Table(title="pretrained aliases", title_justify="left")
            for col in ("alias", "repo", "revision", "size", "tasks"):
                table.add_column(col)
            for alias, entry in registry().items():
                table.add_row(alias, entry["repo_id"], (entry.get("revision") or "bundled only")[:12], str(entry["image_size"]),
                              ", ".join(f"{k}({len(v)})" for k, v in entry["tasks"].items()))
            console.print(table)
            return
        if generator is None or (to is None and push is None):
            raise ConfigError("give a GENERATOR and --to DIR and/or --push REPO_ID (or --list)")
        from mtlue_cli.export import export_generator, push_generator
        from mtlue_cli.hub import load_generator

        loaded = load_generator(generator, revision=None if push else revision)
        folder = to
        if folder is None:
            import tempfile

            folder = Path(tempfile.mkdtemp(prefix="mtlue-export-"))
        export_generator(loaded, folder, verify_report, overwrite)
        console.print(f"[green]generator exported to {folder}[/] (model.safetensors, config.json, README.md)")
        if push:
            url = push_generator(folder, push, private=private, revision=revision)
            console.print(f"[green]pushed to {push}[/]: {url}")


# ----------------------------------------------------------------------------- publish


@app.command(epilog=(
    "Builds the upload folder (--folder, default OUT.hf beside OUT): train/ with the protected files and "
    "train/metadata.csv (file_name + one column per task), a dataset card README.md, mtlue-manifest.jsonl and "
    "mtlue-run.json, with no local path of this machine in them; then uploads it as a dataset repo (rerun the same "
    "command to resume an interrupted upload). The token comes from HF_TOKEN or `hf auth login`. Refused: image "
    "files the manifest does not list as protected, files with a measured L-inf of 0, failed files (unless "
    "--allow-failed) and runs that did not finish. `mtlue verify OUT` first puts its result in the card.\n\n"
    "Examples:\n\n  mtlue publish prot/ --to my-org/faces-protected --license cc-by-nc-4.0 --dry-run\n\n"
    "  mtlue publish prot/ --to my-org/faces-protected --license cc-by-nc-4.0 --private\n\n"
    "  mtlue verify prot/ && mtlue publish prot/ --to my-org/faces-protected --license cc-by-4.0 --include-clean-test"
))
def publish(
    out: Annotated[Path, typer.Argument(help="A folder written by `mtlue protect`.", show_default=False)],
    to: Annotated[Optional[str], typer.Option("--to", help="Hub dataset repo id org/name (optional with --dry-run).")] = None,
    license_: Annotated[Optional[str], typer.Option("--license", help="Hub licence id for the card, e.g. cc-by-nc-4.0 (default: other, with a warning).")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the dataset repo as private.")] = False,
    revision: Annotated[Optional[str], typer.Option(help="Branch to upload to (created if missing).")] = None,
    include_clean_test: Annotated[bool, typer.Option("--include-clean-test", help="Add test/: the run's held-out ORIGINALS, unprotected (the card says so).")] = False,
    allow_failed: Annotated[bool, typer.Option("--allow-failed", help="Publish although some files failed in protect (they are left out and listed).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Build the upload folder and show what would be sent; send nothing.")] = False,
    folder: Annotated[Optional[Path], typer.Option("--folder", help="Where to build the upload folder (default: OUT.hf beside OUT).")] = None,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Publish a protected folder as a Hugging Face dataset, with a dataset card that says what was done."""
    with _errors(debug):
        from mtlue_cli.publish import PublishConfig, publish_dataset

        cfg = PublishConfig(repo_id=to, license=license_, private=private, revision=revision,
                            include_clean_test=include_clean_test, allow_failed=allow_failed, dry_run=dry_run)
        with Renderer(quiet) as render:
            report = publish_dataset(out, cfg, folder, on_event=render)
    for failed in report.failed[:50]:
        console.print(f"[yellow]  left out (failed in protect): {failed.path}: {failed.reason}[/]", highlight=False)
    console.print(f"{report.train_images} protected images" + (f" + {report.test_images} clean test originals"
                  if report.test_images else "") + f", {report.files} files, {report.bytes / 1e6:.1f} MB in {report.folder}")
    console.print(f"card: {report.card} (license: {report.license}, {'verified' if report.verified else 'not verified'})")
    if report.url is None:
        console.print("[bold]dry run[/]: nothing was sent" + (f"; to upload: mtlue publish {out} --to {to}" if to else ""))
    else:
        console.print(f"[green]published to {report.url}[/]")


# ----------------------------------------------------------------------------- demo


@app.command(epilog="Example:\n\n  mtlue demo --out mtlue-demo")
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's data, protected copies and preview.")] = Path("mtlue-demo"),
    generator: Annotated[str, typer.Option("--generator", "-g", help="Generator to use.")] = "demo-shapes",
    images: Annotated[int, typer.Option(help="Synthetic images to make.")] = 800,
    epochs: Annotated[int, typer.Option(help="Victim epochs.")] = 12,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Protect and verify a built-in synthetic multi-task image set: no data of your own needed (about 2 minutes on a CPU).

    Exit code 0 when the protection holds for every task with and without each squeeze, 4 when it does not."""
    with _errors(debug):
        from mtlue_cli.demo import run_demo

        with Renderer(quiet) as render:
            report = run_demo(out, generator=generator, images=images, epochs=epochs, device=device, seed=seed, on_event=render)
    _render_protect(report.protect)
    render_verify(report.verify)
    console.print(f"originals: {report.data}   protected: {report.protected}")
    raise typer.Exit(0 if report.verify.effective else 4)


def main() -> None:
    app()
