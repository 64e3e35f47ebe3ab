"""mtlue: make an image dataset unlearnable for multi-task and single-task models (MTL-UE).

Public API, imported lazily so that `mtlue --help` never loads torch (style rule 2).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__version__ = "0.1.0"

_EXPORTS = {
    "DataConfig": "mtlue_cli.config",
    "FitConfig": "mtlue_cli.config",
    "ProtectConfig": "mtlue_cli.config",
    "VerifyConfig": "mtlue_cli.config",
    "MtlueError": "mtlue_cli.errors",
    "TaskSpec": "mtlue_cli.data.tasks",
    "MultiTaskImageDataset": "mtlue_cli.data.dataset",
    "load_dataset": "mtlue_cli.data.dataset",
    "inspect_dataset": "mtlue_cli.data.inspect",
    "PerturbationGenerator": "mtlue_cli.models.generator",
    "MTLClassifier": "mtlue_cli.models.classifiers",
    "fit_generator": "mtlue_cli.fit.loop",
    "protect_dataset": "mtlue_cli.protect.protect",
    "verify": "mtlue_cli.verify.run",
    "load_generator": "mtlue_cli.models.persistence",
    "export_generator": "mtlue_cli.hub.export",
}

__all__ = ["__version__", *_EXPORTS]


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` (PEP 562) that imports each public name from its module on first use, so
    that importing a package never loads torch (style rule 2)."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    __getattr__.exports = tuple(exports)  # type: ignore[attr-defined]
    return __getattr__


__getattr__ = lazy_exports(__name__, _EXPORTS)
