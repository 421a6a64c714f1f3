"""The `datamix` command line: the top layer, which nothing imports.

It assembles the core's commands (validate, render, import, crd) with those the operator and the
trainer register from their own packages (`datamix operator`, `datamix train/run/demo-data`).
"""
