"""Helpers shared by test files (one place; test files never import each other)."""

from __future__ import annotations

from depthcut.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def prune_args(model, out, text, *extra):
    return [
        "prune",
        model,
        "--out",
        out,
        "--calib",
        text,
        "--n-samples",
        "4",
        "--seq-len",
        "32",
        "--budget",
        "params=0.2",
        *extra,
    ]


def make_plan(model, picks):
    from depthcut.api import plan_units
    from depthcut.graph.structure import discover_structure
    from depthcut.units.discover import discover_units

    s = discover_structure(model)
    units = {u.id: u for u in discover_units(model, s, ("block", "attention", "mlp"))}
    chosen = [units[f"{k}:{b}"] for k, b in picks]
    return plan_units(model, [u.id for u in chosen]), chosen, s
