"""Importance heatmap: unit kinds × blocks, removed units crossed out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from depthcut.kinds import Kind
from depthcut.planning.plan import Plan
from depthcut.scores import Scores


def row_of(kind: Kind, block: int, path: str) -> str:
    """Heatmap row: the unit kind, or for fine-grained units the module inside the block."""
    if kind is not Kind.FINE:
        return str(kind)
    return path.split(f".{block}.", 1)[-1] if block >= 0 else path


def score_grid(scores: Scores) -> tuple[list[str], np.ndarray]:
    """(row labels, [rows, blocks] array with NaN where a unit was not scored)."""
    rows: list[str] = []
    for u in sorted(scores.units, key=lambda u: (u.sort_key()[1], u.path)):
        if row_of(u.kind, u.block, u.path) not in rows:
            rows.append(row_of(u.kind, u.block, u.path))
    grid = np.full((len(rows), max(scores.model["num_blocks"], 1)), np.nan)
    for unit in scores.units:
        value = scores.unit_scores.get(unit.id)
        if value is not None:
            grid[rows.index(row_of(unit.kind, unit.block, unit.path)), max(unit.block, 0)] = value
    return rows, grid


def plot_heatmap(scores: Scores, plan: Plan | None, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds, grid = score_grid(scores)
    fig, ax = plt.subplots(figsize=(max(6, grid.shape[1] * 0.35), 1.2 + 0.6 * len(kinds)))
    from matplotlib.colors import LogNorm

    positive = bool(np.nanmin(grid) > 0) if np.isfinite(grid).any() else False
    norm = LogNorm() if positive else None  # first blocks often dwarf the rest
    image = ax.imshow(grid, aspect="auto", cmap="viridis", norm=norm)
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_xlabel("block")
    ax.set_title(f"{scores.metric} importance (low = pruned first); x = removed")
    fig.colorbar(image, ax=ax, fraction=0.03)
    for action in plan.actions if plan else []:
        label = row_of(action.kind, action.block, action.path)
        whole = action.kind is Kind.BLOCK
        if label not in kinds and not whole:
            continue  # width actions are listed in report.md
        rows = range(len(kinds)) if whole else [kinds.index(label)]
        for row in rows:
            ax.text(action.block, row, "x", ha="center", va="center", color="red", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
