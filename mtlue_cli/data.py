"""Multi-task labels and images: readers for the layouts owners have, validation, decoding, caching.

Every reader (CSV/TSV, folder tree, UTKFace file names, CelebA attribute file) returns the same
`LabelTable`; `load_dataset` decodes it once into a uint8 tensor at the working size so training
epochs never re-decode (ecosystem §3.3, §3.4).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, Iterable

from PIL import Image, ImageOps, UnidentifiedImageError

from mtlue_cli.config import DataConfig
from mtlue_cli.errors import DatasetError, FileProblem
from mtlue_cli.events import OnEvent, log, noop

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif"}
)
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
MMAP_THRESHOLD_BYTES = 4 << 30


@dataclass(frozen=True)
class TaskSpec:
    """Task names and class vocabularies (as the user wrote them; index = position)."""

    names: tuple[str, ...]
    classes: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.classes):
            raise ValueError("one class list per task")

    @property
    def num_classes(self) -> list[int]:
        return [len(c) for c in self.classes]

    @property
    def binary(self) -> tuple[bool, ...]:
        """Binary tasks get one logit and BCE (method-spec §3.2); the rest get CE."""
        return tuple(len(c) == 2 for c in self.classes)

    def to_dict(self) -> dict[str, list[str]]:
        return {name: list(cls) for name, cls in zip(self.names, self.classes)}

    @classmethod
    def from_dict(cls, tasks: dict[str, list[str]]) -> TaskSpec:
        return cls(tuple(tasks), tuple(tuple(str(c) for c in v) for v in tasks.values()))


@dataclass(frozen=True)
class Record:
    """One labelled image: a POSIX path relative to the root, class indices, labels-file row."""

    path: str
    labels: tuple[int, ...]
    row: int | None = None


@dataclass
class LabelTable:
    """What every reader returns."""

    root: Path
    spec: TaskSpec
    records: list[Record]
    layout: str
    labels_file: Path | None = None
    path_column: str = "path"
    problems: list[FileProblem] = field(default_factory=list)


# ----------------------------------------------------------------------------- paths


def is_image_file(path: Path | str) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def safe_path(root: Path, rel: str, row: int | None = None) -> Path:
    """Resolve `rel` under `root`, refusing absolute paths, `..` and symlinks that leave the root."""
    text = rel.strip().replace("\\", "/")
    if not text:
        raise FileProblem("(empty)", "empty path", row)
    pure = PurePosixPath(text)
    if pure.is_absolute() or PureWindowsPath(rel).drive:
        raise FileProblem(rel, "absolute paths are not allowed; write it relative to the image root", row)
    if ".." in pure.parts:
        raise FileProblem(rel, "path escapes the image root ('..'); move the file under the root", row)
    full = root / pure
    try:
        real = full.resolve(strict=False)
    except (OSError, RuntimeError):
        raise FileProblem(rel, "symlink loop; remove or fix the link", row) from None
    if not real.is_relative_to(root.resolve()):
        raise FileProblem(rel, "symlink points outside the image root; copy the file in instead", row)
    return full


def scan_images(root: Path) -> list[str]:
    """All image files under `root` (relative POSIX paths, sorted), following no links out."""
    found: list[str] = []
    # Symlinked directories are not followed; symlinked files are listed and checked by safe_path.
    # Hidden entries (.DS_Store, .thumbnails, temp files of an interrupted write) are not images.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            (Path(dirpath) / name).relative_to(root).as_posix()
            for name in sorted(filenames)
            if is_image_file(name) and not name.startswith(".")
        )
    return found


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


UNLABELLED = "image has no label row; add one or move the file out of the root"


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
) -> LabelTable:
    """CSV/TSV: a path column (first, or `path_column`) and one column per task."""
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
    names = list(tasks) if tasks else [h for h in header if h != pcol]
    missing = [t for t in names if t not in header]
    if missing:
        raise DatasetError(f"{labels}: task column(s) {missing} not found; columns are {header}")
    if pcol in names:
        raise DatasetError(f"{labels}: {pcol!r} is the path column and cannot also be a task")
    pi, ti = header.index(pcol), [header.index(t) for t in names]
    rows: list[tuple[str, list[str], int | None]] = []
    problems: list[FileProblem] = []
    for line_no, fields in enumerate(reader, start=2):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            rel = fields[pi].strip() if len(fields) > pi else "(row)"
            problems.append(FileProblem(rel, f"has {len(fields)} fields, the header has {len(header)}", line_no))
            continue
        rows.append((fields[pi].strip(), [fields[i].strip() for i in ti], line_no))
    table = _finish(root, names, rows, "csv", problems, labels, pcol)
    _unlabelled(root, [r[0] for r in rows] + [p.path for p in problems], table.problems)
    return table


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


def detect_layout(root: Path, labels: Path | None) -> str:
    if labels is not None:
        return "celeba" if _looks_like_celeba(labels) else "csv"
    for name in LABEL_FILE_NAMES:
        if (root / name).is_file():
            return "csv"
    files = scan_images(root)
    flat = [f for f in files if "/" not in f]
    if flat and sum(bool(UTK_NAME.match(f)) for f in flat) >= 0.9 * len(flat):
        return "utkface"
    if files and len(flat) < len(files):
        return "folder"
    raise DatasetError(
        f"{root}: cannot tell how the images are labelled; pass --labels FILE "
        "(CSV/TSV or list_attr_celeba.txt), or use a folder tree whose levels are tasks"
    )


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
    layout = cfg.layout if cfg.layout != "auto" else detect_layout(root, labels)
    if layout == "csv":
        if labels is None:
            labels = next(root / n for n in LABEL_FILE_NAMES if (root / n).is_file())
        return read_csv(root, labels, cfg.path_column, cfg.tasks)
    if layout == "folder":
        return read_folder_tree(root, cfg.tasks)
    if layout == "utkface":
        return read_utkface(root)
    if layout == "celeba":
        if labels is None:
            raise DatasetError("--layout celeba needs --labels list_attr_celeba.txt")
        return read_celeba(root, labels, cfg.partition, cfg.split, cfg.tasks)
    raise DatasetError(f"unknown layout {layout!r}")


# ----------------------------------------------------------------------------- images


@dataclass
class Decoded:
    """An upright image split into what gets perturbed (RGB or L) and what is re-attached (alpha)."""

    image: Image.Image  # RGB, or L for grayscale inputs (perturbed as grey, method in protect.py)
    alpha: Image.Image | None
    source_mode: str
    exif_rotated: bool
    info: dict[str, Any]  # icc_profile, exif bytes, format


def open_image(path: Path) -> Decoded:
    """Decode fully (so truncation surfaces here), apply EXIF orientation, normalise the mode."""
    try:
        with Image.open(path) as im:
            im.load()
            orientation = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
            upright = ImageOps.exif_transpose(im) if orientation not in (None, 1) else im.copy()
            # EXIF from the transposed image: exif_transpose resets its Orientation tag to 1.
            info = {"format": im.format, "icc_profile": im.info.get("icc_profile"), "exif": upright.info.get("exif")}
    except FileNotFoundError:
        raise FileProblem(str(path), "file disappeared while reading") from None
    except PermissionError:
        raise FileProblem(str(path), "permission denied; make the file readable") from None
    except Image.DecompressionBombError as exc:
        raise FileProblem(str(path), f"too many pixels for a safe decode ({exc})") from None
    except UnidentifiedImageError:
        raise FileProblem(str(path), "not an image Pillow can read (corrupt or wrong extension)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise FileProblem(str(path), f"corrupt or truncated image ({exc})") from None
    source_mode = upright.mode
    alpha = None
    if upright.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits (Pillow's convert('L') would clip above 255).
        import numpy as np

        arr = np.asarray(upright, dtype=np.float64)
        top = 65535.0  # by the bit depth, not the content: a dark 16-bit frame stays dark
        upright = Image.fromarray(np.clip(np.rint(arr * 255.0 / top), 0, 255).astype(np.uint8), "L")
    elif upright.mode == "P":
        upright = upright.convert("RGBA") if "transparency" in upright.info else upright.convert("RGB")
    if upright.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = upright.getchannel("A")
        upright = upright.convert("RGB") if upright.mode in ("RGBA", "RGBa", "PA") else upright.convert("L")
    elif upright.mode == "1":
        upright = upright.convert("L")
    elif upright.mode not in ("RGB", "L"):
        upright = upright.convert("RGB")  # CMYK, YCbCr, LAB, F...
    return Decoded(upright, alpha, source_mode, orientation not in (None, 1), info)


def to_working(image: Image.Image, size: int) -> Image.Image:
    """Square RGB at the working size. The whole frame is resized (no crop) so δ maps back 1:1."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return rgb.resize((size, size), Image.Resampling.BILINEAR)


