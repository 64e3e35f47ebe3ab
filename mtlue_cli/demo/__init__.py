"""The built-in demo: a synthetic multi-task set (`shapes`) protected and verified end to end (`run`).

May import: every stage below the CLI. Never cli.
"""
