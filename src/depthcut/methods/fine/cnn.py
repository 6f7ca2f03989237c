"""Algorithm 9 (CNNs): iterative first-order Taylor fine-grained depth pruning.

Repeat until the parameter target: recompute the Taylor importance (Eq. 3.10) of every
remaining conv/linear unit on the *current* pruned network (one backward pass over the
calibration batches), prune the lowest. ``rescore=False`` ranks once on the dense network
(the one-shot baseline). The result is a Plan that ``depthcut.apply`` replays on the model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from depthcut.kinds import Kind
from depthcut.methods.fine.importance import channel_taylor, eq310, own_taylor
from depthcut.methods.fine.model import FineModel, describe_cnn, fine_plan_info
from depthcut.methods.fine.state import FineState, UnitRefused
from depthcut.planning.plan import Action, Plan
from depthcut.units.discover import count_params

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def backward_pass(model: nn.Module, batches: Batches, loss_fn: Callable) -> None:
    """Accumulate ∂loss/∂w over the batches in ``.grad`` (eval-mode statistics)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for x, y in batches:
            loss_fn(model(x), y).backward()


def label_channels(fm: FineModel, state: FineState, work: nn.Module) -> dict:
    """Channel Taylor of a materialised network, mapped back to original labels."""
    out = {}
    for root, values in channel_taylor(fm.graph, work).items():
        alive = state.alive_of(root)
        if len(values) == len(alive):
            full = torch.zeros(fm.graph.sizes[root], dtype=torch.float64)
            full[torch.tensor(alive)] = values
            out[root] = full
    return out


def _best(fm: FineModel, state: FineState, work: nn.Module, channel: dict):
    best = None
    for unit in fm.local_units():
        if unit.node in state.pruned:
            continue
        trial = state.copy()
        try:
            labels = trial.prune(unit.node, scores=channel)
            own = own_taylor(work, unit)
        except (UnitRefused, AttributeError):
            continue
        value = eq310(state, unit, labels, channel, own)
        if best is None or value < best[0]:
            best = (value, unit, trial, labels)
    return best


def cnn_plan(
    model: nn.Module,
    example: torch.Tensor,
    batches: Batches,
    loss_fn: Callable,
    fraction: float,
    rescore: bool = True,
    progress: bool = True,
) -> Plan:
    """Algorithm 9 up to ``fraction`` of the parameters removed."""
    batches = list(batches)
    fm = FineModel(model, example)
    root, state = fm.roots[0], fm.new_state()
    total = count_params(model)
    target, removed, actions = int(round(fraction * total)), 0, []
    work = copy.deepcopy(model)
    backward_pass(work, batches, loss_fn)
    channel = label_channels(fm, state, work)
    bar = tqdm(total=target, desc="Algorithm 9", disable=not progress, unit="param")
    while removed < target:
        best = _best(fm, state, work, channel)
        if best is None:
            break
        value, unit, state, labels = best
        delta = total - removed - fm.params(root, state)
        removed += delta
        bar.update(delta)
        actions.append(Action(Kind.FINE, -1, unit.module, delta, value, channels=tuple(labels)))
        if rescore:
            work = fm.pruned_copy(root, state)
            backward_pass(work, batches, loss_fn)
            channel = label_channels(fm, state, work)
    bar.close()
    return Plan(
        actions,
        fine_plan_info(fm, describe_cnn(model, example)),
        {"strategy": "alg9" if rescore else "taylor-once", "fraction": fraction},
    )
