"""issue #7 'done means': fit -> export -> load by folder, by alias and by a (fake-cache) Hub id gives
bit-identical protected files; a vocabulary mismatch is a clear error; the bundled alias loads offline."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

import mtlue_cli.models.persistence as hub
from mtlue_cli.config import DataConfig, FitConfig, ProtectConfig
from mtlue_cli.data.dataset import load_dataset
from mtlue_cli.errors import DatasetError
from mtlue_cli.fit.loop import fit_generator
from mtlue_cli.hub.export import export_generator
from mtlue_cli.models.persistence import load_generator
from mtlue_cli.protect.protect import protect_dataset

REV = "fedcba9876543210fedcba9876543210fedcba98"


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.png"))}


def test_fit_export_and_every_way_of_loading_protect_identically(tiny_csv_dataset, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    d = tiny_csv_dataset
    data = DataConfig(root=d.root, labels=d.labels, size=16)
    cfg = FitConfig(method="tap", image_size=16, epochs=1, surrogate_epochs=1, batch_size=6, device="cpu")
    fit_generator(load_dataset(data), cfg, tmp_path / "gen")
    exported = export_generator(load_generator(str(tmp_path / "gen")), tmp_path / "exported")

    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--me--faces" / "snapshots" / REV
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(exported / name, snapshot / name)
    (cache / "models--me--faces" / "refs").mkdir()
    (cache / "models--me--faces" / "refs" / "main").write_text(REV)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    digest = hashlib.sha256((exported / "model.safetensors").read_bytes()).hexdigest()
    monkeypatch.setattr(hub, "registry", lambda: {"faces": {
        "repo_id": "me/faces", "revision": REV, "sha256": digest, "bundled": None, "image_size": 16, "tasks": {}}})

    outputs = {}
    for name, spec in (("folder", str(tmp_path / "gen")), ("exported", str(exported)), ("alias", "faces"),
                       ("hub", f"me/faces@{REV}")):
        out = tmp_path / f"prot-{name}"
        protect_dataset(load_generator(spec), data, out, ProtectConfig(device="cpu"))
        outputs[name] = digests(out)
    assert len(outputs["folder"]) == 12
    assert outputs["folder"] == outputs["exported"] == outputs["alias"] == outputs["hub"]


def test_vocabulary_mismatch_names_the_value(tiny_csv_dataset, tmp_path):
    from mtlue_cli.models.generator import PerturbationGenerator
    from mtlue_cli.models.persistence import save_generator

    d = tiny_csv_dataset
    tasks = {"gender": ["female", "male"], "age": ["2", "9"], "glasses": ["no", "yes"]}  # no age "10"
    save_generator(PerturbationGenerator(tasks, image_size=16), tmp_path / "g")
    with pytest.raises(DatasetError, match=r"'10'.*\['2', '9'\]"):
        protect_dataset(load_generator(str(tmp_path / "g")), DataConfig(root=d.root, labels=d.labels),
                        tmp_path / "out", ProtectConfig(device="cpu"))


def test_bundled_demo_alias_loads_offline_and_matches_its_pin():
    entry = hub.registry()["demo-shapes"]
    loaded = load_generator("demo-shapes")
    assert loaded.source == "alias" and loaded.sha256 == entry["sha256"]
    assert loaded.model.tasks == entry["tasks"] and loaded.model.image_size == entry["image_size"]


def test_face_generator_names_indices_partial_labels_and_hub_round_trip(tmp_path, monkeypatch):
    """issue #14: the bundled face generator takes readable names or their indices, leaves a missing task
    unprotected, exports with its licence, fails a push offline with a clear error, and loaded back
    from a Hub cache as `org/name@rev` protects byte-identically to the alias."""
    import huggingface_hub.constants as hf_constants
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from mtlue_cli.cli import app

    entry = hub.registry()["faces-utkface"]
    bundled = load_generator("faces-utkface")
    assert bundled.source == "alias" and bundled.sha256 == entry["sha256"] and bundled.model.tasks == entry["tasks"]
    assert bundled.model.tasks["gender"] == ["male", "female"] and bundled.model.tasks["age"][:2] == ["0-2", "3-9"]

    root = tmp_path / "faces"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = [("a.png", "20-29", "asian", "female", "3", "2", "1"), ("b.png", "70+", "white", "male", "8", "0", "0"),
            ("c.png", "3-9", "other", "female", "1", "4", "1")]
    for row in rows:
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(root / row[0])
    names, indices, gender = (tmp_path / f"{n}.csv" for n in ("names", "indices", "gender"))
    names.write_text("path,age,race,gender\n" + "".join(",".join(r[:4]) + "\n" for r in rows))
    indices.write_text("path,age,race,gender\n" + "".join(",".join((r[0], *r[4:])) + "\n" for r in rows))
    gender.write_text("path,gender\n" + "".join(f"{r[0]},{r[3]}\n" for r in rows))

    def protect(spec: str, labels: Path, out: str, predict: bool = True):
        report = protect_dataset(load_generator(spec), DataConfig(root=root, labels=labels), tmp_path / out,
                                 ProtectConfig(device="cpu", predict_labels=predict))
        return report, digests(tmp_path / out)

    _, by_names = protect("faces-utkface", names, "p-names")
    assert protect("faces-utkface", indices, "p-indices")[1] == by_names and len(by_names) == 3
    partial, by_gender = protect("faces-utkface", gender, "p-gender", predict=False)
    assert partial.unprotected_tasks == ["age", "race"] and by_gender != by_names
    predicted, _ = protect("faces-utkface", gender, "p-predicted")  # its labeller fills in age and race (issue 30)
    assert predicted.predicted_tasks == ["age", "race"] and predicted.unprotected_tasks == []

    exported = tmp_path / "exported"
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["export", "faces-utkface", "--to", str(exported), "--push", "me/faces"])
    assert result.exit_code == 1 and "upload to me/faces failed" in result.output
    card = (exported / "README.md").read_text()
    assert "non-commercial research" in card and "`male` (0)" in card and "`70+` (8)" in card

    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--me--faces" / "snapshots" / REV
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(exported / name, snapshot / name)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    assert protect(f"me/faces@{REV}", names, "p-hub")[1] == by_names
