"""The model card (its own module, imported by hub and export) and the package's import graph."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import mtlue_cli
from mtlue_cli.models.card import model_card

CONFIG = {"tasks": {"shape": ["c", "a", "b"], "grade": ["1", "2"]}, "epsilon": 8 / 255, "image_size": 32,
          "stem": "cifar", "unprotected": ["grade"]}
RECORD = {
    "version": "0.1.0", "torch": "2.x", "device": "cpu", "created": "2025-01-01T00:00:00Z",
    "config": {"batch_size": 64, "seed": 3, "surrogate": "resnet18", "surrogate_epochs": 12, "lambda_intra": 10.0,
               "lambda_inter": 200.0},
    "dataset": {"images": 12, "layout": "csv", "fingerprint": "0123456789abcdef" * 4},
    "result": {"epochs_run": 7},
    "card": {"title": "Shapes generator", "license": "cc-by-nc-4.0", "training_data": "Twelve drawn shapes."},
}


def _front(card: str) -> dict:
    front = card.split("---\n")[1]
    return {line.split(": ", 1)[0]: json.loads(line.split(": ", 1)[1]) for line in front.splitlines()}


def test_card_front_matter_and_task_list_keep_the_task_order() -> None:
    card = model_card(CONFIG, {"base_method": "tap"}, RECORD)
    fields = _front(card)
    assert fields["library_name"] == "mtlue" and fields["license"] == "cc-by-nc-4.0"
    assert "mtl-ue-tap" in fields["tags"]
    assert list(fields["mtlue"]["tasks"]) == ["shape", "grade"]
    assert fields["mtlue"]["epsilon_255"] == 8.0 and fields["mtlue"]["image_size"] == 32
    lines = card.splitlines()
    assert "# Shapes generator" in lines
    # Word class names get their index; numeric ones do not (the index would read as another class).
    assert "  - `shape`: `c` (0), `a` (1), `b` (2)" in lines
    assert "  - `grade`: `1`, `2`" in lines
    assert lines.index("  - `shape`: `c` (0), `a` (1), `b` (2)") < lines.index("  - `grade`: `1`, `2`")
    assert "- L-inf budget: 0.031373 (8/255), applied at native resolution, lossless PNG by default." in lines
    assert "- Left learnable on purpose: grade." in lines
    assert "Twelve drawn shapes." in lines
    assert "- 12 images (csv layout), fingerprint `0123456789abcdef`" in lines
    assert ("- 7 generator epochs, batch 64, seed 3, surrogate resnet18 (12 epochs), lambda_intra 10.0, "
            "lambda_inter 200.0") in lines


def test_card_without_record_or_method_and_with_a_verify_table() -> None:
    report = {"tasks": [{"task": "shape", "clean_acc": 0.9, "protected_acc": 0.35, "majority": 0.34}],
              "recipe": {"epochs": 2}}
    card = model_card({**CONFIG, "unprotected": []}, {}, None, report)
    fields = _front(card)
    assert fields["license"] == "other" and "mtl-ue-unknown" in fields["tags"]
    assert "- No training record was saved with this generator." in card.splitlines()
    assert "| shape | 90.0% | 35.0% | 34.0% |" in card.splitlines()
    assert "Left learnable" not in card


# ----------------------------------------------------------------------------- import graph


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """mtlue_cli modules that `path` imports anywhere (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    root = Path(mtlue_cli.__file__).parent
    files = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {name: _imports(path, name, set(files)) for name, path in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_cycle_finder_sees_a_circle_through_a_function_level_import() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_among_mtlue_cli_modules() -> None:
    graph = _graph()
    assert {"mtlue_cli.models.persistence", "mtlue_cli.hub.export", "mtlue_cli.models.card", "mtlue_cli.fit.loop"} <= set(graph)
    assert graph["mtlue_cli.models.card"] == set()  # the card needs nothing from the package
    assert "mtlue_cli.models.card" in graph["mtlue_cli.models.persistence"] and "mtlue_cli.models.persistence" in graph["mtlue_cli.hub.export"]
    assert _cycles(graph) == []
