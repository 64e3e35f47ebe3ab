"""mtlue_cli.data.labels: the readers (CSV/TSV, folder tree, UTKFace names, CelebA), layout detection, validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from data_helpers import append_rows, labelled, one_problem, problem_set, write_text

from mtlue_cli.config import DataConfig
from mtlue_cli.data.dataset import load_dataset
from mtlue_cli.data.labels import (
    TaskSpec,
    detect_layout,
    read_celeba,
    read_csv,
    read_folder_tree,
    read_labels,
    read_utkface,
    unlabelled_note,
    utk_age_bin,
)
from mtlue_cli.errors import DatasetError

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


def test_detect_layout_unlabelled(tmp_path, make_image) -> None:
    # A flat folder of images with no labels file: the label-free path (issue 30), every image listed, no task.
    make_image(tmp_path / "cat.png")
    make_image(tmp_path / "dog.png")
    assert detect_layout(tmp_path, None) == "unlabelled"
    table = read_labels(DataConfig(root=tmp_path))
    assert table.layout == "unlabelled" and table.spec.names == () and [r.path for r in table.records] == ["cat.png", "dog.png"]
    assert all(r.labels == () for r in table.records)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        detect_layout(empty, None)


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


def test_unlabelled_images_are_one_line_with_five_names(tiny_csv_dataset, make_image) -> None:
    ds = tiny_csv_dataset
    for i in range(7):
        make_image(ds.root / "extra" / f"x{i}.png")
    append_rows(ds.labels, "ghost.png,male,9,no")  # a bad row: a problem, but not an unlabelled image
    table = read_csv(ds.root, ds.labels)
    assert table.unlabelled == [f"extra/x{i}.png" for i in range(7)]
    assert [p.path for p in table.bad] == ["ghost.png"]
    note = unlabelled_note(table)
    assert note == (f"7 image(s) in {ds.root} have no label row "
                    "(e.g. extra/x0.png, extra/x1.png, extra/x2.png, extra/x3.png, extra/x4.png ...)")
    assert "\n" not in note


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
