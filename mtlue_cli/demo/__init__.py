"""The built-in demo: a synthetic multi-task set (`shapes`) protected and verified end to end (`run`), and the
synthetic dense multi-task scenes (`scenes`: segmentation, depth, normals and a class per image, issue 28).

May import: every stage below the CLI. Never cli.
"""
