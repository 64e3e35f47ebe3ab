"""Self-contained generator folders with a model card, and publishing them to the Hugging Face Hub."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mtlue_cli.errors import ConfigError, WeightsError
from mtlue_cli.hub import CARD, CONFIG, RECORD, WEIGHTS, LoadedGenerator, upload_errors
from mtlue_cli.model_card import model_card

VERIFY_RESULT = "verify.json"


def export_generator(loaded: LoadedGenerator, to: Path, verify_report: Path | None = None, overwrite: bool = False) -> Path:
    """Copy a generator into a self-contained folder: weights, config, record, verify result, model card."""
    to = Path(to)
    if to.exists() and any(to.iterdir()) and not overwrite:
        raise ConfigError(f"{to} exists and is not empty; pass --overwrite or choose another --to")
    if to.resolve() == loaded.folder.resolve():
        raise ConfigError(f"--to {to} is the generator's own folder")
    to.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS, CONFIG, RECORD):
        if (loaded.folder / name).is_file():
            shutil.copyfile(loaded.folder / name, to / name)
    report = None
    if verify_report is not None:
        try:
            report = json.loads(Path(verify_report).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--verify-report {verify_report}: cannot read a verify JSON report ({exc})") from None
        shutil.copyfile(verify_report, to / VERIFY_RESULT)
    elif (loaded.folder / VERIFY_RESULT).is_file():
        shutil.copyfile(loaded.folder / VERIFY_RESULT, to / VERIFY_RESULT)
        report = json.loads((to / VERIFY_RESULT).read_text())
    config = json.loads((to / CONFIG).read_text())
    (to / CARD).write_text(model_card(config, loaded.metadata, loaded.record, report))
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
