"""Stage 3, fitting a generator: ONE loop for EM, TAP and SEP (`loop`), their objectives and regularisers
(`losses`), the surrogates they attack (`surrogate`), the attacker's squeezes in the loop (`squeezes`) and the
informed attacker's defences it can train through and `verify` applies (`projection`: orthogonal projection;
`ueraser`: UEraser-lite), and a
fit on a folder of labelled images with the recipe resolved for this machine (`folder`).

May import: the shared modules, `data`, `models`. Never protect, verify, hub or cli.
"""

from mtlue_cli import lazy_exports

# The stage's entry points, importable from the package as they were from the flat modules before (issue 27).
__getattr__ = lazy_exports(__name__, {
    "fit_generator": "mtlue_cli.fit.loop",
    "fit_folder": "mtlue_cli.fit.folder",
})
