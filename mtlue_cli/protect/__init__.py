"""Stage 4, protecting: `protect_dataset` (`protect`), one protected file composed, encoded, written and
measured (`encode`), the protected folder's format: names, manifest, run.json (`outputs`), and the split of
the files over torchrun processes (`shard`).

May import: the shared modules, `data`, `models`, `fit` (a protect without a generator fits one first).
Never verify, hub or cli.
"""

from mtlue_cli import lazy_exports

# The stage's entry points, importable from the package as they were from the flat modules before (issue 27).
__getattr__ = lazy_exports(__name__, {
    "protect_dataset": "mtlue_cli.protect.protect",
    "protect_folder": "mtlue_cli.protect.protect",
})
