"""Stage 2, the models: the perturbation generator (`generator`) and its persistence as a folder, a pretrained
alias or a Hub repo id (`persistence`, with its model card in `card`), the multi-task classifiers used as
surrogates and victims (`classifiers`), their dense counterpart (`dense`), the dense tasks' label-embedding nets
of the generator (`embedding`) and the loop that trains and evaluates them (`engine`).

May import: the shared modules and `data`. Never fit, protect, verify, hub or cli.
"""

from mtlue_cli import lazy_exports

# The stage's entry points, importable from the package as they were from the flat modules before (issue 27).
__getattr__ = lazy_exports(__name__, {
    "PerturbationGenerator": "mtlue_cli.models.generator",
    "MTLClassifier": "mtlue_cli.models.classifiers",
    "DenseMTLNet": "mtlue_cli.models.dense",
    "load_generator": "mtlue_cli.models.persistence",
    "save_generator": "mtlue_cli.models.persistence",
})
