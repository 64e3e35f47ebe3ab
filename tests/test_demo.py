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
