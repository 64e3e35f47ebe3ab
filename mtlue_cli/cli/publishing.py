"""The publishing commands, `export` (a generator folder, or the Hub) and `publish` (a protected folder as a Hugging
Face dataset): options -> config -> ONE library call -> rendering (style rule 1). Registered on the app when
`mtlue_cli.cli` is imported, after the four commands of `commands`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mtlue_cli.cli.options import DebugOpt, QuietOpt, app
from mtlue_cli.cli.render import Renderer, errors, render_aliases, render_export, render_publish


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
    with errors(debug):
        if list_aliases:
            from mtlue_cli.models.persistence import registry

            render_aliases(registry())
            return
        from mtlue_cli.hub.export import ExportConfig, export_and_push

        cfg = ExportConfig(generator=generator or "", to=to, verify_report=verify_report, push=push, private=private,
                           revision=revision, overwrite=overwrite)
        # No progress bars to show (not entered): only the line that names the folder before an upload.
        report = export_and_push(cfg, on_event=Renderer(quiet=False))
    render_export(report)


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
    with errors(debug):
        from mtlue_cli.hub.publish import PublishConfig, publish_dataset

        cfg = PublishConfig(repo_id=to, license=license_, private=private, revision=revision,
                            include_clean_test=include_clean_test, allow_failed=allow_failed, dry_run=dry_run)
        with Renderer(quiet) as render:
            report = publish_dataset(out, cfg, folder, on_event=render)
    render_publish(report, out, to)
