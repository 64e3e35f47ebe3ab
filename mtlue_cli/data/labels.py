"""Multi-task labels: one reader per layout owners have (CSV/TSV, folder tree, UTKFace file names, CelebA
attribute file, NYUv2 .npy folders), all returning the same `LabelTable` (data.tasks), with per-row validation;
label maps join any of them (data.dense_labels).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Iterable

from mtlue_cli.config import DataConfig
from mtlue_cli.data import dense_labels
from mtlue_cli.data.images import IMAGE_EXTENSIONS, safe_path, scan_images
from mtlue_cli.data.tasks import UNLABELLED, LabelTable, Record, TaskSpec, unlabelled_note  # noqa: F401 (re-exported)
from mtlue_cli.errors import DatasetError, FileProblem

# UTKFace age bins of the paper (method-spec §7): [0-2], [3-9], [10-19], ..., [60-69], [70+].
UTK_AGE_EDGES = (3, 10, 20, 30, 40, 50, 60, 70)
UTK_TASKS = ("age", "race", "gender")  # task order of the official code (§7)
# Readable names of UTKFace's class indices (its README: gender 0 male; race 0 White .. 4 Others).
UTK_CLASS_NAMES = {
    "age": ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"),
    "race": ("white", "black", "asian", "indian", "other"),
    "gender": ("male", "female"),
}
UTK_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_")
LABEL_FILE_NAMES = ("labels.csv", "labels.tsv", "metadata.csv")


def _check_exists(root: Path, rel: str, row: int | None) -> None:
    full = safe_path(root, rel, row)
    if not full.exists():
        raise FileProblem(rel, "no such file under the image root", row)
    if not full.is_file():
        raise FileProblem(rel, "not a regular file", row)


# ----------------------------------------------------------------------------- readers


def _vocabulary(values: Iterable[str]) -> tuple[str, ...]:
    """Stable class order: numeric if every value is an integer, else lexicographic."""
    unique = set(values)
    try:
        return tuple(sorted(unique, key=lambda v: (int(v), v)))
    except ValueError:
        return tuple(sorted(unique))


def _finish(
    root: Path,
    names: list[str],
    rows: list[tuple[str, list[str], int | None]],
    layout: str,
    problems: list[FileProblem],
    labels_file: Path | None = None,
    path_column: str = "path",
    vocab: dict[str, tuple[str, ...]] | None = None,
) -> LabelTable:
    """Shared tail of every reader: vocabularies, task checks, duplicates, file existence."""
    if not rows:
        where = labels_file or root
        raise DatasetError(f"{where}: no labelled images found; check the path and the layout (--layout)")
    vocab = dict(vocab or {})
    fixed = set(vocab)
    for k, name in enumerate(names):
        if name not in vocab:
            vocab[name] = _vocabulary(values[k] for _, values, _ in rows if values[k] != "")
        if not vocab[name]:
            raise DatasetError(f"{labels_file or root}: task column {name!r} is empty; fill it or drop it with --tasks")
        if len(vocab[name]) < 2:
            raise DatasetError(
                f"{labels_file or root}: task {name!r} has a single class ({vocab[name][0]!r}); "
                "a task needs at least two classes: drop it with --tasks"
            )
    spec = TaskSpec(tuple(names), tuple(vocab[n] for n in names))
    index = [{c: i for i, c in enumerate(vocab[n])} for n in names]
    seen: dict[str, int | None] = {}
    records: list[Record] = []
    for raw, values, row in rows:
        rel = _normalise(raw)
        try:
            if rel in seen:
                first = seen[rel]
                raise FileProblem(raw, f"duplicate row (first listed at row {first}); keep one", row)
            seen[rel] = row
            for k, value in enumerate(values):
                if value == "":
                    raise FileProblem(rel, f"empty value for task {names[k]!r}", row)
                if value not in index[k]:
                    raise FileProblem(rel, f"unknown class {value!r} for task {names[k]!r}", row)
            _check_exists(root, rel, row)
        except FileProblem as problem:
            problems.append(problem)
            continue
        records.append(Record(rel, tuple(index[k][v] for k, v in enumerate(values)), row))
    for k, name in enumerate(names):
        present = {r.labels[k] for r in records}
        # Only vocabularies read from the data: fixed ones (UTKFace, CelebA) may be partly absent in a split.
        if name not in fixed and records and len(present) < 2:
            only = vocab[name][next(iter(present))]
            raise DatasetError(f"{labels_file or root}: task {name!r} has a single class ({only!r}) among the usable "
                               "images; a task needs at least two classes: drop it with --tasks")
    return LabelTable(root, spec, records, layout, labels_file, path_column, problems)


def _normalise(rel: str) -> str:
    """One spelling per file: forward slashes, no './' (so duplicates and lookups agree)."""
    text = rel.strip().replace("\\", "/")
    return PurePosixPath(text).as_posix() if text else text


def _unlabelled(root: Path, listed: Iterable[str], problems: list[FileProblem]) -> None:
    """Images under the root with no label row would silently go unprotected: report them."""
    listed_set = {_normalise(p) for p in listed}
    for rel in scan_images(root):
        if rel not in listed_set:
            problems.append(FileProblem(rel, UNLABELLED))


def read_csv(
    root: Path,
    labels: Path,
    path_column: str | None = None,
    tasks: tuple[str, ...] | None = None,
    cfg: DataConfig | None = None,
) -> LabelTable:
    """CSV/TSV: a path column (first, or `path_column`) and one column per task; the columns `cfg.map_columns`
    names hold paths to label maps (data.dense_labels, form b)."""
    try:
        raw = labels.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{labels}: cannot read the labels file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(f"{labels}: not UTF-8 text; save the labels file as UTF-8 CSV") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DatasetError(f"{labels}: empty labels file; the first line must be a header")
    if labels.suffix.lower() == ".tsv":
        delimiter = "\t"
    else:
        header_line = lines[0]
        delimiter = max(",;\t", key=header_line.count) if any(d in header_line for d in ",;\t") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    if len(header) < 2:
        raise DatasetError(f"{labels}: the header has one column; expected a path column and task columns")
    if len(set(header)) != len(header):
        dup = [h for h, n in Counter(header).items() if n > 1]
        raise DatasetError(f"{labels}: duplicate header column(s) {dup}; rename them")
    pcol = path_column or header[0]
    if pcol not in header:
        raise DatasetError(f"{labels}: no column {pcol!r}; columns are {header}")
    dense = dense_labels.column_tasks(cfg) if cfg is not None else []
    maps = [t for t, _ in dense]
    names = [t for t in (list(tasks) if tasks else [h for h in header if h != pcol]) if t not in maps]
    missing = [t for t in names + maps if t not in header]
    if missing:
        raise DatasetError(f"{labels}: task column(s) {missing} not found; columns are {header}")
    if pcol in names + maps:
        raise DatasetError(f"{labels}: {pcol!r} is the path column and cannot also be a task")
    pi, ti, mi = header.index(pcol), [header.index(t) for t in names], [header.index(t) for t in maps]
    rows: list[tuple[str, list[str], int | None]] = []
    map_values: dict[int | None, list[str]] = {}
    problems: list[FileProblem] = []
    for line_no, fields in enumerate(reader, start=2):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            rel = fields[pi].strip() if len(fields) > pi else "(row)"
            problems.append(FileProblem(rel, f"has {len(fields)} fields, the header has {len(header)}", line_no))
            continue
        rows.append((fields[pi].strip(), [fields[i].strip() for i in ti], line_no))
        map_values[line_no] = [fields[i].strip() for i in mi]
    table = _finish(root, names, rows, "csv", problems, labels, pcol)
    _unlabelled(root, [r[0] for r in rows] + [p.path for p in problems], table.problems)
    return dense_labels.attach_columns(table, dense, map_values, cfg) if dense and cfg is not None else table


def read_folder_tree(root: Path, tasks: tuple[str, ...] | None = None) -> LabelTable:
    """Nested folders whose directory levels are tasks: `gender/race/file.jpg`."""
    files = scan_images(root)
    if not files:
        raise DatasetError(f"{root}: no images found")
    depths = Counter(len(PurePosixPath(f).parts) - 1 for f in files)
    depth = depths.most_common(1)[0][0]
    if depth < 1:
        raise DatasetError(
            f"{root}: images sit directly in the root, so folders give no labels; "
            "pass --labels labels.csv (or --layout utkface for UTKFace names)"
        )
    names = list(tasks) if tasks else [f"task{i + 1}" for i in range(depth)]
    if len(names) != depth:
        raise DatasetError(f"{root}: the folder tree has {depth} levels but --tasks names {len(names)}")
    rows, problems = [], []
    for rel in files:
        parts = PurePosixPath(rel).parts
        if len(parts) - 1 != depth:
            problems.append(FileProblem(rel, f"is {len(parts) - 1} folder(s) deep; the tree has {depth} levels"))
            continue
        rows.append((rel, list(parts[:-1]), None))
    return _finish(root, names, rows, "folder", problems)


def utk_age_bin(age: int) -> int:
    return sum(age >= edge for edge in UTK_AGE_EDGES)


def read_utkface(root: Path) -> LabelTable:
    """UTKFace names `age_gender_race_date.jpg[.chip.jpg]`; age in the paper's 9 bins (§7)."""
    files = scan_images(root)
    if not files:
        raise DatasetError(f"{root}: no images found")
    rows, problems = [], []
    for rel in files:
        match = UTK_NAME.match(PurePosixPath(rel).name)
        if not match:
            problems.append(FileProblem(rel, "not a UTKFace name (age_gender_race_date.jpg)"))
            continue
        age, gender, race = (int(g) for g in match.groups())
        if age > 120 or gender > 1 or race > 4:
            problems.append(FileProblem(rel, f"UTKFace fields out of range (age {age}, gender {gender}, race {race})"))
            continue
        rows.append((rel, [str(utk_age_bin(age)), str(race), str(gender)], None))
    vocab = {"age": tuple(str(i) for i in range(9)), "race": tuple(str(i) for i in range(5)), "gender": ("0", "1")}
    return _finish(root, list(UTK_TASKS), rows, "utkface", problems, vocab=vocab)


