"""The pruning families behind one interface (``methods.base.Family``): depth (blocks,
sublayers), width (heads, neurons) and fine (single layers, attention regions). ``api``
loops over the families a config or a plan names; nothing here branches on a family."""

from __future__ import annotations

import copy

from torch import nn

from depthcut.errors import ConfigError, UnsupportedModelError
from depthcut.graph.structure import discover_structure
from depthcut.kinds import Kind, UnitRef
from depthcut.methods.base import Family, check_plan_fits, describe
from depthcut.methods.depth import DepthFamily
from depthcut.methods.fine import FineFamily
from depthcut.methods.width import WidthFamily
from depthcut.planning.plan import Plan
from depthcut.surgery.patch import insert_patches, recorded_patches

# scoring and selection order: depth before width (width skips removed blocks)
FAMILIES: tuple[Family, ...] = (FineFamily(), DepthFamily(), WidthFamily())
APPLY_ORDER = ("fine", "width", "depth")  # width slices before blocks leave the stack
EXCLUSIVE = ("fine",)  # families that own the whole model graph: not combined with others

__all__ = ["FAMILIES", "Family", "apply_plan", "describe", "families", "plan_units"]


def families(kinds) -> list[Family]:
    """The families owning any of ``kinds`` (config unit kinds or plan action kinds)."""
    wanted = {Kind(k).family for k in kinds}
    return [f for f in FAMILIES if f.name in wanted]


def check_applies(model: nn.Module, plan: Plan):
    """Refuse a plan made for another model, or mixing fine-grained and other actions, before
    any work; returns the model's structure (None for fine-grained plans, checked by their
    family)."""
    chosen = families({a.kind for a in plan.actions})
    if len(chosen) > 1 and any(f.name in EXCLUSIVE for f in chosen):
        raise UnsupportedModelError("a plan cannot mix fine-grained and other actions")
    if any(f.name in EXCLUSIVE for f in chosen):
        return None
    structure = discover_structure(model)
    check_plan_fits(model, structure, plan)
    return structure


def apply_plan(model: nn.Module, plan: Plan, inplace: bool = False) -> nn.Module:
    """The model with the plan's units physically removed and its config synced."""
    if not inplace:
        model = copy.deepcopy(model)
    structure = check_applies(model, plan)
    chosen = families({a.kind for a in plan.actions})
    insert_patches(model, recorded_patches(plan.run))
    for family in sorted(chosen, key=lambda f: APPLY_ORDER.index(f.name)):
        model = family.apply(model, plan, structure)
    return model


def plan_units(model: nn.Module, unit_ids: list[str], example=None) -> Plan:
    """A hand-made plan removing exactly these units: depth ids (``block:3``, ``mlp:7``) or
    fine units by module path (CNNs: with an ``example`` input)."""
    owners = {UnitRef.parse(uid).kind.family for uid in unit_ids} or {"depth"}
    if len(owners) > 1:
        raise ConfigError(f"a hand-made plan takes units of one family, not {sorted(owners)}")
    family = next(f for f in FAMILIES if f.name in owners)
    return family.manual_plan(model, list(unit_ids), example)
