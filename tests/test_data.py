"""mtlue_cli.data: label readers, validation, decoding, caching, splits and `inspect`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from mtlue_cli import cli as cli_module
from mtlue_cli.cli import app
from mtlue_cli.config import DataConfig
from mtlue_cli.data import (
    InspectReport,
    LabelTable,
    Record,
    TaskSpec,
    detect_layout,
    inspect_dataset,
    load_dataset,
    majority_baseline,
    open_image,
    problems_of,
    read_celeba,
    read_csv,
    read_folder_tree,
    read_labels,
    read_utkface,
    split_indices,
    utk_age_bin,
)
from mtlue_cli.errors import DatasetError

# ----------------------------------------------------------------------------- helpers


def write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write exactly `text` (no newline translation, so CRLF tests mean CRLF)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def labelled(table: LabelTable) -> dict[str, tuple[str, ...]]:
    """path -> class names, read back through the spec: what a reader claims each image is."""
    return {r.path: tuple(table.spec.classes[k][c] for k, c in enumerate(r.labels)) for r in table.records}


def problem_set(problems) -> set[tuple[str, int | None, str]]:
    return {(p.path, p.row, p.reason) for p in problems}


def one_problem(table: LabelTable, path: str):
    found = [p for p in table.problems if p.path == path]
    assert len(found) == 1, f"expected one problem for {path!r}, got {table.problems}"
    return found[0]


def append_rows(labels: Path, *lines: str) -> None:
    with labels.open("a") as fh:
        fh.writelines(line + "\n" for line in lines)


def jpeg_bytes(size: tuple[int, int] = (32, 32)) -> bytes:
    """A valid noisy JPEG, big enough that its first half ends inside the entropy-coded scan."""
    import io

    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


# ----------------------------------------------------------------------------- CSV reader


def test_read_csv_tiny_dataset(tiny_csv_dataset) -> None:
    ds = tiny_csv_dataset
    table = read_csv(ds.root, ds.labels)
    assert table.layout == "csv" and table.path_column == "path" and table.labels_file == ds.labels
    assert table.spec == TaskSpec(("gender", "age", "glasses"), (("female", "male"), ("2", "9", "10"), ("no", "yes")))
    assert table.spec.num_classes == [2, 3, 2]
    assert table.spec.binary == (True, False, True)
    assert table.problems == []
    assert [r.path for r in table.records] == ds.paths
    assert [r.row for r in table.records] == list(range(2, 14))
    assert labelled(table) == {r["path"]: (r["gender"], r["age"], r["glasses"]) for r in ds.rows}
    # Index = position in the vocabulary: img_04 is female / "9" / no.
    assert table.records[4].labels == (0, 1, 0)


CSV_BODY = [("a.png", "male", "10"), ("b.png", "female", "9"), ("c.png", "male", "2")]
EXPECTED_SPEC = TaskSpec(("gender", "age"), (("female", "male"), ("2", "9", "10")))


@pytest.mark.parametrize(
    "name, delimiter",
    [("labels.csv", ","), ("labels.csv", ";"), ("labels.tsv", "\t"), ("labels.txt", "\t")],
    ids=["comma", "semicolon", "tsv", "tab-sniffed"],
)
def test_read_csv_delimiters_give_the_same_table(tmp_path, make_image, name, delimiter) -> None:
    for path, *_ in CSV_BODY:
        make_image(tmp_path / path)
    lines = [delimiter.join(("path", "gender", "age"))] + [delimiter.join(row) for row in CSV_BODY]
    labels = write_text(tmp_path / name, "\n".join(lines) + "\n")
    table = read_csv(tmp_path, labels)
    assert table.spec == EXPECTED_SPEC
    assert table.problems == []
    assert [(r.path, r.labels, r.row) for r in table.records] == [
        ("a.png", (1, 2), 2), ("b.png", (0, 1), 3), ("c.png", (1, 0), 4)
    ]


def test_read_csv_class_order_strings_sorted_integers_numeric(tmp_path, make_image) -> None:
    ages = ["10", "9", "2", "100", "1", "9"]
    body = ""
    for i, age in enumerate(ages):
        make_image(tmp_path / f"{i}.png")
        body += f"{i}.png,{('male', 'female', 'other')[i % 3]},{age}\n"
    table = read_csv(tmp_path, write_text(tmp_path / "labels.csv", "path,gender,age\n" + body))
    assert table.spec.classes == (("female", "male", "other"), ("1", "2", "9", "10", "100"))
    assert [r.labels for r in table.records] == [(1, 3), (0, 2), (2, 1), (1, 4), (0, 0), (2, 2)]


def test_read_csv_path_column_and_task_selection(tmp_path, make_image) -> None:
    for name in ("x.png", "y.png", "z.png"):
        make_image(tmp_path / name)
    labels = write_text(
        tmp_path / "labels.csv",
        "id,smile,file,gender,age\n1,yes,x.png,f,30\n2,no,y.png,m,30\n3,no,z.png,m,40\n",
    )
    table = read_csv(tmp_path, labels, path_column="file")
    assert table.path_column == "file"
    assert table.spec.names == ("id", "smile", "gender", "age")
    assert [r.path for r in table.records] == ["x.png", "y.png", "z.png"]

    table = read_csv(tmp_path, labels, path_column="file", tasks=("gender", "smile"))
    assert table.spec == TaskSpec(("gender", "smile"), (("f", "m"), ("no", "yes")))  # the order asked for
    assert labelled(table) == {"x.png": ("f", "yes"), "y.png": ("m", "no"), "z.png": ("m", "no")}

    with pytest.raises(DatasetError, match=r"task column\(s\) \['hair'\] not found"):
        read_csv(tmp_path, labels, path_column="file", tasks=("hair",))
    with pytest.raises(DatasetError, match="no column 'filename'"):
        read_csv(tmp_path, labels, path_column="filename")
    with pytest.raises(DatasetError, match="'file' is the path column and cannot also be a task"):
        read_csv(tmp_path, labels, path_column="file", tasks=("file", "gender"))


def test_read_csv_bom_and_crlf(tmp_path, make_image) -> None:
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    labels = write_text(tmp_path / "labels.csv", "path,gender\r\na.png,male\r\nb.png,female\r\n", "utf-8-sig")
    assert labels.read_bytes().startswith(b"\xef\xbb\xbfpath,gender\r\n")
    table = read_csv(tmp_path, labels)
    assert table.path_column == "path"  # not "\ufeffpath"
    assert table.spec == TaskSpec(("gender",), (("female", "male"),))  # no "male\r"
    assert labelled(table) == {"a.png": ("male",), "b.png": ("female",)}
    assert table.problems == []


def test_read_csv_quoted_comma_in_path(tmp_path, make_image) -> None:
    make_image(tmp_path / "smith, john.png")
    make_image(tmp_path / "doe.png")
    labels = write_text(tmp_path / "labels.csv", 'path,gender\n"smith, john.png",male\ndoe.png,female\n')
    table = read_csv(tmp_path, labels)
    assert labelled(table) == {"smith, john.png": ("male",), "doe.png": ("female",)}
    assert table.problems == []


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "empty labels file"),
        (b"path,gender\n", "no labelled images found"),
        (b"path\na.png\n", "the header has one column"),
        (b"path,gender,gender\na.png,m,m\n", r"duplicate header column\(s\) \['gender'\]"),
        ("path,gender\nä.png,männlich\n".encode("latin-1"), "not UTF-8"),
    ],
    ids=["empty", "header-only", "one-column", "duplicate-header", "latin-1"],
)
def test_read_csv_unusable_files_raise(tmp_path, make_image, content, match) -> None:
    make_image(tmp_path / "a.png")
    labels = tmp_path / "labels.csv"
    labels.write_bytes(content)
    with pytest.raises(DatasetError, match=match) as info:
        read_csv(tmp_path, labels)
    assert str(labels) in str(info.value)


# ----------------------------------------------------------------------------- folder tree


def make_tree(root: Path, make_image) -> None:
    for gender, race, name in [
        ("female", "asian", "1.png"), ("female", "white", "2.png"), ("male", "asian", "3.jpg"),
        ("male", "black", "4.png"), ("male", "white", "5.png"),
    ]:
        make_image(root / gender / race / name)


def test_read_folder_tree(tmp_path, make_image) -> None:
    make_tree(tmp_path, make_image)
    table = read_folder_tree(tmp_path)
    assert table.layout == "folder" and table.labels_file is None and table.problems == []
    assert table.spec == TaskSpec(("task1", "task2"), (("female", "male"), ("asian", "black", "white")))
    assert labelled(table) == {
        "female/asian/1.png": ("female", "asian"), "female/white/2.png": ("female", "white"),
        "male/asian/3.jpg": ("male", "asian"), "male/black/4.png": ("male", "black"),
        "male/white/5.png": ("male", "white"),
    }
    named = read_folder_tree(tmp_path, tasks=("gender", "race"))
    assert named.spec.names == ("gender", "race")
    assert named.spec.classes == table.spec.classes
    assert [r.labels for r in named.records] == [r.labels for r in table.records]


def test_read_folder_tree_depth_problems(tmp_path, make_image) -> None:
    make_tree(tmp_path, make_image)
    make_image(tmp_path / "male" / "stray.png")
    table = read_folder_tree(tmp_path)
    assert problem_set(table.problems) == {("male/stray.png", None, "is 1 folder(s) deep; the tree has 2 levels")}
    assert len(table.records) == 5
    with pytest.raises(DatasetError, match="the folder tree has 2 levels but --tasks names 1"):
        read_folder_tree(tmp_path, tasks=("gender",))


def test_read_folder_tree_flat_root_raises(tmp_path, make_image) -> None:
    make_image(tmp_path / "a.png")
    with pytest.raises(DatasetError, match="images sit directly in the root"):
        read_folder_tree(tmp_path)


# ----------------------------------------------------------------------------- UTKFace


@pytest.mark.parametrize(
    "age, bin_", [(0, 0), (2, 0), (3, 1), (9, 1), (10, 2), (19, 2), (20, 3), (69, 7), (70, 8), (116, 8)]
)
def test_utk_age_bin(age: int, bin_: int) -> None:
    assert utk_age_bin(age) == bin_


def test_read_utkface_names_and_problems(tmp_path, make_image) -> None:
    good = {
        "25_1_3_20170109.jpg": ("3", "3", "1"),  # age 25 -> bin 3, race 3, gender 1
        "2_0_0_2017.jpg.chip.jpg": ("0", "0", "0"),
        "70_1_4_20170110.jpg": ("8", "4", "1"),
        "9_0_2_2017.png": ("1", "2", "0"),
    }
    bad = {
        "61_3_20170109150557335.jpg": "not a UTKFace name (age_gender_race_date.jpg)",
        "53__0_2017.jpg": "not a UTKFace name (age_gender_race_date.jpg)",
        "30_2_0_2017.jpg": "UTKFace fields out of range (age 30, gender 2, race 0)",
        "30_0_5_2017.jpg": "UTKFace fields out of range (age 30, gender 0, race 5)",
    }
    for name in [*good, *bad]:
        make_image(tmp_path / name)
    table = read_utkface(tmp_path)  # malformed names are problems, not crashes
    assert table.layout == "utkface"
    assert table.spec.names == ("age", "race", "gender")
    assert table.spec.classes == (tuple("012345678"), tuple("01234"), ("0", "1"))
    assert labelled(table) == good
    assert problem_set(table.problems) == {(name, None, reason) for name, reason in bad.items()}


def utk_images(root: Path, make_image) -> dict[str, tuple[int, int, int]]:
    """10 UTKFace names covering every age bin, race and gender (so fixed and observed vocabularies agree)."""
    ages = [1, 5, 15, 25, 35, 45, 55, 65, 80, 30]
    out = {}
    for i, age in enumerate(ages):
        gender, race = i % 2, i % 5
        name = f"{age}_{gender}_{race}_2017010{i}.jpg.chip.jpg"
        make_image(root / name)
        out[name] = (utk_age_bin(age), race, gender)
    return out


def test_utkface_csv_and_names_agree(tmp_path, make_image) -> None:
    root = tmp_path / "utk"
    images = utk_images(root, make_image)
    csv_file = write_text(
        tmp_path / "utk.csv",
        "path,age,race,gender\n" + "".join(f"{n},{a},{r},{g}\n" for n, (a, r, g) in images.items()),
    )
    from_names = read_utkface(root)
    from_csv = read_csv(root, csv_file)
    assert from_csv.spec == from_names.spec
    assert from_names.spec.classes[0] == tuple("012345678")
    assert {r.path: r.labels for r in from_csv.records} == {r.path: r.labels for r in from_names.records}
    assert {r.path: r.labels for r in from_names.records} == images
    assert from_csv.problems == from_names.problems == []


# ----------------------------------------------------------------------------- CelebA

ATTRS = (
    "4\n"
    "5_o_Clock_Shadow Male  Smiling \n"
    "000001.jpg  -1  1   1\n"
    "000002.jpg   1 -1  -1\n"
    "000003.jpg  -1 -1   1\n"
    "000004.jpg   1  1  -1\n"
)


def make_celeba(root: Path, make_image, attrs: str = ATTRS) -> Path:
    for i in range(1, 5):
        make_image(root / f"{i:06d}.jpg")
    return write_text(root / "list_attr_celeba.txt", attrs)


def test_read_celeba(tmp_path, make_image) -> None:
    attr = make_celeba(tmp_path, make_image)
    table = read_celeba(tmp_path, attr, split="all")
    assert table.layout == "celeba" and table.path_column == "image" and table.labels_file == attr
    assert table.spec == TaskSpec(("5_o_Clock_Shadow", "Male", "Smiling"), (("0", "1"),) * 3)
    assert [(r.path, r.labels, r.row) for r in table.records] == [
        ("000001.jpg", (0, 1, 1), 3), ("000002.jpg", (1, 0, 0), 4),
        ("000003.jpg", (0, 0, 1), 5), ("000004.jpg", (1, 1, 0), 6),
    ]
    smiling = read_celeba(tmp_path, attr, tasks=("Smiling",))
    assert smiling.spec.names == ("Smiling",)
    assert [r.labels for r in smiling.records] == [(1,), (0,), (1,), (0,)]
    with pytest.raises(DatasetError, match=r"attribute\(s\) \['Bald'\] not in the file"):
        read_celeba(tmp_path, attr, tasks=("Bald",))


def test_read_celeba_partition(tmp_path, make_image) -> None:
    attr = make_celeba(tmp_path, make_image)
    part = write_text(tmp_path / "list_eval_partition.txt", "000001.jpg 0\n000002.jpg 2\n000003.jpg 0\n000004.jpg 1\n")
    paths = lambda split: [r.path for r in read_celeba(tmp_path, attr, part, split).records]  # noqa: E731
    assert paths("train") == ["000001.jpg", "000003.jpg"]
    assert paths("valid") == ["000004.jpg"]
    assert paths("all") == ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"]
    # CelebA vocabularies are fixed ("0", "1"), so a one-image split is still a valid table.
    test = read_celeba(tmp_path, attr, part, "test")
    assert [(r.path, r.labels, r.row) for r in test.records] == [("000002.jpg", (1, 0, 0), 4)]
    assert test.spec.classes == (("0", "1"),) * 3
    with pytest.raises(DatasetError, match="unknown CelebA split 'val'"):
        read_celeba(tmp_path, attr, part, "val")


def test_read_celeba_bad_rows(tmp_path, make_image) -> None:
    attrs = ATTRS + "000005.jpg 1 1\n000006.jpg 1 2 -1\n"
    for i in (5, 6):
        make_image(tmp_path / f"{i:06d}.jpg")
    table = read_celeba(tmp_path, make_celeba(tmp_path, make_image, attrs), split="all")
    assert problem_set(table.problems) == {
        ("000005.jpg", 7, "has 2 attributes, expected 3"),
        ("000006.jpg", 8, "attribute values must be -1 or 1, got '2'"),
    }
    assert len(table.records) == 4


# ----------------------------------------------------------------------------- detection


def test_detect_and_read_labels_csv_in_root(tiny_csv_dataset) -> None:
    ds = tiny_csv_dataset
    assert detect_layout(ds.root, None) == "csv"
    table = read_labels(DataConfig(root=ds.root))
    assert table.layout == "csv" and table.labels_file == ds.root / "labels.csv"
    assert len(table.records) == 12 and table.problems == []


@pytest.mark.parametrize("name", ["labels.tsv", "metadata.csv"])
def test_read_labels_finds_other_label_file_names(tmp_path, make_image, name) -> None:
    for path, *_ in CSV_BODY:
        make_image(tmp_path / path)
    d = "\t" if name.endswith(".tsv") else ","
    write_text(tmp_path / name, "\n".join(d.join(r) for r in [("path", "gender", "age"), *CSV_BODY]) + "\n")
    table = read_labels(DataConfig(root=tmp_path))
    assert table.layout == "csv" and table.labels_file == tmp_path / name and table.spec == EXPECTED_SPEC


def test_detect_and_read_labels_explicit_csv_outside_root(tmp_path, make_image) -> None:
    root = tmp_path / "imgs"
    for path, *_ in CSV_BODY:
        make_image(root / path)
    labels = write_text(tmp_path / "attrs.csv", "path,gender,age\n" + "".join(",".join(r) + "\n" for r in CSV_BODY))
    assert detect_layout(root, labels) == "csv"
    assert read_labels(DataConfig(root=root, labels=labels)).spec == EXPECTED_SPEC


def test_detect_and_read_labels_folder(tmp_path, make_image) -> None:
    make_tree(tmp_path, make_image)
    assert detect_layout(tmp_path, None) == "folder"
    table = read_labels(DataConfig(root=tmp_path, tasks=("gender", "race")))
    assert table.layout == "folder" and table.spec.names == ("gender", "race") and len(table.records) == 5


def test_detect_and_read_labels_utkface(tmp_path, make_image) -> None:
    images = utk_images(tmp_path, make_image)
    assert detect_layout(tmp_path, None) == "utkface"
    table = read_labels(DataConfig(root=tmp_path))
    assert table.layout == "utkface" and {r.path: r.labels for r in table.records} == images


@pytest.mark.parametrize("attr_name", ["list_attr_celeba.txt", "attributes.txt"])
def test_detect_and_read_labels_celeba(tmp_path, make_image, attr_name) -> None:
    attr = make_celeba(tmp_path, make_image)
    attr = attr.rename(tmp_path / attr_name)
    assert detect_layout(tmp_path, attr) == "celeba"
    table = read_labels(DataConfig(root=tmp_path, labels=attr, split="all"))
    assert table.layout == "celeba" and table.spec.names == ("5_o_Clock_Shadow", "Male", "Smiling")


def test_detect_layout_undecidable(tmp_path, make_image) -> None:
    make_image(tmp_path / "cat.png")
    make_image(tmp_path / "dog.png")
    with pytest.raises(DatasetError, match="cannot tell how the images are labelled"):
        detect_layout(tmp_path, None)


def test_read_labels_bad_root_and_layout(tmp_path, make_image) -> None:
    with pytest.raises(DatasetError, match="no such folder"):
        read_labels(DataConfig(root=tmp_path / "nope"))
    image = make_image(tmp_path / "a.png")
    with pytest.raises(DatasetError, match="not a folder"):
        read_labels(DataConfig(root=image))
    with pytest.raises(DatasetError, match="--layout celeba needs --labels"):
        read_labels(DataConfig(root=tmp_path, layout="celeba"))


# ----------------------------------------------------------------------------- bad inputs


def test_missing_labels_file(tmp_path, make_image) -> None:
    make_image(tmp_path / "a.png")
    missing = tmp_path / "nope.csv"
    with pytest.raises(DatasetError, match="labels file not found") as info:
        read_labels(DataConfig(root=tmp_path, labels=missing))
    assert str(info.value) == f"{missing}: labels file not found"
    with pytest.raises(DatasetError, match="cannot read the labels file"):
        read_csv(tmp_path, missing)


def test_row_naming_a_missing_image(tiny_csv_dataset) -> None:
    ds = tiny_csv_dataset
    append_rows(ds.labels, "ghost.png,male,9,no")
    table = read_csv(ds.root, ds.labels)
    assert problem_set(table.problems) == {("ghost.png", 14, "no such file under the image root")}
    assert str(table.problems[0]) == "ghost.png (labels row 14): no such file under the image root"
    assert len(table.records) == 12


def test_image_without_label_row(tiny_csv_dataset, make_image) -> None:
    ds = tiny_csv_dataset
    make_image(ds.root / "more" / "forgotten.png")
    (ds.root / "notes.txt").write_text("not an image extension: ignored")
    (ds.root / "img_00.png.bak").write_bytes((ds.root / "img_00.png").read_bytes())
    table = read_csv(ds.root, ds.labels)
    assert problem_set(table.problems) == {
        ("more/forgotten.png", None, "image has no label row; add one or move the file out of the root")
    }


def test_empty_task_column_raises(tmp_path, make_image) -> None:
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    labels = write_text(tmp_path / "labels.csv", "path,gender,hair\na.png,m,\nb.png,f, \n")
    with pytest.raises(DatasetError, match="task column 'hair' is empty; fill it or drop it with --tasks"):
        read_csv(tmp_path, labels)
    assert read_csv(tmp_path, labels, tasks=("gender",)).spec.names == ("gender",)


def test_single_class_task_raises(tmp_path, make_image) -> None:
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    labels = write_text(tmp_path / "labels.csv", "path,gender,species\na.png,m,human\nb.png,f,human\n")
    with pytest.raises(DatasetError, match=r"task 'species' has a single class \('human'\)"):
        read_csv(tmp_path, labels)


def test_duplicate_rows(tiny_csv_dataset) -> None:
    ds = tiny_csv_dataset
    append_rows(ds.labels, "img_03.jpg,female,2,yes")
    table = read_csv(ds.root, ds.labels)
    assert problem_set(table.problems) == {("img_03.jpg", 14, "duplicate row (first listed at row 5); keep one")}
    assert [r.path for r in table.records] == ds.paths  # the first row is kept, as written
    assert labelled(table)["img_03.jpg"] == ("male", "2", "no")


def test_paths_that_leave_the_root(tmp_path, make_image) -> None:
    root = tmp_path / "root"
    outside = make_image(tmp_path / "x.png")
    for name in ("a.png", "b.png"):
        make_image(root / name)
    make_image(root / "real.png")
    try:
        os.symlink(outside, root / "escape.png")
        os.symlink(root / "real.png", root / "inside.png")
    except OSError:
        pytest.skip("symlinks not supported here")
    labels = write_text(
        tmp_path / "labels.csv",
        f"path,g\na.png,m\nb.png,f\n../x.png,m\n{outside},f\nescape.png,m\ninside.png,f\nreal.png,m\n",
    )
    table = read_csv(root, labels)
    assert problem_set(table.problems) == {
        ("../x.png", 4, "path escapes the image root ('..'); move the file under the root"),
        (str(outside), 5, "absolute paths are not allowed; write it relative to the image root"),
        ("escape.png", 6, "symlink points outside the image root; copy the file in instead"),
    }
    assert [r.path for r in table.records] == ["a.png", "b.png", "inside.png", "real.png"]


def test_windows_separators_in_csv_load(tmp_path, make_image) -> None:
    make_image(tmp_path / "sub" / "a.png")
    make_image(tmp_path / "sub" / "b.png")
    labels = write_text(tmp_path / "labels.csv", "path,g\nsub\\a.png,m\nsub\\b.png,f\n")
    assert read_csv(tmp_path, labels).problems == []
    assert len(load_dataset(DataConfig(root=tmp_path, labels=labels, size=8))) == 2


def test_duplicate_rows_spelled_differently(tmp_path, make_image) -> None:
    for name in ("a.png", "c.png"):
        make_image(tmp_path / name)
    labels = write_text(tmp_path / "labels.csv", "path,g\na.png,m\nc.png,f\n./c.png,m\n")
    table = read_csv(tmp_path, labels)
    assert [(p.path, p.row) for p in table.problems] == [("./c.png", 4)]


def test_symlink_loop_is_a_problem(tmp_path, make_image) -> None:
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    try:
        os.symlink(tmp_path / "loop2.png", tmp_path / "loop1.png")
        os.symlink(tmp_path / "loop1.png", tmp_path / "loop2.png")
    except OSError:
        pytest.skip("symlinks not supported here")
    labels = write_text(tmp_path / "labels.csv", "path,g\na.png,m\nb.png,f\nloop1.png,m\n")
    problem = one_problem(read_csv(tmp_path, labels), "loop1.png")
    assert problem.row == 4 and problem.reason in ("symlink loop; remove or fix the link",
                                                   "no such file under the image root")


def test_rows_with_missing_or_extra_fields_and_empty_cells(tiny_csv_dataset) -> None:
    ds = tiny_csv_dataset
    lines = ds.labels.read_text().splitlines()
    lines[2] = "img_01.jpg,male,9"  # row 3: a field short
    lines[3] = "img_02.png,female,10,yes,extra"  # row 4: one too many
    lines[4] = "img_03.jpg,,2,yes"  # row 5: empty gender
    write_text(ds.labels, "\n".join(lines) + "\n")
    table = read_csv(ds.root, ds.labels)
    assert problem_set(table.problems) == {
        ("img_01.jpg", 3, "has 3 fields, the header has 4"),
        ("img_02.png", 4, "has 5 fields, the header has 4"),
        ("img_03.jpg", 5, "empty value for task 'gender'"),
    }
    # A row reported as a problem is not also reported as an image without a label row.
    assert len(table.problems) == 3
    assert [r.path for r in table.records] == [p for p in ds.paths if p not in ("img_01.jpg", "img_02.png", "img_03.jpg")]


@pytest.fixture
def with_bad_images(tiny_csv_dataset):
    """The tiny dataset plus a random-bytes .jpg (row 14) and a half JPEG (row 15)."""
    ds = tiny_csv_dataset
    rng = np.random.default_rng(0)
    (ds.root / "random.jpg").write_bytes(rng.bytes(700))
    full = jpeg_bytes()
    assert full.find(b"\xff\xda") < len(full) // 2  # the cut falls inside the scan data
    (ds.root / "more" / "half.jpg").write_bytes(full[: len(full) // 2])
    return ds


@pytest.mark.parametrize("bad, row, reason", [
    ("random.jpg", 14, "not an image Pillow can read (corrupt or wrong extension)"),
    ("more/half.jpg", 14, "corrupt or truncated image"),
])
def test_load_dataset_corrupt_image_raises(with_bad_images, bad, row, reason) -> None:
    ds = with_bad_images
    other = "more/half.jpg" if bad == "random.jpg" else "random.jpg"
    (ds.root / other).unlink()
    append_rows(ds.labels, f"{bad},male,9,no")
    cfg = DataConfig(root=ds.root, size=16)
    assert read_labels(cfg).problems == []  # labels are fine: the bytes are the problem
    with pytest.raises(DatasetError, match=r"1 bad image file\(s\); fix them or pass --skip-bad") as info:
        load_dataset(cfg)
    problems = problems_of(info.value)
    assert [(p.path, p.row) for p in problems] == [(bad, row)]
    assert problems[0].reason.startswith(reason)


def test_load_dataset_skip_bad(with_bad_images) -> None:
    ds = with_bad_images
    append_rows(ds.labels, "random.jpg,male,9,no", "more/half.jpg,female,10,yes", "ghost.png,male,2,no")
    dataset = load_dataset(DataConfig(root=ds.root, size=16, skip_bad=True))
    assert {(p.path, p.row) for p in dataset.skipped} == {("ghost.png", 16), ("random.jpg", 14), ("more/half.jpg", 15)}
    assert [r.path for r in dataset.records] == ds.paths
    assert tuple(dataset.images.shape) == (12, 3, 16, 16) and tuple(dataset.labels.shape) == (12, 3)
    assert dataset.labels.tolist() == [list(r.labels) for r in dataset.records]
    # Without --skip-bad the label problem (the missing file) stops it before any decoding.
    with pytest.raises(DatasetError, match=r"1 bad input file\(s\)") as info:
        load_dataset(DataConfig(root=ds.root, size=16))
    assert [p.path for p in problems_of(info.value)] == ["ghost.png"]


def test_load_dataset_nothing_decodable(tmp_path) -> None:
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"not a jpeg" * 10)
    write_text(tmp_path / "labels.csv", "path,g\na.jpg,m\nb.jpg,f\n")
    with pytest.raises(DatasetError, match="none of the 2 images could be decoded"):
        load_dataset(DataConfig(root=tmp_path, skip_bad=True))


# ----------------------------------------------------------------------------- decoding


def test_load_dataset_tensors(tiny_csv_dataset) -> None:
    import torch

    ds = tiny_csv_dataset
    events = []
    dataset = load_dataset(DataConfig(root=ds.root, size=8), on_event=lambda k, i: events.append((k, i.get("stage"))))
    assert dataset.images.dtype == torch.uint8 and tuple(dataset.images.shape) == (12, 3, 8, 8)
    assert dataset.labels.dtype == torch.long and tuple(dataset.labels.shape) == (12, 3)
    assert dataset.labels.tolist() == [list(r.labels) for r in dataset.records]
    assert dataset.labels[:, 0].tolist() == [0, 1] * 6 and dataset.labels[:, 1].tolist() == [0, 1, 2] * 4
    assert dataset.labels[:, 2].tolist() == [1, 1, 1] + [0] * 9
    assert len(dataset) == 12 and dataset.size == 8 and dataset.spec.names == ds.tasks and dataset.skipped == []
    image, labels = dataset[5]
    assert tuple(image.shape) == (3, 8, 8) and labels.tolist() == [1, 2, 0]
    assert events[0] == ("start", "decode") and events[-1] == ("end", "decode")
    assert sum(k == "progress" for k, _ in events) == 12


def test_load_dataset_pixels_and_channels(tmp_path, make_image) -> None:
    make_image(tmp_path / "red.png", color=(200, 10, 30))
    make_image(tmp_path / "grey.png", mode="L", color=77)
    make_image(tmp_path / "big.png", size=(40, 24), color=(0, 0, 255))
    write_text(tmp_path / "labels.csv", "path,g\nred.png,a\ngrey.png,b\nbig.png,a\n")
    dataset = load_dataset(DataConfig(root=tmp_path, size=16))
    assert dataset.images[0, :, 3, 5].tolist() == [200, 10, 30]
    assert dataset.images[1].unique().tolist() == [77]  # grey replicated to 3 channels
    assert tuple(dataset.images[2].shape) == (3, 16, 16) and dataset.images[2, :, 8, 8].tolist() == [0, 0, 255]


def test_open_image_exif_rotation(tmp_path) -> None:
    # Stored 16 wide x 8 high: left half red, right half blue. Orientation 6 = turn 90 degrees
    # clockwise to view, so the upright image is 8 wide x 16 high, red on top, blue below.
    stored = Image.new("RGB", (16, 8), (255, 0, 0))
    stored.paste((0, 0, 255), (8, 0, 16, 8))
    exif = stored.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)
    decoded = open_image(path)
    assert decoded.exif_rotated is True
    assert decoded.image.size == (8, 16) and decoded.image.mode == "RGB"
    top, bottom = decoded.image.getpixel((4, 3)), decoded.image.getpixel((4, 12))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom

    plain = tmp_path / "plain.jpg"
    stored.save(plain, quality=95)
    assert open_image(plain).exif_rotated is False and open_image(plain).image.size == (16, 8)


def test_open_image_exif_info_matches_upright_pixels(tmp_path) -> None:
    stored = Image.new("RGB", (16, 8), (255, 0, 0))
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", exif=exif)
    decoded = open_image(tmp_path / "rotated.jpg")
    kept = Image.Exif()
    kept.load(decoded.info["exif"])
    assert kept.get(0x0112, 1) == 1


def test_open_image_modes(tmp_path, make_image) -> None:
    rgba = Image.new("RGBA", (16, 16), (10, 20, 30, 128))
    rgba.save(tmp_path / "rgba.png")
    decoded = open_image(tmp_path / "rgba.png")
    assert (decoded.image.mode, decoded.source_mode) == ("RGB", "RGBA")
    assert decoded.alpha is not None and decoded.alpha.mode == "L" and decoded.alpha.getpixel((3, 3)) == 128
    assert decoded.image.getpixel((3, 3)) == (10, 20, 30)

    decoded = open_image(make_image(tmp_path / "grey.png", mode="L", color=90))
    assert (decoded.image.mode, decoded.source_mode, decoded.alpha) == ("L", "L", None)
    assert decoded.image.getpixel((0, 0)) == 90

    decoded = open_image(make_image(tmp_path / "cmyk.jpg", mode="CMYK", color=(0, 255, 0, 0), quality=95))
    assert (decoded.image.mode, decoded.source_mode, decoded.alpha) == ("RGB", "CMYK", None)
    r, g, b = decoded.image.getpixel((8, 8))
    assert r > 230 and g < 25 and b > 230  # magenta

    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 0, 128, 0])
    palette.save(tmp_path / "palette.png")
    decoded = open_image(tmp_path / "palette.png")
    assert (decoded.image.mode, decoded.source_mode, decoded.alpha) == ("RGB", "P", None)
    assert decoded.image.getpixel((5, 5)) == (0, 128, 0)

    transparent = Image.new("P", (16, 16), 1)
    transparent.putpalette([0, 0, 0, 255, 0, 0])
    transparent.save(tmp_path / "palette_t.png", transparency=0)
    decoded = open_image(tmp_path / "palette_t.png")
    assert decoded.image.mode == "RGB" and decoded.alpha is not None
    assert decoded.image.getpixel((0, 0)) == (255, 0, 0) and decoded.alpha.getpixel((0, 0)) == 255

    decoded = open_image(make_image(tmp_path / "la.png", mode="LA", color=(60, 70)))
    assert (decoded.image.mode, decoded.source_mode) == ("L", "LA") and decoded.alpha.getpixel((1, 1)) == 70


def test_open_image_16_bit_scaled(tmp_path) -> None:
    arr = np.array([[0, 257, 32768, 65535]] * 4, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    decoded = open_image(tmp_path / "deep.png")
    assert (decoded.image.mode, decoded.source_mode) == ("L", "I;16")
    assert np.asarray(decoded.image)[0].tolist() == [0, 1, 128, 255]


def test_open_image_dark_16_bit_is_scaled_by_bit_depth(tmp_path) -> None:
    Image.fromarray(np.array([[0, 255], [128, 255]], dtype=np.uint16)).save(tmp_path / "dark.png")
    assert np.asarray(open_image(tmp_path / "dark.png").image).tolist() == [[0, 1], [0, 1]]


def test_fingerprint_stable_and_pixel_sensitive(tiny_csv_dataset, make_image) -> None:
    ds = tiny_csv_dataset
    cfg = DataConfig(root=ds.root, size=16)
    first = load_dataset(cfg).fingerprint()
    assert len(first) == 64 and load_dataset(cfg).fingerprint() == first
    assert load_dataset(DataConfig(root=ds.root, size=16, cache="mmap", workers=1)).fingerprint() == first

    image = Image.open(ds.root / "img_00.png").convert("RGB")
    r, g, b = image.getpixel((7, 7))
    image.putpixel((7, 7), ((r + 1) % 256, g, b))
    image.save(ds.root / "img_00.png")
    assert load_dataset(cfg).fingerprint() != first


def test_subset_keeps_rows_aligned(tiny_csv_dataset) -> None:
    dataset = load_dataset(DataConfig(root=tiny_csv_dataset.root, size=8))
    sub = dataset.subset([5, 0])
    assert [r.path for r in sub.records] == ["img_05.jpg", "img_00.png"]
    assert sub.labels.tolist() == [dataset.labels[5].tolist(), dataset.labels[0].tolist()]
    assert bool((sub.images[0] == dataset.images[5]).all())


# ----------------------------------------------------------------------------- splits and baselines


def fake_records(n: int = 200) -> list[Record]:
    return [Record(f"faces/{i:04d}.jpg", (i % 2,), i + 2) for i in range(n)]


def test_split_indices() -> None:
    records = fake_records()
    train, test = split_indices(records, 0.2, seed=0)
    assert split_indices(records, 0.2, seed=0) == (train, test)  # deterministic
    assert not set(train) & set(test) and sorted(train + test) == list(range(200))
    assert 24 <= len(test) <= 56  # 40 expected; binomial sd ~5.7
    assert train == sorted(train) and test == sorted(test)
    assert split_indices(records, 0.2, seed=1)[1] != test  # the seed matters

    shuffled = records[::-1]
    _, test_rev = split_indices(shuffled, 0.2, seed=0)
    assert {shuffled[i].path for i in test_rev} == {records[i].path for i in test}
    # Adding images does not move the old ones between splits.
    _, test_more = split_indices(records + fake_records(260)[200:], 0.2, seed=0)
    assert {i for i in test_more if i < 200} == set(test)

    assert split_indices(records, 0.0, seed=0) == (list(range(200)), [])
    assert split_indices(records, 1.0, seed=0) == ([], list(range(200)))


def test_majority_baseline_hand_computed() -> None:
    import torch

    train = torch.tensor([[0, 2], [0, 2], [1, 1], [0, 2], [1, 0]])  # majorities: 0 (3/5), 2 (3/5)
    test = torch.tensor([[0, 2], [0, 0], [0, 1], [1, 2]])
    assert majority_baseline(train, test, [2, 3]) == [0.75, 0.5]
    # Ties go to the lowest class index; classes absent from train still count in the vocabulary.
    tied = torch.tensor([[1, 3], [0, 3]])
    assert majority_baseline(tied, torch.tensor([[0, 3], [0, 0], [1, 3], [0, 1]]), [2, 4]) == [0.75, 0.5]


# ----------------------------------------------------------------------------- inspect


def test_inspect_dataset_counts_flags_problems(tiny_csv_dataset, make_image) -> None:
    ds = tiny_csv_dataset
    Image.new("RGBA", (16, 16), (1, 2, 3, 40)).save(ds.root / "alpha.png")
    make_image(ds.root / "grey.png", mode="L")
    make_image(ds.root / "deep.png", mode="I;16")
    rotated = Image.new("RGB", (16, 8), (9, 9, 9))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(ds.root / "rotated.jpg", exif=exif)
    (ds.root / "broken.jpg").write_bytes(b"\xff\xd8garbage" * 20)
    append_rows(ds.labels, "alpha.png,female,2,no", "grey.png,female,2,no", "deep.png,male,9,no",
                "rotated.jpg,male,10,yes", "broken.jpg,male,10,yes", "ghost.png,male,10,yes")

    events: list[str] = []
    report = inspect_dataset(DataConfig(root=ds.root), on_event=lambda kind, info: events.append(kind))
    assert isinstance(report, InspectReport)
    assert report.layout == "csv" and report.labels_file == str(ds.labels) and report.root == str(ds.root)
    assert report.images == 16
    summary = {t.name: (t.classes, t.counts) for t in report.tasks}
    assert summary == {
        "gender": (["female", "male"], [8, 8]),
        "age": (["2", "9", "10"], [6, 5, 5]),
        "glasses": (["no", "yes"], [12, 4]),
    }
    assert [t.majority_share for t in report.tasks] == [0.5, 6 / 16, 0.75]
    assert report.sizes == {"16x16": 15, "8x16": 1}
    assert report.modes == {"RGB": 13, "RGBA": 1, "L": 1, "I;16": 1}
    assert report.flags == {"alpha": 1, "grayscale": 2, "16-bit": 1, "exif_rotated": 1}
    assert [(p["path"], p["row"]) for p in report.problems] == [("ghost.png", 19), ("broken.jpg", 18)]
    assert report.problems[1]["reason"] == "not an image Pillow can read (corrupt or wrong extension)"
    # Decoded bands (+1 for alpha) x pixels: 12 RGB, RGBA, L, 16-bit->L, rotated 8x16 RGB; halved for PNG.
    raw = 12 * 256 * 3 + 256 * 4 + 256 * 1 + 256 * 1 + 128 * 3
    assert report.estimated_output_bytes == int(raw * 0.5)
    assert events.count("progress") == 17 and events[0] == "start" and events[-1] == "end"
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["tasks"][2] == {"name": "glasses", "classes": ["no", "yes"], "counts": [12, 4], "majority_share": 0.75}


# ----------------------------------------------------------------------------- CLI


def invoke(*args: str, columns: int = 1000):
    # Wide COLUMNS: Rich wraps stderr lines at 80 columns when it is not a terminal.
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})


def test_cli_inspect_json(tiny_csv_dataset) -> None:
    ds = tiny_csv_dataset
    result = invoke("inspect", str(ds.root), "--labels", str(ds.labels), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 12 and report["layout"] == "csv" and report["problems"] == []
    assert [(t["name"], t["classes"], t["counts"]) for t in report["tasks"]] == [
        ("gender", ["female", "male"], [6, 6]), ("age", ["2", "9", "10"], [4, 4, 4]), ("glasses", ["no", "yes"], [9, 3]),
    ]
    assert report["sizes"] == {"16x16": 12}


def test_cli_inspect_builds_the_data_config(tiny_csv_dataset, monkeypatch) -> None:
    import mtlue_cli.data as data

    seen = []
    real = data.inspect_dataset
    monkeypatch.setattr(data, "inspect_dataset", lambda cfg, on_event=None: seen.append(cfg) or real(cfg))
    ds = tiny_csv_dataset
    result = invoke("inspect", str(ds.root), "--labels", str(ds.labels), "--layout", "csv",
                    "--tasks", "age, gender", "--path-column", "path", "--workers", "1", "--json")
    assert result.exit_code == 0, result.output
    assert seen == [DataConfig(root=ds.root, labels=ds.labels, layout="csv", path_column="path",
                               tasks=("age", "gender"), workers=1)]
    assert [t["name"] for t in json.loads(result.stdout)["tasks"]] == ["age", "gender"]


def test_cli_inspect_problems_exit_1(with_bad_images) -> None:
    ds = with_bad_images
    (ds.root / "more" / "half.jpg").unlink()
    append_rows(ds.labels, "random.jpg,male,9,no")
    result = invoke("inspect", str(ds.root), "--labels", str(ds.labels))
    assert result.exit_code == 1, result.output
    assert "random.jpg (row 14): not an image Pillow can read (corrupt or wrong extension)" in result.output
    assert "1 problem(s):" in result.output and "12 usable images" in result.output


def test_cli_inspect_json_problems_exit_1(with_bad_images) -> None:
    ds = with_bad_images
    append_rows(ds.labels, "random.jpg,male,9,no")
    (ds.root / "more" / "half.jpg").unlink()
    result = invoke("inspect", str(ds.root), "--labels", str(ds.labels), "--json")
    assert json.loads(result.stdout)["problems"][0]["path"] == "random.jpg"
    assert result.exit_code == 1


def test_cli_missing_labels_file_one_red_line(tiny_csv_dataset, monkeypatch) -> None:
    ds = tiny_csv_dataset
    missing = ds.root / "nope.csv"
    result = invoke("inspect", str(ds.root), "--labels", str(missing))
    assert result.exit_code == 1
    assert result.stdout == ""
    # (The stopped, empty progress display leaves one blank line before it.)
    assert [line for line in result.stderr.splitlines() if line.strip()] == [f"error: {missing}: labels file not found"]
    # Red: the same run on a colour terminal.
    monkeypatch.setattr(cli_module, "console", Console(stderr=True, force_terminal=True, color_system="standard", width=1000))
    result = invoke("inspect", str(ds.root), "--labels", str(missing))
    assert result.exit_code == 1 and "\x1b[1;31merror:\x1b[0m" in result.stderr


def test_cli_error_line_not_wrapped_when_piped(tiny_csv_dataset) -> None:
    missing = tiny_csv_dataset.root / ("x" * 80) / "nope.csv"
    result = invoke("inspect", str(tiny_csv_dataset.root), "--labels", str(missing), columns=80)
    assert [line for line in result.stderr.splitlines() if line.strip()] == [f"error: {missing}: labels file not found"]


def test_cli_bad_layout_is_a_usage_error(tiny_csv_dataset) -> None:
    result = invoke("inspect", str(tiny_csv_dataset.root), "--layout", "zip")
    assert result.exit_code == 2
    assert "error: --layout must be auto, csv, folder, utkface or celeba, not 'zip'" in result.stderr


def test_cli_import_does_not_load_torch() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import mtlue_cli.cli, sys; print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert out.stdout.strip() == "False"


def test_fit_and_verify_leave_unlabelled_images_out_in_one_line(tiny_csv_dataset, make_image) -> None:
    from mtlue_cli.config import DataConfig
    from mtlue_cli.data import load_dataset

    ds = tiny_csv_dataset
    for i in range(7):
        make_image(ds.root / "extra" / f"x{i}.png")
    logs = []
    dataset = load_dataset(DataConfig(root=ds.root, labels=ds.labels, size=8),
                           on_event=lambda kind, info: logs.append(info) if kind == "log" else None)
    assert len(dataset) == 12 and dataset.skipped == []
    assert len(logs) == 1 and logs[0]["message"].startswith("7 image(s)") and logs[0]["level"] == "warning"
