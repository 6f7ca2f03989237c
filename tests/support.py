"""Helpers shared by test files (one place; test files never import each other)."""

from __future__ import annotations

import importlib.util
import os

import pytest

from depthcut.cli import main


def missing(what: str) -> None:
    """A dependency is not there: skip on a developer's machine, fail under CI (which
    installs every one of them), so a broken install step cannot hide behind a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"missing under CI: {what}")
    pytest.skip(what)


def require_module(name: str, what: str) -> None:
    if importlib.util.find_spec(name) is None:
        missing(what)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def prune_args(model, out, text, *extra):
    """A tiny ``prune`` command line; ``--budget params=0.2`` unless ``extra`` gives one."""
    budget = [] if "--budget" in extra else ["--budget", "params=0.2"]
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
        *budget,
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


def save_run(path, model, plan, tokenizer=None):
    """Apply ``plan`` to ``model`` and save the run (with tiny_tokenizer unless another is
    given); returns the pruned model."""
    import depthcut as dc
    from tiny import tiny_tokenizer

    pruned = dc.apply(model, plan)
    dc.save(pruned, plan, path, tokenizer if tokenizer is not None else tiny_tokenizer())
    return pruned


def prune_run(path, model, cfg, tokenizer=None):
    """Score, plan and apply ``cfg`` on tiny calibration ids and save the run (tokenizer as in
    :func:`save_run`); returns the pruned model."""
    import depthcut as dc
    from tiny import tiny_calib, tiny_tokenizer

    pruned, plan, _ = dc.prune(model, cfg, tiny_calib(), progress=False)
    dc.save(pruned, plan, path, tokenizer if tokenizer is not None else tiny_tokenizer())
    return pruned


def run_masked(model, data, handles) -> list:
    """Run ``model`` over ``data``'s batches (the hook ``handles`` recording what they need),
    remove the hooks, and return each batch's real-token mask."""
    import torch

    masks = []
    try:
        with torch.no_grad():
            for batch in data.batches():
                model(**batch, use_cache=False)
                masks.append(batch["attention_mask"].bool())
    finally:
        for handle in handles:
            handle.remove()
    return masks


def real_tokens(tensors: list, masks: list):
    """The recorded per-batch tensors on their real tokens, concatenated (float64)."""
    import torch

    return torch.cat([t[m] for t, m in zip(tensors, masks)]).double()


def assert_reloads_equal(pruned, plan, path, ids):
    """Save ``pruned`` (with ``plan``) to ``path`` and assert ``depthcut.load`` gives equal
    logits on ``ids``; returns the loaded model."""
    import torch

    import depthcut as dc
    from tiny import tiny_tokenizer

    dc.save(pruned, plan, path, tiny_tokenizer())
    loaded, _ = dc.load(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, pruned(ids).logits)
    return loaded
