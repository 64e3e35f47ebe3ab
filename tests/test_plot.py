"""verify --plot (plot.py): a PNG with matplotlib, a clear message without it."""

import sys

import pytest

from mtlue_cli.errors import ConfigError
from mtlue_cli.verify.plot import INSTALL_HINT, figure, missing, plot_curves
from mtlue_cli.verify.run import TaskRow, VerifyReport


def report() -> VerifyReport:
    rows = [TaskRow("shape", 0.3, 0.9, 0.9, 0.35, 0.4, 1.0, chance=1 / 3), TaskRow("size", 0.5, 0.8, 0.8, 0.5, 0.5, 1.0)]
    curves = {"clean": {"none": [[0.5, 0.6], [0.9, 0.8]], "op": [[0.4, 0.5], [0.8, 0.7]]},
              "protected": {"none": [[0.3, 0.5], [0.35, 0.5]], "op": [[0.5, 0.5], [0.6, 0.55]]}}
    return VerifyReport(rows, ["none", "op"], 10, 4, {}, {"metric": "acc"}, 5.0, seconds=1.0, curves=curves)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    assert missing() is None
    out = plot_curves(report(), tmp_path / "sub" / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_line_per_victim_and_the_majority_line_in_each_panel():
    pytest.importorskip("matplotlib")
    r = report()
    panels = [ax for ax in figure(r).axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["shape", "size"]
    for k, (ax, row) in enumerate(zip(panels, r.tasks)):
        victims = [line for line in ax.get_lines() if line.get_linestyle() != "--"]
        majority = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(victims) == 4  # clean and protected, none and op
        assert len(majority) == 1 and majority[0].get_ydata()[0] == row.baseline
        drawn = sorted(tuple(line.get_ydata()) for line in victims)
        expected = sorted(tuple(epoch[k] for epoch in curve) for by in r.curves.values() for curve in by.values())
        assert drawn == expected  # each victim's own accuracies, per epoch


def test_without_matplotlib_the_message_says_what_to_install(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    assert missing() == INSTALL_HINT and 'pip install "mtlue[plot]"' in INSTALL_HINT
    with pytest.raises(ConfigError, match="mtlue\\[plot\\]"):
        plot_curves(report(), tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()
