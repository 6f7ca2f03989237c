"""Scores: per-unit numbers plus the settings and model description that produced them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depthcut.errors import ConfigError
from depthcut.units.discover import Unit

SCORES_VERSION = 1


@dataclass
class Scores:
    """``unit_scores`` (lower = less important), optional Gromov ``spans`` ("l:n" keys) and,
    for iterative scoring, the greedy removal ``sequence`` of unit ids with their scores."""

    metric: str
    units: list[Unit]
    unit_scores: dict[str, float]
    model: dict[str, Any]
    config: dict[str, Any]
    spans: dict[str, float] | None = None
    sequence: list[dict[str, Any]] | None = None
    cost: dict[str, float] = field(default_factory=dict)
    version: int = SCORES_VERSION
    width: dict[str, Any] | None = None  # kind -> {"layers": {id: info}, "scores": {id: [..]}}

    def width_of(self, kind: str) -> dict[str, Any]:
        """The width scores of ``kind`` (``layers``, ``scores``…); an error when not scored."""
        if self.width is None or kind not in self.width:
            raise ConfigError(f"these scores hold no {kind} units: score them first")
        return self.width[kind]

    fine: dict[str, Any] | None = None  # channel Taylor scores, params removed alone, sequence
    latency: dict[str, Any] | None = None  # per-unit decode seconds (units.latency)

    def unit(self, unit_id: str) -> Unit:
        """The scored unit whose id is ``unit_id``."""
        return next(u for u in self.units if u.id == unit_id)

    def to_dict(self) -> dict[str, Any]:
        """The scores as JSON-ready data (what ``scores.json`` holds)."""
        return {
            "version": self.version,
            "metric": self.metric,
            "units": [u.to_dict() for u in self.units],
            "unit_scores": self.unit_scores,
            "spans": self.spans,
            "sequence": self.sequence,
            "model": self.model,
            "config": self.config,
            "cost": self.cost,
            "width": self.width,
            "fine": self.fine,
            "latency": self.latency,
        }

    def save(self, path: str | Path) -> None:
        """Write the scores as JSON to ``path``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scores:
        """The scores ``to_dict`` wrote; refuses other data and unknown versions."""
        if data.get("version") != SCORES_VERSION:
            raise ValueError(f"scores version {data.get('version')} unsupported")
        units = [Unit.from_dict(u) for u in data["units"]]
        return cls(
            data["metric"],
            units,
            data["unit_scores"],
            data["model"],
            data["config"],
            data.get("spans"),
            data.get("sequence"),
            data.get("cost", {}),
            data["version"],
            data.get("width"),
            data.get("fine"),
            data.get("latency"),
        )

    @classmethod
    def load(cls, path: str | Path) -> Scores:
        """The scores saved at ``path``."""
        from depthcut.files import read_json

        return cls.from_dict(read_json(path, "scores"))
