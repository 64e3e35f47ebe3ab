"""`publish_dataset`: turn a folder written by `mtlue protect` into a Hugging Face dataset and upload it.

Three steps, each in its own module: the refusals (`publish_checks`: anything that could put an unprotected
original online by accident), the upload folder in the imagefolder layout (`imagefolder`) with its dataset card
(`dataset_card`), and the upload itself, here. No path of the owner's machine goes into a written file.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlue_cli.errors import ConfigError, FileProblem, PublishError, PublishRefused
from mtlue_cli.events import OnEvent, log, noop
from mtlue_cli.hub.dataset_card import MANIFEST_COPY, RUN_COPY, VERIFY_COPY, dataset_card
from mtlue_cli.hub.imagefolder import (
    CARD,
    METADATA,
    Scrubber,
    clean_test,
    link_or_copy,
    local_paths,
    metadata_csv,
    prepare_folder,
    public_entry,
    public_run,
    write_file,
)
from mtlue_cli.hub.publish_checks import check_folder
from mtlue_cli.models.persistence import upload_errors
from mtlue_cli.protect import outputs
from mtlue_cli.protect.outputs import RUN, VERIFY

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class PublishConfig:
    repo_id: str | None = None  # org/name; None only for a dry run
    license: str | None = None  # a Hub licence id; None writes "other" and warns
    private: bool = False
    revision: str | None = None  # branch to upload to (created if missing)
    include_clean_test: bool = False  # test/ = the run's held-out ORIGINALS, unprotected
    allow_failed: bool = False  # publish although some files failed (they are left out and listed)
    dry_run: bool = False


@dataclass
class PublishReport:
    out: Path
    folder: Path  # the upload folder, exactly as sent
    repo_id: str | None
    train_images: int
    test_images: int
    files: int
    bytes: int
    card: Path
    license: str
    verified: bool
    failed: list[FileProblem] = field(default_factory=list)  # left out (--allow-failed)
    warnings: list[str] = field(default_factory=list)
    url: str | None = None  # None for a dry run


def default_folder(out: Path) -> Path:
    """OUT.hf beside OUT (like OUT.preview.png): kept, so a rerun resumes an interrupted upload."""
    resolved = Path(out).resolve()
    return resolved.with_name(resolved.name + ".hf")


# ----------------------------------------------------------------------------- the upload folder


def build_folder(out: Path, folder: Path, cfg: PublishConfig, on_event: OnEvent | None = None) -> PublishReport:
    """Check OUT and write the exact upload folder (train/, test/, README.md, manifest copy) into `folder`."""
    on_event = on_event or noop
    out, folder = Path(out), Path(folder)
    checked = check_folder(out, cfg.allow_failed, on_event)
    run = checked.run
    warnings: list[str] = []
    if not cfg.license:
        warnings.append("no --license: the card says `license: other`; pass a Hub licence id such as cc-by-nc-4.0")
    if checked.failed:
        warnings.append(f"{len(checked.failed)} file(s) failed in protect and are left out (listed in the card)")
    if run.predicted_tasks:
        warnings.append(f"labels mtlue predicted ({', '.join(run.predicted_tasks)}) are not published: they are guesses")
    prepare_folder(folder, out, run.input_root)
    scrub = Scrubber(local_paths(out, folder, run.raw))

    on_event("start", {"stage": "copy", "total": len(checked.rows), "description": "Building"})
    maps = [checked.tasks.index(t) + 1 for t in checked.dense]  # labels.csv columns holding a copied map's path
    for i, row in enumerate(checked.rows, 1):
        for c in (0, *maps):
            link_or_copy(out / row[c], folder / "train" / row[c])
        on_event("progress", {"stage": "copy", "done": i})
    on_event("end", {"stage": "copy"})
    write_file(folder / "train" / METADATA, metadata_csv(checked.rows, checked.tasks, checked.dense))
    test_rows: list[list[str]] = []
    if cfg.include_clean_test:
        test_rows = clean_test(run, checked.tasks, folder, on_event)
        write_file(folder / "test" / METADATA, metadata_csv(test_rows, checked.tasks))
        warnings.append(f"test/ holds {len(test_rows)} UNPROTECTED originals (the held-out split); the card says so")

    entries = [public_entry(checked.entries[r[0]], run.input_root) for r in checked.rows]
    entries += [{"source": p.path, "output": None, "status": "failed", "reason": p.reason} for p in checked.failed]
    write_file(folder / MANIFEST_COPY, "".join(scrub(json.dumps(e)) + "\n" for e in entries))
    write_file(folder / RUN_COPY, json.dumps(public_run(run.raw, scrub, cfg.include_clean_test), indent=2) + "\n")
    verify, stale = outputs.read_verify(out)
    if stale:
        warnings.append(f"{out / VERIFY} is older than {RUN} (an earlier protection): the card says not verified")
        verify = None
    if verify is not None:
        write_file(folder / VERIFY_COPY, scrub(json.dumps(verify, indent=2)) + "\n")
    card = dataset_card(run.raw, checked.tasks, checked.rows, checked.entries, test_rows, verify,
                        license=cfg.license or "other", repo_id=cfg.repo_id, failed=checked.failed,
                        dense=checked.dense)
    write_file(folder / CARD, scrub(card))

    files = [p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.relative_to(folder).parts]
    for path in files:  # a guard: the scrubbing above must have left no local path in what we wrote
        if path.suffix in (".md", ".csv", ".json", ".jsonl") and scrub.found(path.read_text(encoding="utf-8")):
            raise PublishRefused(f"{path.name} would carry a local path of this machine; please report this bug")
    for w in warnings:
        log(on_event, w, "warning")
    return PublishReport(out=out, folder=folder, repo_id=cfg.repo_id, train_images=len(checked.rows),
                         test_images=len(test_rows), files=len(files), bytes=sum(p.stat().st_size for p in files),
                         card=folder / CARD, license=cfg.license or "other", verified=verify is not None,
                         failed=checked.failed, warnings=warnings)


# ----------------------------------------------------------------------------- upload


def _folder_upload_resumes(version: str) -> bool:
    """huggingface_hub >= 1.20: upload_folder is multi-commit and resumable, upload_large_folder deprecated."""
    parts = re.findall(r"\d+", version)[:2]
    major, minor = (int(parts[0]), int(parts[1])) if len(parts) == 2 else (0, 0)
    return (major, minor) >= (1, 20)


def upload(folder: Path, repo_id: str, private: bool = False, revision: str | None = None,
           token: str | None = None) -> str:
    """Upload the folder as a dataset repo (resumable: rerun the same command after an interruption)."""
    import huggingface_hub
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with upload_errors(repo_id, PublishError, f"The folder {folder} is kept: rerun the same command when online, "
                       f"or upload it from a connected machine with `hf upload {repo_id} {folder.name} --repo-type dataset`"):
        repo = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        if hasattr(api, "upload_large_folder") and not _folder_upload_resumes(huggingface_hub.__version__):
            kwargs: dict[str, Any] = dict(repo_id=repo_id, repo_type="dataset", folder_path=str(folder),
                                          revision=revision, private=private)
            if "print_report" in inspect.signature(api.upload_large_folder).parameters:
                kwargs["print_report"] = False  # the library never prints (style rule 8)
            api.upload_large_folder(**kwargs)
        else:
            api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(folder), revision=revision,
                              commit_message="Upload MTL-UE protected dataset with mtlue")
    url = str(getattr(repo, "url", repo) or f"https://huggingface.co/datasets/{repo_id}")
    return url + (f"/tree/{revision}" if revision else "")


def publish_dataset(out: Path, cfg: PublishConfig, folder: Path | None = None, token: str | None = None,
                    on_event: OnEvent | None = None) -> PublishReport:
    """Check OUT, build the upload folder (default OUT.hf beside OUT) and, unless a dry run, upload it."""
    on_event = on_event or noop
    if not cfg.dry_run and not cfg.repo_id:
        raise ConfigError("give the Hub dataset repo: --to org/name (or --dry-run to build the folder only)")
    if cfg.repo_id and not REPO_ID.match(cfg.repo_id):
        raise ConfigError(f"--to {cfg.repo_id!r} is not a Hub repo id; write it as org/name")
    report = build_folder(out, folder or default_folder(out), cfg, on_event)
    if not cfg.dry_run:
        log(on_event, f"uploading {report.files} files ({report.bytes / 1e6:.1f} MB) to {cfg.repo_id}")
        report.url = upload(report.folder, str(cfg.repo_id), cfg.private, cfg.revision, token)
    return report
