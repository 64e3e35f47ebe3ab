"""Stage 6, publishing: self-contained generator folders and their upload (`export`), a protected folder
turned into a Hugging Face dataset (`publish`: what it refuses in `publish_checks`, the upload folder in
`imagefolder`, its card in `dataset_card`).

May import: every lower stage (data, models, fit, protect, verify). Never demo or cli.
"""

from mtlue_cli import lazy_exports

# The stage's entry points, importable from the package as they were from the flat modules before (issue 27).
__getattr__ = lazy_exports(__name__, {
    "export_generator": "mtlue_cli.hub.export",
    "publish_dataset": "mtlue_cli.hub.publish",
    "load_generator": "mtlue_cli.models.persistence",
})
