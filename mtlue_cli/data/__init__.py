"""Stage 1, the data: the kinds of task labels (`kinds`, the label-map ones in `dense_kinds`), the tasks and the
table every reader returns (`tasks`), the label readers (`labels`: CSV/TSV, folder tree, UTKFace names, CelebA,
NYUv2; `dense_labels`: label maps in folders, CSV columns or NYUv2's), label-map files (`label_maps`), image files
(`images`: scanning, upright decoding, writing), joint augmentation (`augment`), the decoded training set
(`dataset`) and the dry run over all of it (`inspect`).

May import: the shared modules (config, errors, events, files, metrics). Never models, fit, protect, verify, hub
or cli.
"""

from mtlue_cli import lazy_exports

# The stage's entry points, importable from the package as they were from the flat modules before (issue 27).
__getattr__ = lazy_exports(__name__, {
    "TaskSpec": "mtlue_cli.data.tasks",
    "LabelTable": "mtlue_cli.data.tasks",
    "read_labels": "mtlue_cli.data.labels",
    "MultiTaskImageDataset": "mtlue_cli.data.dataset",
    "load_dataset": "mtlue_cli.data.dataset",
    "inspect_dataset": "mtlue_cli.data.inspect",
})
