"""Rich rendering: progress bars from the library's events, one red line per error, and the reports the
commands return (the only place that prints, style rule 8). Verdicts are the reports' own properties."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtlue_cli.errors import SHOWN, MtlueError, examples, problems_of

# Progress, tables and errors on stderr; --json output on stdout. Logs and CI get 100 columns, not 80.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 100)
out_console = Console()
SHORT_DEFENSE = {"grayscale": "gray", "ueraser-lite": "uer-lite"}  # table headers that keep 80-100 columns


def rank0_talks(quiet: bool) -> bool:
    """Under torchrun only rank 0 talks: the other ranks' console is silenced. Returns the `quiet` to use."""
    if os.environ.get("RANK", "0") != "0":
        console.quiet = True
        return True
    return quiet


class Renderer:
    """Turns library events into Rich progress bars and log lines."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Renderer:
        if not self.quiet:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

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
def errors(debug: bool) -> Iterator[None]:
    """One place that maps errors to a red line and an exit code (style rule 7)."""
    try:
        yield
    except MtlueError as error:
        if debug:
            console.print_exception()
        print_problems(problems_of(error), "red")
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


def print_problems(problems: list[Any], style: str, limit: int = 20, line: Any = str) -> None:
    """One line per file (`line(problem)`), except a reason shared by more than five files: one line, the count
    and five names."""
    by_reason: dict[str, list[Any]] = {}
    for problem in problems:
        by_reason.setdefault(problem.reason, []).append(problem)
    shown = 0
    for reason, group in by_reason.items():
        if len(group) > SHOWN:
            names = examples([p.path for p in group])
            console.print(f"[{style}]  {len(group)} files: {escape(reason)} (e.g. {escape(names)})[/]", highlight=False,
                          soft_wrap=True)
            shown += 1
            continue
        for problem in group:
            if shown < limit:
                console.print(f"[{style}]  {escape(line(problem))}[/]", highlight=False, soft_wrap=True)
            shown += 1
    if shown > limit:
        console.print(f"[{style}]  ... and {shown - limit} more[/]")


# ----------------------------------------------------------------------------- inspect and fit


CLUSTER_CAVEAT = ("[yellow]clusters are not an attacker's labels[/]: δ is keyed to them, so it hurts a model trained "
                  "on real labels only as far as the clusters follow those labels. On UTKFace faces they did not "
                  "(victims trained on the true age, race and gender reached clean accuracy: benchmarks/RESULTS.md, "
                  "\"Protection without labels\"). Label the images (--labels); for faces, faces-utkface's labeller "
                  "protects in part. Check with `mtlue verify --labels`.")

PREDICTED_CAVEAT = ("[yellow]predicted labels protect less than true ones[/]: wherever a guess is wrong, δ is keyed "
                    "to the wrong class. With faces-utkface on faces it never saw, victims trained with the true labels "
                    "averaged 60.6% on clean faces when protect had predicted the labels, 34.1% when it was given them, "
                    "68.3% when trained on the originals "
                    "(benchmarks/RESULTS.md, \"Protection without labels\"). Give --labels for what you know, and check "
                    "with `mtlue verify OUT --labels TRUE.csv`.")


def render_clusters(preview: Any) -> None:
    """`preview`: fit.clusters.ClusterPreview."""
    console.print(f"[bold]no labels[/]: fit would train on these k-means pseudo-tasks ({preview.images} images at "
                  f"{preview.size} px; the clusters of the images left out by protect's holdout may differ a little)")
    for name, counts in preview.counts.items():
        console.print(f"  {name}: members per cluster " + ", ".join(f"c{j} {n}" for j, n in enumerate(counts)))
    if preview.note:
        console.print(f"[yellow]note[/]: {preview.note}")
    if preview.counts:
        console.print(f"contact sheet: {preview.sheet}" if preview.sheet else
                      "see each cluster's members: --sheet clusters.png")
    console.print(CLUSTER_CAVEAT)


def render_inspect(report: Any) -> None:
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
    for task in getattr(report, "dense_tasks", []):
        total = sum(task.pixel_counts) or 1
        detail = (", ".join(f"{c} {n / total:.1%}" for c, n in zip(task.classes, task.pixel_counts)) if task.pixel_counts
                  else f"depth {task.value_range[0]:g}..{task.value_range[1]:g}" if task.value_range else "")
        console.print(f"task [bold]{task.name}[/] ({task.kind}{f', {len(task.classes)} classes' if task.classes else ''}):"
                      f" {detail + '; ' if detail else ''}invalid pixels {task.invalid_share:.1%}"
                      + (f", [yellow]{task.size_mismatches} map(s) not the size of their image[/]" if task.size_mismatches
                         else ""), highlight=False)
    sizes = ", ".join(f"{k} x{v}" for k, v in list(report.sizes.items())[:5])
    console.print(f"sizes: {sizes}{' ...' if len(report.sizes) > 5 else ''}")
    console.print("modes: " + ", ".join(f"{k} x{v}" for k, v in report.modes.items()))
    if report.flags:
        console.print("notes: " + ", ".join(f"{k} x{v}" for k, v in report.flags.items()))
    console.print(f"estimated protected output (lossless PNG, rough): {report.estimated_output_bytes / 1e6:.1f} MB")
    if report.problems:
        from mtlue_cli.errors import FileProblem

        console.print(f"[yellow]{len(report.problems)} problem(s):[/]")
        print_problems([FileProblem(p["path"], p["reason"], p["row"]) for p in report.problems], "yellow", limit=50,
                       line=lambda p: f"{p.path}{f' (row {p.row})' if p.row else ''}: {p.reason}")
    else:
        console.print("[green]no problems found[/]")


def render_recipe(name: str, cfg: Any) -> None:
    budget = f", time budget {cfg.time_budget / 60:.0f} min" if cfg.time_budget else ""
    console.print(f"recipe [bold]{name}[/]: {cfg.method.upper()} at {cfg.image_size} px, generator {cfg.stem} stem, width {cfg.width}, "
                  f"up to {cfg.epochs} epochs{budget}, batch {cfg.batch_size}, epsilon {cfg.epsilon * 255:.4g}/255, "
                  f"{'robust to ' + '/'.join(s for s in cfg.robust if s != 'identity') if cfg.robust else 'no squeeze training'}")


def render_fit(report: Any) -> None:
    """`report`: fitting.FitReport."""
    if report.skipped:
        console.print(f"[yellow]{len(report.skipped)} file(s) skipped:[/]")
        print_problems(report.skipped, "yellow")
    result = report.result
    table = Table(title="surrogate accuracy on the training set", title_justify="left")
    table.add_column("task")
    table.add_column("clean images", justify="right")
    table.add_column("protected (x+δ)", justify="right")
    for k, task in enumerate(report.tasks):
        measure = report.measures[k] if k < len(report.measures) else "accuracy"
        name = task if measure == "accuracy" else f"{task} ({measure.replace('_', ' ')})"  # a label map's agreement
        table.add_row(name, f"{result.surrogate_clean_acc[k]:.1%}" if result.surrogate_clean_acc else "-",
                      f"{result.attacked_train_acc[k]:.1%}")
    console.print(table)
    if report.clusters:
        console.print("[bold]no labels:[/] the generator was fitted on k-means pseudo-tasks ("
                      + "; ".join(f"{t}: members {', '.join(map(str, c))}" for t, c in report.clusters.items())
                      + "); protect labels new photos the same way")
        console.print(CLUSTER_CAVEAT)
    render_fit_summary(result)


def render_fit_summary(result: Any) -> None:
    clean = (f"{sum(result.surrogate_clean_acc) / len(result.surrogate_clean_acc):.1%} on clean images, "
             if result.surrogate_clean_acc else "")
    attacked = sum(result.attacked_train_acc) / len(result.attacked_train_acc)
    console.print(f"[bold]{result.method.upper()} generator:[/] surrogate accuracy {clean}{attacked:.1%} on x+δ after "
                  f"{result.epochs_run} epochs in {result.seconds / 60:.1f} min (stopped by {result.stop_reason})")


# ----------------------------------------------------------------------------- protect


def render_protect(report: Any) -> None:
    if report.fit is not None:
        render_fit_summary(report.fit.result)
    table = Table(title="protect summary", title_justify="left", show_header=False)
    table.add_column()
    table.add_column(justify="right")
    table.add_row("written", str(report.written))
    table.add_row("already done (--resume)", str(report.resumed))
    table.add_row("held out (clean test split)", str(report.held_out))
    table.add_row("failed", str(len(report.failed)))
    if report.predicted_tasks:
        table.add_row("labels predicted by the generator", ", ".join(report.predicted_tasks))
    if report.unlabelled:
        table.add_row("no label row (--skip-bad)", f"[yellow]{len(report.unlabelled)}[/]")
    if report.unprotected_tasks:
        table.add_row("tasks protected", ", ".join(report.protected_tasks))
        table.add_row("tasks NOT protected", f"[yellow]{', '.join(report.unprotected_tasks)}[/]")
    colour = "green" if report.within_budget else "red"
    table.add_row("max measured L-inf (files as written)",
                  f"[{colour}]{report.max_linf_255}/255[/] (budget {report.epsilon_255:.4g}/255)")
    table.add_row("mean PSNR / SSIM", f"{report.mean_psnr:.2f} dB / {report.mean_ssim:.4f}")
    table.add_row("time", f"{report.seconds:.1f} s ({report.images_per_second:.1f} img/s)")
    console.print(table)
    if report.predicted_tasks:
        clusters = all(t.startswith("cluster_k") for t in report.predicted_tasks)  # fit.pseudo.task_name
        console.print(CLUSTER_CAVEAT if clusters else PREDICTED_CAVEAT)
    for failed in report.failed[:50]:
        console.print(f"[red]  failed: {escape(failed.source)}: {escape(failed.reason)}[/]", highlight=False)
    if report.unlabelled:
        console.print(f"[yellow]  {len(report.unlabelled)} image(s) without a label row were NOT protected (e.g. "
                      f"{escape(examples(report.unlabelled))}); run.json lists them all[/]", highlight=False,
                      soft_wrap=True)
    if report.preview:
        console.print(f"preview: {report.preview}")
    console.print(f"[green]protected copies in {report.out}[/] (manifest.jsonl, run.json, labels.csv)")


# ----------------------------------------------------------------------------- verify


def render_aliases(registry: dict[str, dict[str, Any]]) -> None:
    table = Table(title="pretrained aliases", title_justify="left")
    for col in ("alias", "repo", "revision", "size", "tasks"):
        table.add_column(col)
    for alias, entry in registry.items():
        table.add_row(alias, entry["repo_id"], (entry.get("revision") or "bundled only")[:12], str(entry["image_size"]),
                      ", ".join(f"{k}({len(v) or 'map'})" for k, v in entry["tasks"].items()))  # no classes: a depth/normals map
    console.print(table)


def render_export(report: Any) -> None:
    if report.folder is not None:
        console.print(f"[green]generator exported to {report.folder}[/] (model.safetensors, config.json, README.md)")
    if report.url is not None:
        console.print(f"[green]pushed to {report.repo_id}[/]: {report.url}")


def render_publish(report: Any, out: Any, to: str | None) -> None:
    for failed in report.failed[:50]:
        console.print(f"[yellow]  left out (failed in protect): {escape(failed.path)}: {escape(failed.reason)}[/]",
                      highlight=False)
    console.print(f"{report.train_images} protected images" + (f" + {report.test_images} clean test originals"
                  if report.test_images else "") + f", {report.files} files, {report.bytes / 1e6:.1f} MB in {report.folder}")
    console.print(f"card: {report.card} (license: {report.license}, {'verified' if report.verified else 'not verified'})")
    if report.url is None:
        console.print("[bold]dry run[/]: nothing was sent" + (f"; to upload: mtlue publish {out} --to {to}" if to else ""))
    else:
        console.print(f"[green]published to {report.url}[/]")