def read_celeba(
    root: Path,
    attr_file: Path,
    partition: Path | None = None,
    split: str = "train",
    tasks: tuple[str, ...] | None = None,
) -> LabelTable:
    """CelebA `list_attr_celeba.txt` (count line, names line, rows of -1/1 -> 0/1) + partition file."""
    try:
        lines = attr_file.read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise DatasetError(f"{attr_file}: cannot read ({exc.strerror or exc})") from None
    if len(lines) < 3:
        raise DatasetError(f"{attr_file}: too short for a CelebA attribute file")
    names_all = lines[1].split()
    names = list(tasks) if tasks else names_all
    unknown = [t for t in names if t not in names_all]
    if unknown:
        raise DatasetError(f"{attr_file}: attribute(s) {unknown} not in the file")
    keep: set[str] | None = None
    if partition is not None and split != "all":
        code = {"train": "0", "valid": "1", "test": "2"}.get(split)
        if code is None:
            raise DatasetError(f"unknown CelebA split {split!r}; use train, valid, test or all")
        try:
            keep = {p[0] for p in (ln.split() for ln in partition.read_text().splitlines()) if len(p) == 2 and p[1] == code}
        except OSError as exc:
            raise DatasetError(f"{partition}: cannot read ({exc.strerror or exc})") from None
    cols = [names_all.index(t) + 1 for t in names]
    rows, problems = [], []
    for line_no, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if keep is not None and parts[0] not in keep:
            continue
        if len(parts) != len(names_all) + 1:
            problems.append(FileProblem(parts[0], f"has {len(parts) - 1} attributes, expected {len(names_all)}", line_no))
            continue
        values = [{"-1": "0", "1": "1", "0": "0"}.get(parts[c], "?" + parts[c]) for c in cols]
        bad = [v for v in values if v.startswith("?")]
        if bad:
            problems.append(FileProblem(parts[0], f"attribute values must be -1 or 1, got {bad[0][1:]!r}", line_no))
            continue
        rows.append((parts[0], values, line_no))
    vocab = {n: ("0", "1") for n in names}
    return _finish(root, names, rows, "celeba", problems, attr_file, "image", vocab)


