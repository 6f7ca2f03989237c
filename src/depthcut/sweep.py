"""``depthcut sweep``: one model, several methods × parameter budgets → sweep.json + curves.

Each method is scored once (at the largest budget, which iterative selection needs) and its
scores are reused for every budget. After every point ``sweep.json`` is rewritten atomically,
so a killed sweep continues where it stopped; scores are cached beside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from depthcut.config import Budget, ParamCount, PruneConfig
from depthcut.errors import ConfigError, OutputExistsError

METHODS: dict[str, dict] = {
    "random": {"units": ("block",), "importance": "random", "strategy": "ranked"},
    "bi": {"units": ("block",), "importance": "bi", "strategy": "ranked"},
    "gromov": {"units": ("block",), "importance": "gromov", "strategy": "contiguous"},
    "iterative": {"units": ("block",), "importance": "bi", "strategy": "iterative"},
    "sublayer": {"units": ("attention", "mlp"), "importance": "angular", "strategy": "ranked"},
    "fine": {"units": ("fine",), "importance": "angular", "strategy": "interleave"},
    "fine_unified": {"units": ("fine",), "importance": "angular", "strategy": "unified"},
    "fine_iterative": {"units": ("fine",), "importance": "angular", "strategy": "iterative"},
}
SWEEP_VERSION = 1


@dataclass(frozen=True)
class SweepConfig:
    methods: tuple[str, ...] = ("random", "bi", "gromov", "iterative", "sublayer")
    budgets: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    count: ParamCount = "all"  # budgets as a fraction of all or of non-embedding params
    protect_first: int = 1
    protect_last: int = 1
    latency: bool = False
    tasks: tuple[str, ...] = ()
    task_limit: int | None = None
    extra: dict = field(default_factory=dict)  # calibration / perplexity settings, recorded

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if not self.methods or bad:
            raise ConfigError(f"sweep methods {bad or '()'}; choose from {', '.join(METHODS)}")
        if not self.budgets or any(not 0.0 < b < 1.0 for b in self.budgets):
            raise ConfigError(f"sweep budgets {self.budgets} must be fractions in (0, 1)")

    def prune_config(self, method: str, budget: float) -> PruneConfig:
        """The config of one point: the selection method alone (a sweep does not repair)."""
        return PruneConfig(
            **METHODS[method],
            budget=Budget(params=budget, count=self.count),
            protect_first=self.protect_first,
            protect_last=self.protect_last,
            repair="none",
        )

    def to_dict(self) -> dict:
        return {
            "methods": list(self.methods),
            "budgets": list(self.budgets),
            "count": self.count,
            "protect_first": self.protect_first,
            "protect_last": self.protect_last,
            "latency": self.latency,
            "tasks": list(self.tasks),
            "task_limit": self.task_limit,
            "extra": self.extra,
        }


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def open_state(out: Path, cfg: SweepConfig, overwrite: bool) -> dict:
    """The sweep state in ``out``: resumed when it was made with the same config."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep.json"
    if path.exists():
        state = json.loads(path.read_text())
        if state.get("config") == cfg.to_dict():
            return state
        if not overwrite:
            raise OutputExistsError(f"{path} holds a sweep {_difference(state.get('config'), cfg)}")
    state = {"version": SWEEP_VERSION, "config": cfg.to_dict(), "points": []}
    _write_json(path, state)
    return state


def _difference(saved: dict | None, cfg: SweepConfig) -> str:
    """Which setting of a stored sweep differs from this run's (e.g. its calibration text)."""
    new = cfg.to_dict()
    flat_old = (saved or {}) | (saved or {}).get("extra", {})
    flat_new = new | new.get("extra", {})
    for key, value in flat_new.items():
        if key != "extra" and flat_old.get(key) != value:
            return (
                f"made with {key}={flat_old.get(key)!r}, not {value!r}: its scores and points "
                "would mix settings (use --overwrite to start over)"
            )
    return "with other settings (use --overwrite to start over)"


def _done(state: dict, method: str, budget: float | None) -> bool:
    return any(p["method"] == method and p["budget"] == budget for p in state["points"])


def run_sweep(
    model,
    tokenizer,
    calib,
    cfg: SweepConfig,
    out: Path,
    measure: Callable,
    overwrite: bool = False,
    on_point: Callable[[dict], None] | None = None,
) -> dict:
    """Every (method, budget) point not yet in ``out/sweep.json``; ``measure(model, dense)``
    returns the point's numbers. ``on_point`` sees each new point (progress, tests)."""
    from depthcut.api import apply, plan
    from depthcut.eval.run import param_counts

    out = Path(out)
    state = open_state(out, cfg, overwrite)
    base = param_counts(model)
    if not _done(state, "dense", None):
        _add(
            state,
            out,
            {"method": "dense", "budget": None, **base, **measure(model, model)},
            on_point,
        )
    for method in cfg.methods:
        pending = [b for b in cfg.budgets if not _done(state, method, b)]
        if not pending:
            continue
        scores = _method_scores(model, calib, cfg, method, out)
        for budget in pending:
            the_plan = plan(scores, cfg.prune_config(method, budget), model)
            pruned = apply(model, the_plan)
            counts = param_counts(pruned)
            point = {
                "method": method,
                "budget": budget,
                **counts,
                "removed": [a.unit_id for a in the_plan.actions],
                "removed_fraction": 1 - counts["params_all"] / base["params_all"],
                **measure(pruned, model),
            }
            _add(state, out, point, on_point)
    return state


def _add(state: dict, out: Path, point: dict, on_point) -> None:
    state["points"].append(point)
    _write_json(out / "sweep.json", state)
    if on_point is not None:
        on_point(point)


def _method_scores(model, calib, cfg: SweepConfig, method: str, out: Path):
    """Scores of ``method`` (cached in ``out/scores/``), made at the largest budget."""
    from depthcut.api import score
    from depthcut.scores import Scores

    path = out / "scores" / f"{method}.json"
    if path.exists():
        return Scores.load(path)
    scores = score(model, cfg.prune_config(method, max(cfg.budgets)), calib)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    scores.save(tmp)
    os.replace(tmp, path)
    return scores
