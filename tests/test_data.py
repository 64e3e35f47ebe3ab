"""mtlue_cli.data.dataset: decoding into the cached tensor, --skip-bad, fingerprints, subsets and the seeded split."""

from __future__ import annotations

import pytest
from data_helpers import append_rows, with_bad_images, write_text  # noqa: F401 (with_bad_images: a fixture)
from PIL import Image

from mtlue_cli.config import DataConfig
from mtlue_cli.data.dataset import load_dataset, split_indices
from mtlue_cli.data.labels import Record, read_labels
from mtlue_cli.errors import DatasetError, problems_of

# ----------------------------------------------------------------------------- bad images


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


def test_fit_and_verify_leave_unlabelled_images_out_in_one_line(tiny_csv_dataset, make_image) -> None:
    from mtlue_cli.config import DataConfig
    from mtlue_cli.data.dataset import load_dataset

    ds = tiny_csv_dataset
    for i in range(7):
        make_image(ds.root / "extra" / f"x{i}.png")
    logs = []
    dataset = load_dataset(DataConfig(root=ds.root, labels=ds.labels, size=8),
                           on_event=lambda kind, info: logs.append(info) if kind == "log" else None)
    assert len(dataset) == 12 and dataset.skipped == []
    assert len(logs) == 1 and logs[0]["message"].startswith("7 image(s)") and logs[0]["level"] == "warning"
