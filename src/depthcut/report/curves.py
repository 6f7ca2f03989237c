"""Curves of recovery runs: held-out loss per training step, and perplexity per iterative
prune → recover step (pruned vs recovered)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recovery(history: dict, path: str | Path, title: str = "recovery") -> Path:
    """Held-out loss (and training loss) against optimizer steps; the kept step marked."""
    plt = _pyplot()
    rows = history["rows"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["val_loss"] for r in rows], "o-", label="held-out")
    trained = [r for r in rows if "train_loss" in r]
    if trained:
        ax.plot(
            [r["step"] for r in trained],
            [r["train_loss"] for r in trained],
            "x--",
            label="training (last batch)",
        )
    ax.axvline(history["best_step"], color="grey", lw=0.8, ls=":", label="kept")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy (nats)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_iterative(history: list[dict], path: str | Path) -> Path:
    """Perplexity after each pruning slice and after its recovery, against params removed."""
    plt = _pyplot()
    base = history[0]["params_all"]
    removed = [100 * (1 - h["params_all"] / base) for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(removed, [h["ppl_pruned"] for h in history], "o-", label="after pruning")
    rec = [(x, h["ppl_recovered"]) for x, h in zip(removed, history) if h["ppl_recovered"]]
    if rec:
        ax.plot(*zip(*rec), "s-", label="after recovery")
    ax.set(
        xlabel="parameters removed (%)",
        ylabel="perplexity",
        yscale="log",
        title="iterative prune → recover",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _sweep_series(state: dict, key) -> dict[str, list[tuple[float, float]]]:
    """{method: [(params removed %, value)]} with the dense point at 0 in every series."""
    dense = next(p for p in state["points"] if p["method"] == "dense")
    series: dict[str, list[tuple[float, float]]] = {}
    for method in state["config"]["methods"]:
        pts = [p for p in state["points"] if p["method"] == method and key(p) is not None]
        if pts and key(dense) is not None:
            pts = [dense | {"removed_fraction": 0.0}] + pts
        series[method] = sorted((100 * p["removed_fraction"], key(p)) for p in pts)
    return {m: s for m, s in series.items() if s}


def _reader(task: str) -> Callable[[dict], float | None]:
    """The accuracy of ``task`` in a sweep point's results."""
    return lambda point: point.get(task)


def plot_sweep(state: dict, out: str | Path) -> dict[str, int]:
    """Trade-off curves of a sweep: {png name: number of method series drawn}."""
    plots = {
        "sweep_ppl.png": ("perplexity", lambda p: p.get("perplexity"), "log"),
        "sweep_latency.png": (
            "decode speedup at batch 1 (× dense)",
            lambda p: p.get("decode_speedup"),
            "linear",
        ),
    }
    for task in state["config"]["tasks"]:
        plots[f"sweep_{task}.png"] = (f"{task} acc", _reader(task), "linear")
    drawn = {}
    for name, (label, key, scale) in plots.items():
        series = _sweep_series(state, key)
        if series:
            _plot_series(series, label, scale, Path(out) / name)
            drawn[name] = len(series)
    return drawn


def _plot_series(series: dict, label: str, scale: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for method, pts in series.items():
        ax.plot(*zip(*pts), "o-", label=method)
    ax.set(xlabel="parameters removed (%)", ylabel=label, yscale=scale)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_frontier(
    curves: dict[str, list[tuple[float, float]]],
    dense_ppl: float,
    path: str | Path,
    title: str = "perplexity against measured decode speed-up",
) -> Path:
    """One line per method of (measured batch-1 decode speed-up, perplexity) points, the
    dense model at (1, its perplexity); perplexity on a log scale."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        points = sorted(points)
        style = "o-" if name == "joint" else "s--"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=name)
    ax.plot([1.0], [dense_ppl], "k*", markersize=10, label="dense")
    ax.set_yscale("log")
    ax.set(xlabel="decode speed-up (measured, batch 1)", ylabel="perplexity", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
