"""What `pip install mtlue` gets: the wheel holds every package under mtlue_cli/, the bundled generators and the
licence files, and works from outside the source tree.

The wheel is built from a copy of the tree without build isolation (offline; setuptools comes with the `test`
extra), or is the one named by MTLUE_WHEEL: CI builds its wheel from the sdist and points this test at it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mtlue_cli"
# What a build reads from the tree (pyproject.toml and setup.py name the rest).
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "NOTICE", "mtlue_cli", "pretrained")


def expected_packages() -> set[str]:
    """Every folder under mtlue_cli/ with an __init__.py, as a dotted name, and the mapped mtlue_cli.pretrained."""
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")
             if "__pycache__" not in p.parts}
    return found | {"mtlue_cli.pretrained"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("MTLUE_WHEEL"):
        return Path(os.environ["MTLUE_WHEEL"])
    pytest.importorskip("setuptools", minversion="77", reason="building the wheel needs setuptools>=77 (test extra)")
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in BUILD_INPUTS:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, src / name, **(
            {"ignore": ignore} if (ROOT / name).is_dir() else {}))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "--wheel-dir", str(dist), str(src)], check=True, capture_output=True, text=True)
    (built,) = dist.glob("mtlue-*.whl")
    return built


@pytest.fixture(scope="module")
def names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_every_folder_of_code_is_a_package() -> None:
    """A folder of modules without __init__.py would be left out of the wheel without a word."""
    folders = {p.parent for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert [f for f in folders if not (f / "__init__.py").is_file()] == []


def test_wheel_holds_every_package_and_module(names: set[str]) -> None:
    missing = [p for p in sorted(expected_packages()) if f"{p.replace('.', '/')}/__init__.py" not in names]
    assert missing == [], f"packages left out of the wheel: {missing}"
    modules = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert sorted(modules - names) == []


def test_wheel_holds_the_bundled_generators_and_licences(names: set[str]) -> None:
    registry = json.loads((ROOT / "pretrained" / "registry.json").read_text())["aliases"]
    bundled = [e["bundled"] for e in registry.values() if e.get("bundled")]
    assert bundled, "no bundled generator in pretrained/registry.json"
    for folder in bundled:
        for file in ("model.safetensors", "config.json", "README.md"):
            assert f"mtlue_cli/pretrained/{folder}/{file}" in names
    for entry in registry.values():  # a pinned labeller (issue 30) ships beside its generator
        if entry.get("bundled") and entry.get("labeller_sha256"):
            for file in ("labeller.safetensors", "labeller.json"):
                assert f"mtlue_cli/pretrained/{entry['bundled']}/{file}" in names
    assert "mtlue_cli/pretrained/registry.json" in names
    info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert {f"{info}/licenses/LICENSE", f"{info}/licenses/NOTICE"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_wheel_works_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    """The unpacked wheel alone: the CLI answers and every bundled alias loads offline from it. `-S` skips the .pth
    files, so an editable install of the source tree cannot fill in what the wheel lacks; the dependencies come
    from site-packages on PYTHONPATH."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    paths = [str(site), *dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    help_ = subprocess.run([sys.executable, "-S", "-m", "mtlue_cli", "--help"], **run)
    assert help_.returncode == 0 and "protect" in help_.stdout, help_.stderr
    script = (
        "import json, mtlue_cli\n"
        "from mtlue_cli.models.persistence import load_generator, registry\n"
        "aliases = [a for a, e in registry().items() if e.get('bundled')]\n"
        "print(json.dumps({'package': mtlue_cli.__file__,\n"
        "                  'folders': [str(load_generator(a).folder) for a in aliases]}))\n"
    )
    loaded = subprocess.run([sys.executable, "-S", "-c", script], **run)
    assert loaded.returncode == 0, loaded.stderr
    report = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert Path(report["package"]).is_relative_to(site)  # not the source tree nor an editable install
    assert report["folders"] and all(Path(f).is_relative_to(site) for f in report["folders"])
