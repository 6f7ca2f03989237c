"""The training loop of recovery: AdamW, cosine schedule with warmup, held-out evaluation,
early stopping and best-state restore, a progress bar with ETA. The loss is passed in."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from depthcut.data import CalibData
from depthcut.devices import device_of
from depthcut.losses import cosine_with_warmup, lm_loss
from depthcut.recover.config import RecoverConfig

Batch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def total_steps(cfg: RecoverConfig, n_batches: int) -> int:
    return max(1, min(cfg.max_steps, math.ceil(cfg.epochs * n_batches)))


def _batches(data: CalibData, seed: int) -> Iterator[Batch]:
    """Shuffled batches, epoch after epoch (a new order each epoch, fixed by ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(data), generator=gen)
        for start in range(0, len(data), data.batch_size):
            rows = order[start : start + data.batch_size]
            yield {"input_ids": data.input_ids[rows], "attention_mask": data.attention_mask[rows]}


@torch.no_grad()
def heldout_loss(model: nn.Module, data: CalibData) -> float:
    """Token-weighted next-token cross-entropy on held-out batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in data.to(device_of(model)).batches():
        logits = model(**batch, use_cache=False).logits
        n = int((batch["attention_mask"][:, :-1] * batch["attention_mask"][:, 1:]).sum())
        total += float(lm_loss(logits, batch["input_ids"], batch["attention_mask"])) * n
        count += n
    model.train(was_training)
    return total / max(1, count)


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in _trainable(model).items()}


def train(
    model: nn.Module,
    train_data: CalibData,
    val_data: CalibData,
    cfg: RecoverConfig,
    loss_fn: LossFn,
    progress: bool = True,
) -> dict:
    """Train the parameters of ``model`` that require grad; returns the history.

    The model ends in the state with the lowest held-out loss seen (the start included)."""
    params = list(_trainable(model).values())
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps = total_steps(cfg, math.ceil(len(train_data) / train_data.batch_size))
    warmup = int(cfg.warmup * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, steps, warmup))
    state = _State(heldout_loss(model, val_data), _snapshot(model), time.perf_counter())
    rows = [{"step": 0, "val_loss": state.best, "seconds": 0.0}]
    batches = _batches(train_data.to(device_of(model)), cfg.seed)
    model.train()
    bar = tqdm(range(steps), desc=f"recover ({cfg.method}, {cfg.loss})", disable=not progress)
    for step in bar:
        loss = _step(model, next(batches), loss_fn, opt, sched, params, cfg.grad_clip)
        bar.set_postfix(loss=f"{loss:.3f}", best=f"{state.best:.3f}")
        late = state.out_of_time(cfg)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == steps or late:
            rows.append(state.evaluate(model, val_data, step + 1, loss, sched))
        reason = state.stop_reason(cfg, late)
        if reason:
            break
    model.eval()
    state.restore(model)
    return {
        "rows": rows,
        "best_step": state.best_step,
        "best_val_loss": state.best,
        "steps": step + 1,
        "planned_steps": steps,
        "stopped": reason or "steps",
        "seconds": time.perf_counter() - state.started,
    }


def _step(model, batch, loss_fn, opt, sched, params, clip: float) -> float:
    loss = loss_fn(model, batch)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach().item()


class _State:
    """Best held-out loss so far, its weights, and the early-stopping count."""

    def __init__(self, best: float, weights: dict, started: float) -> None:
        self.best, self.weights, self.started = best, weights, started
        self.best_step, self.bad = 0, 0

    def evaluate(self, model, val_data, step: int, train_loss: float, sched) -> dict:
        val = heldout_loss(model, val_data)
        if val < self.best:
            self.best, self.best_step, self.bad = val, step, 0
            self.weights = _snapshot(model)
        else:
            self.bad += 1
        seconds = time.perf_counter() - self.started
        lr = sched.get_last_lr()[0]
        return {
            "step": step,
            "train_loss": train_loss,
            "val_loss": val,
            "lr": lr,
            "seconds": seconds,
        }

    def out_of_time(self, cfg: RecoverConfig) -> bool:
        minutes = (time.perf_counter() - self.started) / 60
        return cfg.max_minutes is not None and minutes >= cfg.max_minutes

    def stop_reason(self, cfg: RecoverConfig, late: bool) -> str | None:
        if self.bad >= cfg.patience:
            return f"early stop: held-out loss did not improve for {cfg.patience} evaluations"
        return f"time budget of {cfg.max_minutes} min reached" if late else None

    def restore(self, model: nn.Module) -> None:
        with torch.no_grad():
            for name, p in _trainable(model).items():
                p.copy_(self.weights[name])