# ----------------------------------------------------------------------------- dataset


class MultiTaskImageDataset:
    """Decoded uint8 images (N, 3, S, S) at the working size plus labels (N, K).

    `__getitem__` returns `(image_uint8, labels)`, so it also works with torch DataLoader and
    DistributedSampler; the training loops index the tensors directly.
    """

    def __init__(self, table: LabelTable, images: torch.Tensor, labels: torch.Tensor, records: list[Record],
                 skipped: list[FileProblem]) -> None:
        self.table, self.images, self.labels = table, images, labels  # (N,3,S,S) uint8, (N,K) long
        self.records, self.skipped = records, skipped

    @property
    def spec(self) -> TaskSpec:
        return self.table.spec

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def subset(self, indices: list[int]) -> MultiTaskImageDataset:
        import torch

        idx = torch.as_tensor(indices, dtype=torch.long)
        return MultiTaskImageDataset(
            self.table, self.images[idx], self.labels[idx], [self.records[i] for i in indices], self.skipped
        )

    def fingerprint(self) -> str:
        """sha256 of the decoded pixels and labels: what training actually saw."""
        h = hashlib.sha256()
        h.update(repr(self.spec.to_dict()).encode())
        h.update(self.labels.numpy().tobytes())
        h.update(self.images.contiguous().numpy().tobytes())
        return h.hexdigest()


