"""The demo's victims: a fixed epoch count whatever the machine's load."""

from __future__ import annotations

import mtlue_cli.verify.run
from mtlue_cli.demo.run import run_demo


def test_demo_victims_train_a_fixed_number_of_epochs(tmp_path, monkeypatch):
    seen = {}

    def fake_verify(clean, protected, cfg, test=None, on_event=None):  # records the config the demo asks for
        seen["cfg"] = cfg
        return "report"

    monkeypatch.setattr(mtlue_cli.verify.run, "verify", fake_verify)
    report = run_demo(tmp_path / "demo", images=20, epochs=7, device="cpu")
    cfg = seen["cfg"]
    assert cfg.time_budget is None and cfg.epochs == 7  # no budget: a busy machine must not shorten the victims
    assert cfg.defenses == ("none", "grayscale", "jpeg10", "bdr2")
    assert cfg.plot == tmp_path / "demo" / "curves.png"  # the learning curves are on by default (issue 16)
    assert report.verify == "report" and report.protect.written + report.protect.held_out == 20 and report.protect.held_out > 0


def test_dense_demo_protects_scenes_and_verifies_their_maps(tmp_path):
    """`demo --dense` end to end on a tiny set with a tiny generator of the scenes' tasks (one victim epoch)."""
    import torch

    from mtlue_cli.demo.scenes import CLASSES, COUNTS
    from mtlue_cli.models.generator import PerturbationGenerator
    from mtlue_cli.models.persistence import save_generator

    torch.manual_seed(0)
    tasks = {"count": list(COUNTS), "seg": list(CLASSES), "depth": [], "normals": []}
    kinds = {"seg": "segmentation", "depth": "depth", "normals": "normals"}
    save_generator(PerturbationGenerator(tasks, task_kinds=kinds, image_size=32, width=16), tmp_path / "gen")
    report = run_demo(tmp_path / "demo", generator=str(tmp_path / "gen"), images=16, epochs=1, device="cpu",
                      plot=False, kind="scenes")
    assert report.protect.written + report.protect.held_out == 16
    assert sorted(p.name for p in (report.protected / "maps").iterdir()) == ["depth", "normals", "seg"]
    rows = {row["task"]: row for row in report.verify.to_dict()["tasks"]}
    assert report.verify.verdict in ("effective", "not effective", "inconclusive")
    assert (rows["seg"]["metric"], rows["depth"]["metric"], rows["count"]["metric"]) == ("miou", "abs_error", "accuracy")
