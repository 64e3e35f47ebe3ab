"""Only the package list lives here; everything else is in pyproject.toml.

`[tool.setuptools.packages.find]` cannot add a package that `package-dir` maps from elsewhere (pypa/setuptools#5145),
and the wheel needs both: every package under mtlue_cli/, found anew at each build so that a new subpackage cannot
be left out, and the top-level pretrained/ folder as mtlue_cli.pretrained (mapped in pyproject.toml).
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["mtlue_cli", "mtlue_cli.*"]), "mtlue_cli.pretrained"])
