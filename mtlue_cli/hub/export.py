"""Self-contained generator folders with a model card, and publishing them to the Hugging Face Hub."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mtlue_cli.errors import ConfigError, WeightsError
from mtlue_cli.events import OnEvent, log, noop
from mtlue_cli.files import copy_file, write_text
from mtlue_cli.models.card import model_card
from mtlue_cli.models.persistence import CARD, CONFIG, LABELLER_CONFIG, LABELLER_WEIGHTS, RECORD, WEIGHTS
from mtlue_cli.models.persistence import LoadedGenerator, load_generator, upload_errors

VERIFY_RESULT = "verify.json"


@dataclass(frozen=True)
class ExportConfig:
    generator: str  # a folder, a pretrained alias or a Hub id (hub.load_generator)
    to: Path | None = None  # None: a new temporary folder (with `push`)
    verify_report: Path | None = None  # a `verify --json` file for the model card
    push: str | None = None  # Hub repo id to upload to
    private: bool = False
    revision: str | None = None  # the revision to load, or with `push` the branch to push to
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.generator or (self.to is None and self.push is None):
            raise ConfigError("give a GENERATOR and --to DIR and/or --push REPO_ID (or --list)")


@dataclass
class ExportReport:
    folder: Path | None  # the self-contained folder written (None: a temporary one, removed after the push)
    repo_id: str | None = None  # where it was pushed
    url: str | None = None  # the Hub commit URL; None when not pushed


def export_generator(loaded: LoadedGenerator, to: Path, verify_report: Path | None = None, overwrite: bool = False) -> Path:
    """Copy a generator into a self-contained folder: weights, config, record, verify result, model card."""
    to = Path(to)
    if to.exists() and any(to.iterdir()) and not overwrite:
        raise ConfigError(f"{to} exists and is not empty; pass --overwrite or choose another --to")
    if to.resolve() == loaded.folder.resolve():
        raise ConfigError(f"--to {to} is the generator's own folder")
    to.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS, CONFIG, RECORD, LABELLER_WEIGHTS, LABELLER_CONFIG):
        if (loaded.folder / name).is_file():
            copy_file(loaded.folder / name, to / name)
    report = None
    if verify_report is not None:
        try:
            report = json.loads(Path(verify_report).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--verify-report {verify_report}: cannot read a verify JSON report ({exc})") from None
        copy_file(verify_report, to / VERIFY_RESULT)
    elif (loaded.folder / VERIFY_RESULT).is_file():
        copy_file(loaded.folder / VERIFY_RESULT, to / VERIFY_RESULT)
        report = json.loads((to / VERIFY_RESULT).read_text())
    config = json.loads((to / CONFIG).read_text())
    labeller = loaded.labeller.config if loaded.labeller is not None else None
    write_text(to / CARD, model_card(config, loaded.metadata, loaded.record, report, labeller))
    return to


def push_generator(folder: Path, repo_id: str, private: bool = False, revision: str | None = None,
                   token: str | None = None) -> str:
    """Upload an exported folder with huggingface_hub; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with upload_errors(repo_id, WeightsError, "Without network access, copy the folder to a connected machine "
                       "and push it from there"):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision,
                                 commit_message="Upload MTL-UE generator with mtlue")
    return str(getattr(info, "commit_url", info))


def export_and_push(cfg: ExportConfig, on_event: OnEvent | None = None) -> ExportReport:
    """`mtlue export`: load the generator, write its self-contained folder (cfg.to, or a new temporary folder)
    and, with cfg.push, upload that folder. A temporary folder is removed once the upload succeeded; a failed
    upload leaves the folder written (its path is in the event logged before the upload)."""
    on_event = on_event or noop
    loaded = load_generator(cfg.generator, revision=None if cfg.push else cfg.revision)
    folder = cfg.to if cfg.to is not None else Path(tempfile.mkdtemp(prefix="mtlue-export-"))
    report = ExportReport(export_generator(loaded, folder, cfg.verify_report, cfg.overwrite))
    if cfg.push:
        log(on_event, f"generator exported to {report.folder}; uploading it to {cfg.push}")
        report.repo_id = cfg.push
        report.url = push_generator(folder, cfg.push, private=cfg.private, revision=cfg.revision)
        if cfg.to is None:
            shutil.rmtree(folder)
            report.folder = None
    return report
