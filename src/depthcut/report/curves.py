"""Curves of recovery runs: held-out loss per training step, and perplexity per iterative
prune → recover step (pruned vs recovered)."""

from __future__ import annotations

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
