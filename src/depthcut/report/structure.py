"""The pruned structure per block (thesis Figure 4.3): each unit kept, narrowed, identity,
or patched to 0 / 1 / an empty concat copy."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from depthcut.kinds import Kind
from depthcut.planning.plan import Plan

STATUS = ("kept", "narrowed", "identity", "patched 0", "patched 1", "dropped copy", "removed")
COLORS = ("#2e7d32", "#9ccc65", "#fbc02d", "#c62828", "#6a1b9a", "#1565c0", "#424242")


def plan_structure(plan: Plan, model: nn.Module | None = None) -> dict | None:
    """Per-block status of every unit: fine-grained plans through their graph (LLMs on a
    skeleton built from the config when no model is given; None for a CNN without its
    model), coarse plans as attention / mlp rows."""
    if not any(a.kind is Kind.FINE for a in plan.actions):
        return coarse_structure(plan)
    if model is None:
        if plan.model.get("example_shape") is not None:
            return None
        from depthcut.skeleton import build_from_config

        model = build_from_config(plan.model["config"])
    return fine_structure(model, plan)


def coarse_structure(plan: Plan) -> dict:
    n = plan.model["num_blocks"]
    status = {"attention": ["kept"] * n, "mlp": ["kept"] * n}
    for a in plan.actions:
        rows = ["attention", "mlp"] if a.kind is Kind.BLOCK else [a.kind.sublayer]
        for row in rows:
            if row in status and status[row][a.block] != "removed":
                status[row][a.block] = "narrowed" if a.kind.family == "width" else "removed"
    return {"rows": list(status), "blocks": list(range(n)), "status": list(status.values())}


FILLS = {"zero": "patched 0", "one": "patched 1", "empty": "dropped copy"}


def fine_structure(model: nn.Module, plan: Plan) -> dict:
    """{"rows": unit modules, "blocks": indices, "status": [row][block] labels}."""
    import torch

    from depthcut.methods.fine.model import FineModel
    from depthcut.methods.fine.patch import patches_of

    shape = plan.model.get("example_shape")
    fm = FineModel(model, torch.zeros(shape) if shape else None)
    local = fm.local_units()
    states = fm.replay(plan.actions)
    states = {r.index: states.get(r.index) or fm.new_state() for r in fm.roots}
    patches = {i: patches_of(state) for i, state in states.items()}
    status = [
        [_status(fm, r, states[r.index], u, patches[r.index]) for r in fm.roots] for u in local
    ]
    return {
        "rows": [u.module for u in local],
        "blocks": [r.index for r in fm.roots],
        "status": status,
    }


def _status(fm, root, state, unit, patches) -> str:
    for patch in patches:
        if unit.module == patch.module or unit.module.startswith(patch.module + "."):
            return FILLS[patch.fill]
    if unit.node in state.pruned:
        return "identity"
    from depthcut.methods.fine.surgery import kept_numel

    module = fm.module(root).get_submodule(unit.module)
    full = sum(p.numel() for p in module.parameters())
    kept = kept_numel(state, fm.graph.nodes[unit.node], module)
    return "narrowed" if kept < full else "kept"


def joint_structure(plan: Plan) -> dict | None:
    """A joint plan's chosen option per block (``plan.run["search"]["options"]``) as the kept
    share of each sublayer: {"rows": ["attention", "mlp"], "blocks", "kept": [row][block]
    fractions, "labels": [row][block] ``·`` kept, ``x`` removed, ``2/3`` of its KV groups or
    neurons}; None for other plans."""
    options = plan.run.get("search", {}).get("options")
    if not options:
        return None
    kept: list[list[float]] = [[], []]
    labels: list[list[str]] = [[], []]
    for name in options:
        parts = {"attention": 1.0, "mlp": 1.0}
        marks = {"attention": "·", "mlp": "·"}
        for part in name.split(" + "):
            part = "block" if part.startswith("run of ") else part  # a block of a folded run
            if part in ("block", "attention", "mlp"):
                for row in ("attention", "mlp") if part == "block" else (part,):
                    parts[row], marks[row] = 0.0, "x"
            elif part != "keep":
                row, ratio = part.split(" ")
                num, den = ratio.split("/")
                row = "attention" if row == "kv" else row
                parts[row], marks[row] = int(num) / int(den), ratio
        for r, row in enumerate(("attention", "mlp")):
            kept[r].append(parts[row])
            labels[r].append(marks[row])
    return {
        "rows": ["attention", "mlp"],
        "blocks": list(range(len(options))),
        "kept": kept,
        "labels": labels,
    }


def joint_markdown(data: dict) -> str:
    head = "| sublayer | " + " | ".join(str(b) for b in data["blocks"]) + " |"
    lines = [head, "|---|" + "---|" * len(data["blocks"])]
    for row, values in zip(data["rows"], data["labels"]):
        lines.append(f"| {row} | " + " | ".join(values) + " |")
    legend = "· kept, x removed, a/b: that share of its KV groups (attention) or neurons kept"
    return "\n".join(lines + ["", f"Legend: {legend}."])


def plot_joint(data: dict, path: str | Path, title: str = "chosen option per block") -> Path:
    """The blocks × sublayers picture of a joint plan, shaded by the share kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(data["blocks"])
    fig, ax = plt.subplots(figsize=(max(6, cols * 0.35 + 2), 2.2))
    image = ax.imshow(data["kept"], aspect="auto", cmap="Greens", vmin=0, vmax=1)
    for r, row in enumerate(data["labels"]):
        for b, label in enumerate(row):
            if label != "·":
                color = "white" if data["kept"][r][b] > 0.6 else "black"
                ax.text(b, r, label, ha="center", va="center", fontsize=6, color=color)
    ax.set_yticks(range(len(data["rows"])), data["rows"])
    ax.set_xticks(range(cols), [str(b) for b in data["blocks"]])
    ax.set_xlabel("block")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="share kept", fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def structure_markdown(data: dict) -> str:
    short = {"kept": "·", "narrowed": "n", "identity": "I", "patched 0": "0", "patched 1": "1"}
    short |= {"dropped copy": "∅", "removed": "x"}
    head = "| unit | " + " | ".join(str(b) for b in data["blocks"]) + " |"
    lines = [head, "|---|" + "---|" * len(data["blocks"])]
    for row, values in zip(data["rows"], data["status"]):
        lines.append(f"| {row} | " + " | ".join(short[v] for v in values) + " |")
    legend = ", ".join(f"{v} {k}" for k, v in short.items())
    return "\n".join(lines + ["", f"Legend: {legend}."])


def plot_structure(data: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    grid = [[STATUS.index(v) for v in row] for row in data["status"]]
    cols = len(data["blocks"])
    fig, ax = plt.subplots(figsize=(max(6, cols * 0.35 + 2), 1.4 + 0.45 * len(grid)))
    ax.imshow(grid, aspect="auto", cmap=ListedColormap(COLORS), vmin=0, vmax=len(STATUS) - 1)
    ax.set_yticks(range(len(data["rows"])), data["rows"])
    ax.set_xticks(range(cols), [str(b) for b in data["blocks"]])
    ax.set_xlabel("block")
    ax.set_title("pruned structure (thesis Fig. 4.3)")
    handles = [Patch(color=c, label=s) for s, c in zip(STATUS, COLORS)]
    ax.legend(handles=handles, bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
