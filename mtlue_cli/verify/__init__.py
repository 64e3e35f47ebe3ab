"""Stage 5, verifying: victims trained on the protected files as written and on the originals (`verify`), the
attacker's defences (`defenses`; orthogonal projection and UEraser-lite live in `fit`, which trains through
them too), linear-probe
detectability (`detect`), the report and its verdict (`verdict`) and the learning-curve picture (`plot`).

May import: the shared modules, `data`, `models`, `fit` (the squeezes), `protect` (the folder format).
Never hub or cli.
"""

import sys
import types
from typing import Any

from mtlue_cli import lazy_exports

# The stage's entry points, importable from the package as they were from the flat modules before (issue 27).
__getattr__ = lazy_exports(__name__, {
    "verify": "mtlue_cli.verify.run",
    "verify_folder": "mtlue_cli.verify.run",
})


class _CallableStage(types.ModuleType):
    """`mtlue_cli.verify` was the `verify` function before the stage became a package; once this package is
    imported it shadows that attribute of `mtlue_cli`, so calling the package calls the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return __getattr__("verify")(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableStage
