"""Training and accuracy of small image classifiers on the CPU.

A plain loop, on purpose: the models are tens of thousands of parameters, trained once into the
cache (``fashion.trained_cnn``) or fine-tuned for an epoch after pruning; an engine with
processes, checkpoints and mixed precision (``depthcut.recovery``, for language models) would add
start-up time and nothing these need. Deterministic for a given seed and thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Recipe:
    """AdamW with a one-cycle learning rate over ``epochs`` passes of shuffled batches."""

    epochs: int = 3
    lr: float = 3e-3
    batch: int = 128
    weight_decay: float = 1e-4
    seed: int = 0


def fit(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: Recipe = Recipe(),
    progress: bool = True,
    desc: str = "train",
) -> nn.Module:
    """Train ``model`` in place on (images, labels) by ``recipe``; returns it in eval mode."""
    steps = len(images) // recipe.batch
    if steps == 0:
        raise ValueError(f"{len(images)} images are fewer than one batch of {recipe.batch}")
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=steps * recipe.epochs)
    gen = torch.Generator().manual_seed(recipe.seed)
    bar = tqdm(total=steps * recipe.epochs, desc=desc, disable=not progress, unit="step")
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(images), generator=gen)
        for i in range(steps):
            idx = order[i * recipe.batch : (i + 1) * recipe.batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(images[idx]), labels[idx]).backward()
            opt.step()
            sched.step()
            bar.update()
    bar.close()
    return model.eval()


def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of ``model`` on (images, labels)."""
    correct = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            logits = model(images[start : start + batch])
            correct += int((logits.argmax(1) == labels[start : start + batch]).sum())
    return correct / max(len(images), 1)
