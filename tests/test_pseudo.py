"""Issue 30: photos without labels. k-means pseudo-tasks (fit.pseudo), the labeller saved beside a generator
(models.labeller), the labels protect predicts with it (protect.predicted) and how verify measures such a folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from mtlue_cli.config import DataConfig, FitConfig, ProtectConfig, VerifyConfig
from mtlue_cli.data.dataset import load_dataset
from mtlue_cli.errors import ConfigError, DatasetError, WeightsError
from mtlue_cli.fit import pseudo
from mtlue_cli.fit.folder import fit_folder
from mtlue_cli.models.labeller import Labeller
from mtlue_cli.models.persistence import (
    LABELLER_WEIGHTS,
    load_generator,
    load_labeller,
    save_labeller,
)
from mtlue_cli.protect.predicted import PREDICTED
from mtlue_cli.protect.protect import protect_dataset


def _blobs(n_per: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N,3,8,8) of three flat colours with a little noise, and their colour index."""
    g = torch.Generator().manual_seed(0)
    colours = torch.tensor([[30, 30, 30], [220, 40, 40], [40, 40, 220]], dtype=torch.float32)
    truth = torch.arange(3).repeat_interleave(n_per)
    x = colours[truth][:, :, None, None] + 6 * torch.randn(len(truth), 3, 8, 8, generator=g)
    return x.clamp(0, 255).to(torch.uint8), truth


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_finds_separated_clusters_and_keeps_every_cluster_populated():
    x, truth = _blobs()
    f = x.float().flatten(1)
    c = pseudo.kmeans(f, 3, torch.Generator().manual_seed(0))
    assert _same_partition(torch.cdist(f, c).argmin(1), truth)
    # 4 clusters of 3 distinct points: one cluster would be empty without the re-seeding
    few = torch.tensor([[0.0], [0.0], [10.0], [20.0]])
    assign = torch.cdist(few, pseudo.kmeans(few, 3, torch.Generator().manual_seed(1))).argmin(1)
    assert sorted(set(assign.tolist())) == [0, 1, 2]


def test_cluster_labeller_is_seeded_linear_nearest_centroid():
    x, truth = _blobs()
    lab = pseudo.cluster_labeller(x, (2, 3), seed=0, feature_size=8, components=4)
    assert list(lab.tasks) == ["cluster_k2", "cluster_k3"] and lab.tasks["cluster_k3"] == ["c0", "c1", "c2"]
    labels = pseudo.predict(lab, x)
    assert labels.shape == (30, 2) and _same_partition(labels[:, 1], truth)
    again = pseudo.predict(pseudo.cluster_labeller(x, (2, 3), seed=0, feature_size=8, components=4), x)
    assert torch.equal(labels, again)
    # the linear head is the nearest centroid: logits rank clusters by distance
    f = lab.embed(x.float() / 255)
    centroids = lab.heads[1].weight / 2
    assert torch.equal(torch.cdist(f, centroids).argmin(1), labels[:, 1])
    with pytest.raises(ConfigError, match="too few"):
        pseudo.cluster_labeller(x[:5], (3,))
    with pytest.raises(ConfigError, match="only 3 distinct images"):  # copies of 3 photos cannot fill 5 clusters
        pseudo.cluster_labeller(x[[0, 10, 20] * 4], (5,), feature_size=8, components=4)