def _looks_like_celeba(path: Path) -> bool:
    if path.name == "list_attr_celeba.txt":
        return True
    try:
        with path.open(encoding="utf-8-sig") as fh:
            first, second = fh.readline().strip(), fh.readline().split()
    except (OSError, UnicodeDecodeError):
        return False
    return first.isdigit() and len(second) >= 1 and "," not in second[0]


def detect_layout(root: Path, labels: Path | None, maps: bool = False) -> str:
    """The layout of `root`: a labels file's, NYUv2's folders, images labelled by `maps` only, UTKFace names, a
    folder tree or, for a flat folder of images and nothing else, none at all (in that order)."""
    if labels is not None:
        return "celeba" if _looks_like_celeba(labels) else "csv"
    for name in LABEL_FILE_NAMES:
        if (root / name).is_file():
            return "csv"
    if dense_labels.is_nyuv2(root):
        return "nyuv2"
    if maps:
        return "maps"
    files = scan_images(root)
    flat = [f for f in files if "/" not in f]
    if flat and sum(bool(UTK_NAME.match(f)) for f in flat) >= 0.9 * len(flat):
        return "utkface"
    if files and len(flat) < len(files):
        return "folder"
    if files:
        return "unlabelled"  # issue 30: fit makes pseudo-labels; protect predicts them with the generator's labeller
    raise DatasetError(f"{root}: no images found (supported: {', '.join(sorted(IMAGE_EXTENSIONS))})")


