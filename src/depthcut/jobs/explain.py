"""``depthcut explain MODEL``: leave-one-out perplexity per unit and the pair dependency check
(thesis §4.4) into explain.json and explain.png."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from depthcut import log
from depthcut.eval.run import EvalSettings
from depthcut.jobs.common import ModelRef, Output


@dataclass(frozen=True)
class ExplainJob:
    """Remove each unit of ``units`` (kinds) alone, and each pair of ``pairs`` (unit ids such
    as ``("mlp:21", "mlp:22")`` given as "a+b" strings) together."""

    model: ModelRef
    out: Output
    units: tuple[str, ...] = ("attention", "mlp")
    pairs: tuple[str, ...] = ()
    evaluation: EvalSettings = field(default_factory=lambda: EvalSettings(perplexity=True))


def run_explain(job: ExplainJob) -> Path:
    """explain.json and explain.png in ``out``; returns ``out``."""
    from depthcut.eval.run import perplexity_fn
    from depthcut.explain import leave_one_out, pair_dependency, parse_pairs, plot_leave_one_out
    from depthcut.graph.structure import discover_structure
    from depthcut.io import atomic_dir
    from depthcut.units.discover import discover_units

    out = job.out.prepare()
    model, tok = job.model.load()
    units = [u.id for u in discover_units(model, discover_structure(model), job.units)]
    pairs = parse_pairs(job.pairs, units)
    ppl = perplexity_fn(tok, job.evaluation)
    result = leave_one_out(model, units, ppl)
    result["pairs"] = pair_dependency(model, pairs, ppl) if pairs else []

    def write(tmp: Path) -> None:
        (tmp / "explain.json").write_text(json.dumps(result, indent=2) + "\n")
        plot_leave_one_out(result, tmp / "explain.png")

    atomic_dir(out, write, job.out.overwrite)
    log.result(summary(result))
    return out


def summary(result: dict) -> str:
    """The least harmful units and each pair's alone / together perplexity changes."""
    worst = sorted(result["delta"].items(), key=lambda kv: kv[1])
    lines = ["least harmful: " + ", ".join(f"{u} {d:+.2f}" for u, d in worst[:5])]
    for row in result["pairs"]:
        lines.append(
            f"{row['a']} + {row['b']}: {row['delta_a']:+.2f} / {row['delta_b']:+.2f} alone, "
            f"{row['delta_ab']:+.2f} together{' (dependent)' if row['dependent'] else ''}"
        )
    return "\n".join(lines)