def test_labeller_round_trip_is_strict(tmp_path):
    x, _ = _blobs()
    lab = pseudo.cluster_labeller(x, (3,), feature_size=8, components=4)
    save_labeller(lab, tmp_path)
    back = load_labeller(tmp_path)
    assert back is not None and back.config == lab.config
    assert torch.equal(pseudo.predict(back, x), pseudo.predict(lab, x))
    assert load_labeller(tmp_path / "none") is None
    config = json.loads((tmp_path / "labeller.json").read_text())
    config["features"] = 5  # no longer the saved basis' width
    (tmp_path / "labeller.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="cannot be loaded"):
        load_labeller(tmp_path)
    (tmp_path / "labeller.json").unlink()
    with pytest.raises(WeightsError, match="go together"):
        load_labeller(tmp_path)


def test_train_labeller_learns_a_visible_label(tmp_path):
    from mtlue_cli.data.dataset import MultiTaskImageDataset
    from mtlue_cli.data.tasks import LabelTable, Record, TaskSpec

    x, truth = _blobs(8)  # the colour decides the class: a labeller that trains at all separates it
    x = torch.nn.functional.interpolate(x.float(), size=16).to(torch.uint8)
    records = [Record(f"b{i}.png", (int(t),)) for i, t in enumerate(truth)]
    table = LabelTable(tmp_path, TaskSpec(("colour",), (("dark", "red", "blue"),)), records, "csv")
    lab = pseudo.train_labeller(MultiTaskImageDataset(table, x, truth[:, None], records, []), epochs=15, batch_size=8,
                                lr=1e-2, width=4)
    assert lab.kind == "classifier" and (pseudo.predict(lab, x)[:, 0] == truth).float().mean() > 0.9


def _unlabelled(tmp_path: Path, make_image, n: int = 16) -> tuple[Path, Path]:
    """A flat folder of n images with no labels, and a true-labels CSV kept elsewhere (the attacker's)."""
    root = tmp_path / "photos"
    for i in range(n):  # dark and light, each photo a shade of its own (k-means needs distinct images)
        shade = 20 + i if i % 2 == 0 else 230 - i
        make_image(root / f"p{i:02d}.png", color=(shade,) * 3)
    truth = tmp_path / "truth.csv"
    truth.write_text("path,kind\n" + "".join(f"p{i:02d}.png,{('dark', 'light')[i % 2]}\n" for i in range(n)))
    return root, truth


def test_fit_protect_verify_without_labels(tmp_path, make_image):
    root, truth = _unlabelled(tmp_path, make_image)
    data = DataConfig(root=root)
    cfg = FitConfig(method="tap", image_size=16, epochs=1, surrogate_epochs=1, batch_size=8, device="cpu", clusters=(2, 3))
    report = fit_folder(data, cfg, tmp_path / "gen")
    assert report.tasks == ["cluster_k2", "cluster_k3"] and sorted(report.clusters["cluster_k2"]) == [8, 8]
    loaded = load_generator(str(tmp_path / "gen"))
    assert loaded.labeller is not None and loaded.model.tasks == loaded.labeller.tasks
    out = tmp_path / "prot"
    prot = protect_dataset(loaded, data, out, ProtectConfig(device="cpu", holdout=0.25))
    assert prot.predicted_tasks == ["cluster_k2", "cluster_k3"] and prot.complete
    run = json.loads((out / "run.json").read_text())
    assert run["layout"] == "unlabelled" and run["predicted_tasks"] == ["cluster_k2", "cluster_k3"]
    with (out / PREDICTED).open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16  # the holdout too: verify's sanity check tests on it
    # protect predicts exactly the clusters fit trained on (same decoding, same labeller)
    fitted = {r.path: r.labels for r in pseudo.relabelled(load_dataset(DataConfig(root=root, size=16)), loaded.labeller).records}
    assert all(fitted[r["path"]][0] == int(r["cluster_k2"][1:]) for r in rows)
    # dark and light images fall in different 2-clusters
    light = {r["cluster_k2"] for r in rows if int(r["path"][1:3]) % 2}
    dark = {r["cluster_k2"] for r in rows if not int(r["path"][1:3]) % 2}
    assert len(light) == len(dark) == 1 and light != dark

    from mtlue_cli.verify.run import VerifyRequest, verify_folder

    vcfg = VerifyConfig(epochs=1, defenses=("none",), res=16, device="cpu", time_budget=None, batch_size=8)
    sanity = verify_folder(VerifyRequest(out, save=True), vcfg)
    assert sanity.notes[0].startswith("SANITY CHECK ONLY") and [t.task for t in sanity.tasks] == ["cluster_k2", "cluster_k3"]
    assert sanity.verdict != "effective" and not (out / "verify.json").exists()  # never published as a measure
    real = verify_folder(VerifyRequest(out, labels=truth), vcfg)
    assert [t.task for t in real.tasks] == ["kind"] and not any("SANITY" in n for n in real.notes)
    from mtlue_cli.protect.outputs import source_map

    gone = sorted(set(source_map(out).values()))[:2]  # two protected photos the attacker has no true label for
    partial = tmp_path / "partial.csv"
    partial.write_text("".join(line + "\n" for line in truth.read_text().splitlines() if line.split(",")[0] not in gone))
    short = verify_folder(VerifyRequest(out, labels=partial), vcfg)
    assert any(n.startswith("2 protected image(s) left out") for n in short.notes)  # reported, not silently dropped

    from mtlue_cli.hub.publish import PublishConfig, build_folder

    published = build_folder(out, tmp_path / "upload", PublishConfig(license="cc-by-4.0"))
    assert any("not published" in w for w in published.warnings)  # the pseudo-labels are guesses, not labels
    header = (tmp_path / "upload" / "train" / "metadata.csv").read_text().splitlines()[0]
    assert header == "file_name"


def test_protect_refuses_unlabelled_images_without_a_labeller(tmp_path, make_image, tiny_csv_dataset):
    d = tiny_csv_dataset
    cfg = FitConfig(method="tap", image_size=16, epochs=1, surrogate_epochs=1, batch_size=6, device="cpu")
    fit_folder(DataConfig(root=d.root, labels=d.labels), cfg, tmp_path / "gen")
    root, _ = _unlabelled(tmp_path, make_image)
    with pytest.raises(DatasetError, match="no labeller"):
        protect_dataset(load_generator(str(tmp_path / "gen")), DataConfig(root=root), tmp_path / "out",
                        ProtectConfig(device="cpu"))


def test_a_labeller_fills_in_only_the_missing_tasks(tmp_path, tiny_csv_dataset):
    """A labelled generator with a classifier labeller: a CSV with gender only gets age and glasses predicted, and
    gender is kept as the user wrote it."""
    d = tiny_csv_dataset
    cfg = FitConfig(method="tap", image_size=16, epochs=1, surrogate_epochs=1, batch_size=6, device="cpu")
    full = DataConfig(root=d.root, labels=d.labels)
    fit_folder(full, cfg, tmp_path / "gen")
    save_labeller(pseudo.train_labeller(load_dataset(DataConfig(root=d.root, labels=d.labels, size=16)), epochs=1,
                                        batch_size=6, width=4), tmp_path / "gen")
    gender_only = tmp_path / "gender.csv"
    gender_only.write_text("path,gender\n" + "".join(f"{r['path']},{r['gender']}\n" for r in d.rows))
    out = tmp_path / "prot"
    report = protect_dataset(load_generator(str(tmp_path / "gen")), DataConfig(root=d.root, labels=gender_only), out,
                             ProtectConfig(device="cpu"))
    assert report.predicted_tasks == ["age", "glasses"] and report.protected_tasks == ["gender", "age", "glasses"]
    with (out / "labels.csv").open() as fh:
        rows = {r["path"].rsplit(".", 1)[0]: r for r in csv.DictReader(fh)}
    assert all(rows[r["path"].rsplit(".", 1)[0]]["gender"] == r["gender"] for r in d.rows)
    off = protect_dataset(load_generator(str(tmp_path / "gen")), DataConfig(root=d.root, labels=gender_only),
                          tmp_path / "off", ProtectConfig(device="cpu", predict_labels=False))
    assert off.predicted_tasks == [] and off.unprotected_tasks == ["age", "glasses"]


def test_tampered_labeller_fails_its_pin(tmp_path, monkeypatch):
    import mtlue_cli.models.persistence as persistence
    from mtlue_cli.models.generator import PerturbationGenerator
    from mtlue_cli.models.persistence import save_generator

    tasks = {"kind": ["dark", "light"]}
    save_generator(PerturbationGenerator(tasks, image_size=16), tmp_path / "g")
    save_labeller(Labeller(tasks, "classifier", 16, width=4), tmp_path / "g")
    monkeypatch.setattr(persistence, "_bundled", lambda name: tmp_path / "g")
    entry = {"repo_id": "me/g", "revision": None, "bundled": "g", "image_size": 16, "tasks": tasks,
             "sha256": persistence.file_sha256(tmp_path / "g" / "model.safetensors")}
    monkeypatch.setattr(persistence, "registry", lambda: {"g": dict(entry, labeller_sha256="0" * 64)})
    with pytest.raises(WeightsError, match="does not match"):
        load_generator("g")
    right = persistence.file_sha256(tmp_path / "g" / LABELLER_WEIGHTS)
    monkeypatch.setattr(persistence, "registry", lambda: {"g": dict(entry, labeller_sha256=right)})
    assert load_generator("g").labeller is not None


def test_cli_inspect_fit_protect_without_labels(tmp_path, make_image):
    from typer.testing import CliRunner

    from mtlue_cli.cli import app

    root, truth = _unlabelled(tmp_path, make_image)
    runner = CliRunner()
    shown = runner.invoke(app, ["inspect", str(root), "--clusters", "2,3", "--sheet", str(tmp_path / "sheet.png")])
    assert shown.exit_code == 0, shown.output
    assert "cluster_k2: members per cluster c0 8, c1 8" in shown.output and (tmp_path / "sheet.png").stat().st_size > 0
    small = runner.invoke(app, ["inspect", str(root)])  # 16 photos cannot fill fit's default 10 clusters
    assert small.exit_code == 0, small.output
    assert "cluster_k5: members per cluster" in small.output and "cluster_k10" not in small.output
    assert "too few for 10 clusters" in " ".join(small.output.split()), small.output
    as_json = json.loads(runner.invoke(app, ["inspect", str(root), "--clusters", "2", "--json"]).output)
    assert as_json["layout"] == "unlabelled" and as_json["clusters"]["counts"] == {"cluster_k2": [8, 8]}
    bad = runner.invoke(app, ["fit", str(root), "--clusters", "2,x", "-o", str(tmp_path / "g")])
    assert bad.exit_code != 0 and "--clusters" in bad.output
    fitted = runner.invoke(app, ["fit", str(root), "--quick", "--size", "16", "--clusters", "2", "-o", str(tmp_path / "g")])
    assert fitted.exit_code == 0, fitted.output
    assert "no labels" in fitted.output and (tmp_path / "g" / LABELLER_WEIGHTS).is_file()
    out = tmp_path / "prot"
    done = runner.invoke(app, ["protect", str(root), "-g", str(tmp_path / "g"), "-o", str(out), "--holdout", "0.25"])
    assert done.exit_code == 0, done.output
    assert "labels predicted by the generator" in done.output and (out / PREDICTED).is_file()
    refused = runner.invoke(app, ["protect", str(root), "-g", str(tmp_path / "g"), "-o", str(tmp_path / "p2"),
                                  "--clusters", "3"])
    assert refused.exit_code != 0 and "--clusters is for the fit" in refused.output
    (root / "zz.png").write_bytes(b"not a png")  # an undecodable photo: reported as failed, given no guess
    partial = runner.invoke(app, ["protect", str(root), "-g", str(tmp_path / "g"), "-o", str(tmp_path / "p3"),
                                  "--skip-bad"])
    assert "zz.png" in partial.output, partial.output
    with (tmp_path / "p3" / PREDICTED).open() as fh:
        assert sorted(r["path"] for r in csv.DictReader(fh)) == sorted(p.name for p in root.glob("p*.png"))
