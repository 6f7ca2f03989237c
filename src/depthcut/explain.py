"""Explanation studies (thesis §4.4): what removing each unit alone does to perplexity, and
whether pairs of units are "semantically dependent" (removing both hurts less than removing
either one alone — the thesis' 21.up / 22.up finding)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from depthcut.errors import ConfigError

Measure = Callable[[nn.Module], float]


def removed(model: nn.Module, unit_ids: list[str]) -> nn.Module:
    from depthcut.api import apply, plan_units

    return apply(model, plan_units(model, unit_ids))


def leave_one_out(
    model: nn.Module, unit_ids: list[str], measure: Measure, progress: bool = True
) -> dict:
    """{"base": measure(model), "delta": {unit: measure(without unit) − base}}."""
    from tqdm.auto import tqdm

    base = measure(model)
    delta = {}
    for uid in tqdm(unit_ids, desc="leave-one-out", disable=not progress):
        delta[uid] = measure(removed(model, [uid])) - base
    return {"base": base, "delta": delta}


def pair_dependency(model: nn.Module, pairs: list[tuple[str, str]], measure: Measure) -> list:
    """For each pair: the change from removing a, b, and both. ``dependent`` is true when
    removing both hurts less than the cheaper of the two alone."""
    base = measure(model)
    rows = []
    for a, b in pairs:
        da = measure(removed(model, [a])) - base
        db = measure(removed(model, [b])) - base
        dab = measure(removed(model, [a, b])) - base
        rows.append(
            {
                "a": a,
                "b": b,
                "delta_a": da,
                "delta_b": db,
                "delta_ab": dab,
                "dependent": dab < min(da, db),
            }
        )
    return rows


def plot_leave_one_out(result: dict, path) -> None:
    """Bars of the perplexity change per unit, in unit order (thesis Figure 4.7)."""
    from depthcut.report.curves import _pyplot

    plt = _pyplot()
    units = list(result["delta"])
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(units)), 3.5))
    ax.bar(range(len(units)), [result["delta"][u] for u in units])
    ax.set_xticks(range(len(units)), units, rotation=90, fontsize=6)
    ax.set(
        ylabel="Δ perplexity when removed alone",
        yscale="symlog",
        title=f"leave-one-out (base ppl {result['base']:.2f})",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_pairs(items: tuple[str, ...], known: list[str]) -> list[tuple[str, str]]:
    """``("mlp:2+mlp:3", …)`` → unit id pairs; each side must be a unit of ``--units``."""
    pairs = []
    for item in items:
        sides = tuple(item.split("+"))
        if len(sides) != 2 or any(side not in known for side in sides):
            raise ConfigError(
                f"--pairs {item!r}: give a pair of two units of --units as KIND:BLOCK+KIND:BLOCK "
                f"(e.g. {known[0]}+{known[-1]})"
            )
        pairs.append(sides)
    return pairs