def raise_problems(problems: list[FileProblem], what: str = "input") -> None:
    if problems:
        raise DatasetError(
            f"{len(problems)} bad {what} file(s); fix them or pass --skip-bad to skip and report them",
        ) from _ProblemList(problems)


class _ProblemList(Exception):
    """Carries the per-file problems to the CLI as the cause of a DatasetError."""

    def __init__(self, problems: list[FileProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def problems_of(error: BaseException) -> list[FileProblem]:
    cause = error.__cause__
    return cause.problems if isinstance(cause, _ProblemList) else []


def load_dataset(cfg: DataConfig, on_event: OnEvent | None = None, table: LabelTable | None = None) -> MultiTaskImageDataset:
    """Read labels, decode every image once at `cfg.size`, and cache the uint8 pixels."""
    import numpy as np
    import torch

    on_event = on_event or noop
    table = table or read_labels(cfg)
    # Training and judging use the labelled rows: images without one are left out, said in one line.
    # (protect stops on them instead: an unlabelled image would silently stay unprotected.)
    unlabelled = [p.path for p in table.problems if p.reason == UNLABELLED]
    if unlabelled:
        log(on_event, f"{len(unlabelled)} image(s) in {table.root} have no label row and are left out "
            f"(e.g. {', '.join(unlabelled[:3])})", level="warning")
    skipped = [p for p in table.problems if p.reason != UNLABELLED]
    listed = len(skipped)
    if skipped and not cfg.skip_bad:
        raise_problems(skipped)
    n, size = len(table.records), cfg.size
    nbytes = n * 3 * size * size
    use_mmap = cfg.cache == "mmap" or (cfg.cache == "auto" and nbytes > MMAP_THRESHOLD_BYTES)
    if use_mmap:
        import tempfile

        handle = tempfile.NamedTemporaryFile(prefix="mtlue-cache-", suffix=".u8", delete=False)
        handle.close()
        images = torch.from_file(handle.name, shared=True, size=max(nbytes, 1), dtype=torch.uint8)
        os.unlink(handle.name)  # the mapping keeps the data alive; nothing is left on disk
        images = images[:nbytes].view(n, 3, size, size)
    else:
        images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    ok = [False] * n

    def work(i: int) -> FileProblem | None:
        record = table.records[i]
        try:
            decoded = open_image(table.root / record.path)
        except FileProblem as problem:
            return FileProblem(record.path, problem.reason, record.row)
        arr = np.asarray(to_working(decoded.image, size), dtype=np.uint8)  # (S,S,3)
        images[i] = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        ok[i] = True
        return None

    on_event("start", {"stage": "decode", "total": n, "description": "Decoding images"})
    with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
        for done, problem in enumerate(pool.map(work, range(n)), start=1):
            if problem is not None:
                skipped.append(problem)
            on_event("progress", {"stage": "decode", "done": done})
    on_event("end", {"stage": "decode"})
    if not cfg.skip_bad and len(skipped) > listed:
        raise_problems(skipped[listed:], "image")
    keep = [i for i in range(n) if ok[i]]
    if not keep:
        raise DatasetError(f"{table.root}: none of the {n} images could be decoded")
    labels = torch.tensor([r.labels for r in table.records], dtype=torch.long).view(n, len(table.spec.names))
    dataset = MultiTaskImageDataset(table, images, labels, list(table.records), skipped)
    return dataset if len(keep) == n else dataset.subset(keep)


def split_indices(records: list[Record], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train/test split by a hash of each path: stable whatever else is in the set.

    `protect --holdout` and `verify --test-split` use this same function, so the test images of
    `verify` are exactly the ones `protect` left out.
    """
    train, test = [], []
    for i, record in enumerate(records):
        digest = hashlib.sha256(f"{seed}:{record.path}".encode()).digest()
        (test if int.from_bytes(digest[:8], "big") / 2**64 < fraction else train).append(i)
    return train, test


def majority_baseline(train_labels: torch.Tensor, test_labels: torch.Tensor, num_classes: list[int]) -> list[float]:
    """Accuracy on the test labels of always predicting each task's most frequent training class."""
    import torch

    out = []
    for k, c in enumerate(num_classes):
        majority = int(torch.bincount(train_labels[:, k], minlength=c).argmax())
        out.append(float((test_labels[:, k] == majority).float().mean()))
    return out


# ----------------------------------------------------------------------------- inspect


@dataclass
class TaskSummary:
    name: str
    classes: list[str]
    counts: list[int]

    @property
    def majority_share(self) -> float:
        total = sum(self.counts)
        return max(self.counts) / total if total else 0.0


@dataclass
class InspectReport:
    root: str
    layout: str
    labels_file: str | None
    images: int
    tasks: list[TaskSummary]
    sizes: dict[str, int]  # "WxH" -> count (most common first)
    modes: dict[str, int]
    flags: dict[str, int]  # exif_rotated, alpha, grayscale, 16-bit, cmyk, palette
    problems: list[dict[str, Any]]
    estimated_output_bytes: int

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["tasks"] = [
            {"name": t.name, "classes": t.classes, "counts": t.counts, "majority_share": t.majority_share}
            for t in self.tasks
        ]
        return out


# Lossless PNG of photographs is roughly half the raw RGB size; a rough figure, said to be one.
PNG_BYTES_PER_RAW_BYTE = 0.5


def inspect_dataset(cfg: DataConfig, on_event: OnEvent | None = None) -> InspectReport:
    """Dry run: labels, class counts, image modes and sizes, problems, and an output-size estimate."""
    on_event = on_event or noop
    table = read_labels(cfg)
    problems = list(table.problems)
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    raw_bytes = 0
    good: list[Record] = []

    def probe(record: Record) -> tuple[Record, Decoded | FileProblem]:
        try:
            return record, open_image(table.root / record.path)
        except FileProblem as problem:
            return record, FileProblem(record.path, problem.reason, record.row)

    on_event("start", {"stage": "decode", "total": len(table.records), "description": "Reading images"})
    with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
        for done, (record, result) in enumerate(pool.map(probe, table.records), start=1):
            on_event("progress", {"stage": "decode", "done": done})
            if isinstance(result, FileProblem):
                problems.append(result)
                continue
            good.append(record)
            w, h = result.image.size
            sizes[f"{w}x{h}"] += 1
            modes[result.source_mode] += 1
            raw_bytes += w * h * (len(result.image.getbands()) + (result.alpha is not None))
            flags["exif_rotated"] += result.exif_rotated
            flags["alpha"] += result.alpha is not None
            flags["grayscale"] += result.image.mode == "L"
            flags["16-bit"] += result.source_mode.startswith("I")
            flags["cmyk"] += result.source_mode == "CMYK"
            flags["palette"] += result.source_mode == "P"
    on_event("end", {"stage": "decode"})
    tasks = []
    for k, (name, classes) in enumerate(zip(table.spec.names, table.spec.classes)):
        counts = Counter(r.labels[k] for r in good)
        tasks.append(TaskSummary(name, list(classes), [counts.get(i, 0) for i in range(len(classes))]))
    return InspectReport(
        root=str(table.root),
        layout=table.layout,
        labels_file=str(table.labels_file) if table.labels_file else None,
        images=len(good),
        tasks=tasks,
        sizes=dict(sizes.most_common()),
        modes=dict(modes.most_common()),
        flags={k: v for k, v in flags.items() if v},
        problems=[{"path": p.path, "row": p.row, "reason": p.reason} for p in problems],
        estimated_output_bytes=int(raw_bytes * PNG_BYTES_PER_RAW_BYTE),
    )
