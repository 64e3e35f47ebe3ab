"""The package layout: stages import only what lies below them (style.md), and modules stay readable."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mtlue_cli"
SHARED = ("config", "recipes", "checks", "errors", "events", "files", "metrics")
# The data's path through the tool, lowest first: a module may import its own stage and the ones before it.
STAGES = ("shared", "data", "models", "fit", "protect", "verify", "hub", "demo", "cli")
MAX_LINES = 400


def _stage(module: str) -> str | None:
    """'mtlue_cli.fit.loop' -> 'fit'; the shared modules -> 'shared'; the package root -> None."""
    parts = module.split(".")
    if parts[0] != "mtlue_cli" or len(parts) == 1:
        return None
    head = parts[1]
    if head in SHARED:
        return "shared"
    if head == "__main__":
        return "cli"
    return head if head in STAGES else None


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        out.append((".".join(p for p in rel.parts if p != "__init__"), path))
    return out


def _imports(path: Path) -> set[str]:
    """Every mtlue_cli module a file imports, at the top or lazily inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mtlue_cli"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mtlue_cli"):
            found.update(f"{node.module}.{a.name}" if node.module == "mtlue_cli" else node.module for a in node.names)
    return found


def test_every_module_belongs_to_a_stage():
    loose = [name for name, _ in _modules() if name != "mtlue_cli" and _stage(name) is None]
    assert not loose, f"modules outside the stages {STAGES}: {loose}"


@pytest.mark.parametrize("name,path", _modules(), ids=lambda v: v if isinstance(v, str) else "")
def test_no_stage_imports_a_higher_one(name, path):
    own = _stage(name)
    if own is None:  # the package root re-exports the public names lazily
        return
    upward = [m for m in _imports(path)
              if _stage(m) is not None and STAGES.index(_stage(m)) > STAGES.index(own)]
    assert not upward, f"{name} ({own}) imports a higher stage: {upward}"


def test_the_layer_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mtlue_cli.verify.run import verify\n")
    assert _imports(bad) == {"mtlue_cli.verify.run"}
    assert STAGES.index(_stage("mtlue_cli.verify.run")) > STAGES.index(_stage("mtlue_cli.data.labels"))


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in _modules() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


def test_public_names_resolve_from_the_root_and_the_stages():
    import importlib

    import mtlue_cli

    for name in mtlue_cli.__all__:
        assert getattr(mtlue_cli, name) is not None
    for stage in STAGES[1:-2]:  # data ... hub: their entry points, as the flat modules offered them
        package = importlib.import_module(f"mtlue_cli.{stage}")
        for name in package.__getattr__.exports:
            assert callable(getattr(package, name)), f"mtlue_cli.{stage}.{name}"
    from mtlue_cli.verify import verify
    from mtlue_cli.verify.run import verify as the_function

    assert verify is the_function
    # Once the verify stage is imported it shadows the root's `verify` export; calling it still verifies.
    calls = []
    package = importlib.import_module("mtlue_cli.verify")
    run = importlib.import_module("mtlue_cli.verify.run")
    original, run.verify = run.verify, lambda *a, **k: calls.append((a, k)) or "report"
    try:
        assert mtlue_cli.verify is package and mtlue_cli.verify("data", protected="p") == "report"
    finally:
        run.verify = original
    assert calls == [(("data",), {"protected": "p"})]