def read_unlabelled(root: Path) -> LabelTable:
    """Every image under `root`, with no task at all (issue 30): `fit` clusters them into pseudo-tasks, `protect`
    asks the generator's labeller for its tasks."""
    return LabelTable(root, TaskSpec((), ()), [Record(p, ()) for p in scan_images(root)], "unlabelled")


def read_labels(cfg: DataConfig) -> LabelTable:
    """Dispatch to the reader for `cfg.layout` (auto-detected when 'auto')."""
    root = Path(cfg.root)
    if not root.exists():
        raise DatasetError(f"{root}: no such folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; DATA is the folder that holds the images")
    labels = Path(cfg.labels) if cfg.labels is not None else None
    if labels is not None and not labels.is_file():
        raise DatasetError(f"{labels}: labels file not found")
    layout = cfg.layout if cfg.layout != "auto" else detect_layout(root, labels, bool(cfg.maps))
    if cfg.map_columns and layout != "csv":
        raise DatasetError(f"--map-columns names columns of a labels CSV, but the layout is {layout}; pass --labels")
    table = _read(root, labels, layout, cfg)
    return dense_labels.attach_folders(table, cfg) if cfg.maps and layout != "maps" else table


def _read(root: Path, labels: Path | None, layout: str, cfg: DataConfig) -> LabelTable:
    if layout == "csv":
        if labels is None:
            found = [root / n for n in LABEL_FILE_NAMES if (root / n).is_file()]
            if not found:
                raise DatasetError(f"{root}: --layout csv found no {' or '.join(LABEL_FILE_NAMES)}; pass --labels")
            labels = found[0]
        return read_csv(root, labels, cfg.path_column, cfg.tasks, cfg)
    if layout == "nyuv2":
        return dense_labels.read_nyuv2(root, cfg)
    if layout == "maps":
        return dense_labels.read_images_only(root, cfg)
    if layout == "folder":
        return read_folder_tree(root, cfg.tasks)
    if layout == "unlabelled":
        return read_unlabelled(root)
    if layout == "utkface":
        return read_utkface(root)
    if layout == "celeba":
        if labels is None:
            raise DatasetError("--layout celeba needs --labels list_attr_celeba.txt")
        return read_celeba(root, labels, cfg.partition, cfg.split, cfg.tasks)
    raise DatasetError(f"unknown layout {layout!r}")

