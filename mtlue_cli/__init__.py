"""mtlue: make an image dataset unlearnable for multi-task and single-task models (MTL-UE).

Public API, imported lazily so that `mtlue --help` never loads torch (style rule 2).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DataConfig": "mtlue_cli.config",
    "FitConfig": "mtlue_cli.config",
    "ProtectConfig": "mtlue_cli.config",
    "VerifyConfig": "mtlue_cli.config",
    "MtlueError": "mtlue_cli.errors",
    "TaskSpec": "mtlue_cli.labels",
    "MultiTaskImageDataset": "mtlue_cli.data",
    "load_dataset": "mtlue_cli.data",
    "inspect_dataset": "mtlue_cli.inspect",
    "PerturbationGenerator": "mtlue_cli.generator",
    "MTLClassifier": "mtlue_cli.classifiers",
    "fit_generator": "mtlue_cli.fit",
    "protect_dataset": "mtlue_cli.protect",
    "verify": "mtlue_cli.verify",
    "load_generator": "mtlue_cli.hub",
    "export_generator": "mtlue_cli.export",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mtlue_cli' has no attribute {name!r}")
