"""Plan: the ordered list of removals, with what it was made from. JSON round-trip."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depthcut.errors import ConfigError
from depthcut.kinds import Kind, UnitRef

PLAN_VERSION = 1


@dataclass(frozen=True)
class Action:
    """Remove the unit ``kind`` at original block index ``block`` (module ``path``).

    A depth action removes a whole block or an attention / MLP sublayer. A width action
    (``head`` / ``neuron``) removes the units ``members`` of that block's width layer (KV
    groups or neurons, original numbering). A ``fine`` action is Prune(f) of the module at
    ``path``; ``channels`` are the channels its dimension reconciliation removed (replayed
    exactly on load). Both lists are saved under the plan's ``indices`` key."""

    kind: Kind
    block: int
    path: str
    params: int
    score: float | None = None
    members: tuple[int, ...] | None = None
    channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))

    @property
    def ref(self) -> UnitRef:
        return UnitRef(self.kind, self.block, self.path)

    @property
    def unit_id(self) -> str:
        return self.ref.id

    def to_dict(self) -> dict[str, Any]:
        indices = self.channels if self.kind is Kind.FINE else self.members
        return {
            "kind": self.kind.value,
            "block": self.block,
            "path": self.path,
            "params": self.params,
            "score": self.score,
            "indices": list(indices) if indices is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Action:
        fields: dict[str, Any] = {k: v for k, v in data.items() if k != "indices"}
        indices = tuple(data["indices"]) if data.get("indices") else None
        key = "channels" if data["kind"] == Kind.FINE else "members"
        fields[key] = indices
        return cls(**fields)


@dataclass
class Plan:
    """Pure data: which units go, and the model and run they were planned for."""

    actions: list[Action]
    model: dict[str, Any]  # model_type, num_blocks, params_all, params_non_embedding, config
    run: dict[str, Any] = field(default_factory=dict)  # prune config, metric, strategy
    version: int = PLAN_VERSION

    @property
    def removed_params(self) -> int:
        """Parameters the plan removes (summed over its actions)."""
        return sum(a.params for a in self.actions)

    @property
    def removed_blocks(self) -> list[int]:
        """The indices of the whole blocks the plan removes, ascending."""
        return sorted(a.block for a in self.actions if a.kind is Kind.BLOCK)

    def fraction(self, count: str = "all") -> float:
        """The removed share of the model's parameters (``all`` or ``non_embedding``)."""
        key = "params_all" if count == "all" else "params_non_embedding"
        return self.removed_params / self.model[key]

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (what ``plan.json`` holds)."""
        return {
            "version": self.version,
            "actions": [a.to_dict() for a in self.actions],
            "model": self.model,
            "run": self.run,
            "removed_params": self.removed_params,
        }

    def to_json(self) -> str:
        """The plan as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """The plan ``to_dict`` wrote; refuses other data and unknown versions."""
        from depthcut.files import check_version

        if not isinstance(data, dict) or "actions" not in data or "model" not in data:
            raise ConfigError("not a depthcut plan (no actions / model)")
        check_version(data.get("version"), PLAN_VERSION, "plan")
        actions = [Action.from_dict(a) for a in data["actions"]]
        return cls(actions, data["model"], data.get("run", {}), data["version"])

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON to ``path``."""
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """The plan saved at ``path``."""
        from depthcut.files import read_json

        return cls.from_dict(read_json(path, "plan"))

    def summary(self) -> str:
        """A table of the actions and the totals."""
        lines = [f"{'#':>3}  {'unit':<14} {'module':<34} {'params':>12}  {'score':>10}"]
        for n, a in enumerate(self.actions):
            score = "" if a.score is None else f"{a.score:.5f}"
            if a.kind is Kind.FINE:  # Prune(f): R = channels removed to reconcile dimensions
                unit, what = "fine", a.path + (f" (R={len(a.channels)})" if a.channels else "")
            else:
                unit = a.unit_id if a.members is None else f"{a.unit_id} ×{len(a.members)}"
                what = a.path
            lines.append(f"{n:>3}  {unit:<14} {what:<34} {a.params:>12,}  {score:>10}")
        total, non_emb = self.model["params_all"], self.model["params_non_embedding"]
        lines.append(
            f"removed {self.removed_params:,} params = {self.fraction('all'):.1%} of all "
            f"({total:,}), {self.fraction('non_embedding'):.1%} of non-embedding ({non_emb:,})"
        )
        latency = self.run.get("latency")
        if latency:
            lines.append(
                f"decode time per token: target −{latency['target'] / latency['total']:.1%}, "
                f"removed units measured at −{latency['removed'] / latency['total']:.1%} "
                f"({latency['removed'] * 1e3:.3f} of {latency['total'] * 1e3:.3f} ms)"
            )
            lines += [f"⚠ latency table unreliable: {r}" for r in latency.get("unreliable", [])]
        target = self.run.get("target_params")
        if target and all(a.kind.family != "width" for a in self.actions):
            mode = self.run.get("config", {}).get("budget", {}).get("mode", "at_least")
            lines.append(
                f"target {target:,} params ({mode}): removed {self.removed_params / target:.1%} "
                f"of it ({self.removed_params - target:+,})"
            )
        return "\n".join(lines)
