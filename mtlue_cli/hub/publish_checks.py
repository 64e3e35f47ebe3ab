"""What `mtlue publish` refuses, checked before anything is written: anything that could put an unprotected
original online by accident (an image protect did not write, a measured L-inf of 0, a file changed after
protect, a held-out original in the folder), failed files unless allowed, and runs that did not finish."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlue_cli.errors import ConfigError, FileProblem, PublishRefused, examples
from mtlue_cli.events import OnEvent, noop
from mtlue_cli.files import file_sha256
from mtlue_cli.protect import outputs
from mtlue_cli.protect.outputs import LABELS, MANIFEST, RUN

RESERVED_COLUMNS = ("file_name", "image")  # imagefolder's own columns


@dataclass
class CheckedFolder:
    run: outputs.RunRecord
    tasks: list[str]
    rows: list[list[str]]  # labels.csv rows: output path, then one class per task
    entries: dict[str, dict[str, Any]]  # output path -> its manifest entry
    failed: list[FileProblem]
    dense: dict[str, str] = field(default_factory=dict)  # label-map task -> kind (its column: the copied map's path)


def refuse(what: str, problems: list[FileProblem], todo: str) -> PublishRefused:
    return PublishRefused(f"{len(problems)} file(s) {what} (e.g. {examples([p.path for p in problems])}); {todo}",
                          problems)


def check_folder(out: Path, allow_failed: bool = False, on_event: OnEvent | None = None) -> CheckedFolder:
    """Everything `publish` refuses, before anything is written. Raises PublishRefused."""
    from mtlue_cli.data.images import safe_path, scan_images

    on_event = on_event or noop
    out = Path(out)
    if not out.is_dir():
        raise ConfigError(f"{out}: no such folder; give the folder `mtlue protect` wrote")
    if not (out / MANIFEST).is_file() or not (out / LABELS).is_file():
        raise PublishRefused(f"{out} has no {MANIFEST} or {LABELS}: it is not a folder written by `mtlue protect`")
    run = outputs.read_run(out)
    if not run.exists:  # protect writes run.json last: without it the run did not finish
        raise PublishRefused(f"{out} has no readable {RUN}: the protect run did not finish. Rerun the same "
                             "`mtlue protect ... --resume` to the end, then publish")
    lines = outputs.read_entries(out / MANIFEST)  # a line cut by a crash is skipped; its file was redone or caught below
    written = outputs.written(lines)
    tasks, rows = outputs.read_labels_csv(out)
    if not tasks:
        raise PublishRefused(f"{out / LABELS} has no tasks; protect again")
    clash = [t for t in tasks if t in RESERVED_COLUMNS]
    if clash:
        raise PublishRefused(f"task column(s) {clash} clash with the dataset's own columns {list(RESERVED_COLUMNS)}; "
                             "rename them in your labels and protect again")
    dense = {t: e["kind"] for t, e in run.label_tasks.items() if isinstance(e, dict) and t in tasks}
    columns = [tasks.index(t) + 1 for t in dense]
    if any(r[0].lower().endswith(outputs.NPY) for r in rows):
        raise PublishRefused("the images are .npy arrays (layout nyuv2), which a Hub image dataset cannot hold; upload "
                             f"{out} as files instead (`hf upload ORG/NAME {out} --repo-type dataset`)")
    listed = {r[0] for r in rows} | {r[c] for r in rows for c in columns}  # the label maps protect copied

    # Every image in the folder must be one protect wrote and listed; nothing else is sent, but an extra
    # image is a sign of a mixed-up folder (or an original copied in).
    extra = [p for p in scan_images(out) if p not in listed]
    late = [p for p in extra if p in written]
    if late:
        raise refuse("were written by a protect run that did not finish (in the manifest, not in labels.csv)",
                     [FileProblem(p, "written by an unfinished run") for p in late],
                     "rerun the same `mtlue protect ... --resume` to the end, then publish")
    if extra:
        raise refuse("in the folder are not in its manifest as protected", [FileProblem(p, "not written by protect")
                     for p in extra], "move them out (an original must never be published by accident)")
    summary = run.summary
    expected = summary.get("written", 0) + summary.get("resumed", 0) if summary else None
    if expected is not None and expected != len(rows):
        raise PublishRefused(f"{LABELS} lists {len(rows)} files but {RUN} recorded {expected}: the folder changed after "
                             "the run or a later run did not finish; rerun `mtlue protect ... --resume` to the end")

    missing, unlisted, zero, changed = [], [], [], []
    on_event("start", {"stage": "check", "total": len(rows), "description": "Checking"})
    for i, row in enumerate(rows, 1):
        path = row[0]
        entry = written.get(path)
        try:
            full = safe_path(out, path)
        except FileProblem as problem:
            raise PublishRefused(f"{LABELS}: {problem}") from None
        if not full.is_file():
            missing.append(FileProblem(path, "listed in labels.csv but missing"))
        elif entry is None:
            unlisted.append(FileProblem(path, "not in the manifest as ok or resumed"))
        elif not entry.get("linf_255"):  # 0 or missing: identical to the original, or never measured
            zero.append(FileProblem(path, f"measured L-inf {entry.get('linf_255')}: not protected"))
        elif entry.get("sha256_out") != file_sha256(full):
            changed.append(FileProblem(path, "changed after protect wrote it (sha256 differs from the manifest)"))
        else:
            copied = {m.get("output"): m.get("sha256") for m in entry.get("maps") or []}
            for c in columns:  # a label map must be the copy protect made of the original's
                if not (out / row[c]).is_file():
                    missing.append(FileProblem(row[c], "label map listed in labels.csv but missing"))
                elif copied.get(row[c]) != file_sha256(out / row[c]):
                    changed.append(FileProblem(row[c], "label map not the one protect copied (sha256 differs)"))
        on_event("progress", {"stage": "check", "done": i})
    on_event("end", {"stage": "check"})
    if missing:
        raise refuse("listed in labels.csv are missing", missing, "rerun `mtlue protect ... --resume`")
    if unlisted:
        raise refuse("are not in the manifest as protected", unlisted, "rerun `mtlue protect ... --resume` to the end")
    if zero:
        raise refuse("have a measured L-inf of 0 or none: they may be unprotected originals", zero,
                     "protect them again (`mtlue protect ... --overwrite`) before publishing")
    if changed:
        raise refuse("were changed after `mtlue protect` wrote them", changed,
                     "protect again (`--overwrite`) so that the manifest measures what is published")
    sources = {written[r[0]]["source"] for r in rows}
    leaked = [FileProblem(p, "held out, but its protected copy is in the folder") for p in run.held_out if p in sources]
    if leaked:
        raise refuse("are both in the clean held-out split and protected", leaked,
                     "protect again with `--overwrite` so that the split and the folder agree")
    failed_sources = {e["source"]: e for e in lines if e.get("status") == "failed" and e["source"] not in sources}
    failed = [FileProblem(s, e.get("reason") or "failed") for s, e in sorted(failed_sources.items())]
    if failed and not allow_failed:
        raise refuse("failed in `mtlue protect`", failed, "fix them and rerun `mtlue protect ... --resume`, or pass "
                     "--allow-failed to publish the others (the failed ones are then listed in the card)")
    # Labels mtlue predicted (issue 30) are its guesses, not the owner's: they are not published.
    keep = [0] + [k + 1 for k, t in enumerate(tasks) if t not in run.predicted_tasks]
    tasks, rows = [tasks[k - 1] for k in keep[1:]], [[r[k] for k in keep] for r in rows]
    return CheckedFolder(run, tasks, rows, {r[0]: written[r[0]] for r in rows}, failed, dense)
