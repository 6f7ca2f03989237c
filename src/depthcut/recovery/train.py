"""Recovery training on Hugging Face's ``Trainer``: AdamW with a cosine schedule and warmup,
held-out evaluation every ``eval_every`` steps, early stopping and best-state restore,
checkpoints that resume exactly (weights or adapters, optimizer, scheduler, RNG, data
position), data-parallel processes under ``torchrun`` / ``accelerate launch`` (gloo on CPUs,
NCCL on GPUs), gradient checkpointing, bf16 on GPUs. depthcut passes the loss in."""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback

from depthcut.data import CalibData
from depthcut.losses import lm_loss
from depthcut.recovery.config import RecoverConfig, rank

Batch = dict[str, Any]  # input_ids, attention_mask (tensors) and the row index
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def total_steps(cfg: RecoverConfig, n_batches: int) -> int:
    """Optimizer steps: ``max_steps``, or fewer when ``epochs`` passes end first."""
    return max(1, min(cfg.max_steps, math.ceil(cfg.epochs * n_batches)))


def forward_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Logits of a batch of windows (extra keys such as the row index are not passed on)."""
    return model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits


class Windows(Dataset):
    """The rows of a ``CalibData`` as a dataset; each item carries its row index, which the
    stored teacher targets of sparse distillation are looked up by."""

    def __init__(self, data: CalibData) -> None:
        self.ids, self.mask = data.input_ids, data.attention_mask

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, row: int) -> Batch:
        return {"input_ids": self.ids[row], "attention_mask": self.mask[row], "index": row}


def collate(items: list[Batch]) -> Batch:
    """Stack items into a batch."""
    return {key: torch.stack([torch.as_tensor(i[key]) for i in items]) for key in items[0]}


@torch.no_grad()
def heldout_loss(model: nn.Module, data: CalibData) -> float:
    """Token-weighted next-token cross-entropy on held-out batches."""
    from depthcut.devices import device_of

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in data.to(device_of(model)).batches():
        logits = forward_logits(model, batch)
        n = int((batch["attention_mask"][:, :-1] * batch["attention_mask"][:, 1:]).sum())
        total += float(lm_loss(logits, batch["input_ids"], batch["attention_mask"])) * n
        count += n
    model.train(was_training)
    return total / max(1, count)


def train(
    model: nn.Module,
    train_data: CalibData,
    val_data: CalibData,
    cfg: RecoverConfig,
    loss_fn: LossFn,
    progress: bool = True,
    checkpoints: Path | None = None,
    resume: bool = False,
) -> dict:
    """Train the parameters of ``model`` that require grad with ``loss_fn``; the history.

    Checkpoints go to ``checkpoints`` (a temporary folder when None) every ``save_every``
    steps; ``resume`` continues from the last one there. The model ends in the state with the
    lowest held-out loss seen, the start included (``best_step`` 0: the caller keeps its
    input)."""
    import tempfile

    if checkpoints is None:
        with tempfile.TemporaryDirectory(prefix="depthcut-recover-") as tmp:
            return train(model, train_data, val_data, cfg, loss_fn, progress, Path(tmp))
    steps = total_steps(cfg, math.ceil(len(train_data) / train_data.batch_size))
    start = _start_loss(model, val_data, checkpoints, resume)
    with quiet_engine():
        trainer, clock = _trainer(
            model, (train_data, val_data), cfg, loss_fn, progress, steps, checkpoints
        )
        trainer.add_callback(_StartAsBest(start))
        trainer.train(resume_from_checkpoint=_last_checkpoint(checkpoints) if resume else None)
    model.eval()
    return _history(trainer, start, steps, clock, cfg.patience)


@contextmanager
def quiet_engine() -> Iterator[None]:
    """The engine's own output held back for the call (its checkpoint-writing bars, logger
    warnings, deprecation notes peft triggers inside transformers): a library call prints
    nothing. Under ``--verbose`` (transformers at INFO) everything goes through."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    if level <= logging.INFO:
        yield
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _start_loss(model: nn.Module, val_data: CalibData, folder: Path, resume: bool) -> float:
    """The held-out loss before training, computed once and kept beside the checkpoints."""
    path = folder / "start.json"
    if resume and path.exists():
        return json.loads(path.read_text())["val_loss"]
    loss = heldout_loss(model, val_data)  # every process: the same number
    if rank() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"val_loss": loss}) + "\n")
    return loss


def _last_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint in ``folder``; None when a run was killed before its first."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def _trainer(model, data, cfg, loss_fn, progress: bool, steps: int, folder: Path):
    from transformers import EarlyStoppingCallback

    train_data, val_data = data
    clock = _Clock(cfg.max_minutes)
    trainer = _RecoveryTrainer(
        model=model,
        args=training_arguments(cfg, steps, train_data.batch_size, progress, folder),
        train_dataset=Windows(train_data),
        eval_dataset=Windows(val_data),
        data_collator=collate,
        callbacks=[EarlyStoppingCallback(cfg.patience), clock],
        loss_fn=loss_fn,
    )
    _quiet_callbacks(trainer, progress, f"recover ({cfg.method}, {cfg.loss})")
    return trainer, clock


def training_arguments(
    cfg: RecoverConfig, steps: int, batch_size: int, progress: bool, folder: Path
):
    """The ``TrainingArguments`` of a recovery: ``batch_size`` is the global batch, split over
    the processes (so N processes take the same optimizer steps as one)."""
    from transformers import TrainingArguments

    gpu = torch.cuda.is_available()
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    save_every = cfg.save_every or cfg.eval_every
    return TrainingArguments(
        output_dir=str(folder),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=int(cfg.warmup * steps),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.grad_clip if cfg.grad_clip > 0 else 0.0,
        eval_strategy="steps",
        eval_steps=cfg.eval_every,
        save_strategy="steps",
        save_steps=save_every,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=1,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        disable_tqdm=not progress,
        remove_unused_columns=False,
        accelerator_config={"split_batches": True},
        use_cpu=not gpu,
        ddp_backend="gloo" if several and not gpu else None,
        ddp_find_unused_parameters=False,
        bf16=gpu and torch.cuda.is_bf16_supported(),
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        dataloader_num_workers=0,
    )


class _RecoveryTrainer(Trainer):
    """``Trainer`` with depthcut's loss for training and held-out next-token cross-entropy
    for evaluation (whatever the training loss)."""

    def __init__(self, *args, loss_fn: LossFn, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.loss_fn(model, inputs)
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            logits = forward_logits(model, inputs)
            loss = lm_loss(logits, inputs["input_ids"], inputs["attention_mask"])
        return loss.detach(), None, None


class _Clock(TrainerCallback):
    """The time limit (``max_minutes``, resumed runs count the time before the checkpoint),
    and the elapsed seconds written into each log entry. Rank 0 decides, so every process
    stops at the same step."""

    def __init__(self, max_minutes: float | None) -> None:
        self.max_minutes, self.fired = max_minutes, False
        self.began, self.before = time.perf_counter(), 0.0

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.began

    def on_train_begin(self, args, state, control, **kwargs):
        done = [h["seconds"] for h in state.log_history if "seconds" in h]
        self.before, self.began = (done[-1] if done else 0.0), time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        state.log_history[-1]["seconds"] = self.seconds()

    def on_step_end(self, args, state, control, **kwargs):
        late = self.max_minutes is not None and self.seconds() >= 60 * self.max_minutes
        if _agreed(late):
            self.fired = True
            control.should_training_stop = True
            control.should_evaluate = control.should_save = True
        return control


def _agreed(flag: bool) -> bool:
    """Rank 0's ``flag`` on every process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([int(flag)])
    dist.broadcast(value, 0)
    return bool(value.item())


class _StartAsBest(TrainerCallback):
    """The start competes for the best state: an evaluation must beat the held-out loss
    before training to be kept (Trainer's own best metric starts at +inf)."""

    def __init__(self, start: float) -> None:
        self.start = start

    def on_train_begin(self, args, state, control, **kwargs):
        if state.best_metric is None:
            state.best_metric = self.start


class _Bar(TrainerCallback):
    """A progress bar over the optimizer steps with ETA, loss and best held-out loss in its
    postfix (Trainer's own bar writes every log dict on the terminal)."""

    def __init__(self, desc: str) -> None:
        self.desc, self.bar, self.loss = desc, None, float("nan")

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.loss = (logs or {}).get("loss", self.loss)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            self.bar.set_postfix(loss=f"{self.loss:.3f}", best=f"{state.best_metric:.3f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


def _quiet_callbacks(trainer: Trainer, progress: bool, desc: str) -> None:
    """Nothing on stdout: Trainer's printer and log-writing bar out, depthcut's bar in."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(_Bar(desc))


def _history(trainer: Trainer, start: float, steps: int, clock: _Clock, patience: int) -> dict:
    """The history of a training run from Trainer's log: held-out rows, the training loss of
    every step, the kept step and why training stopped."""
    state = trainer.state
    rows: list[dict[str, Any]] = [{"step": 0, "val_loss": start, "seconds": 0.0}]
    train_loss: list[list] = []
    last: dict[str, Any] = {}
    for entry in state.log_history:
        if "loss" in entry:
            train_loss.append([entry["step"], entry["loss"]])
            last = entry
        if "eval_loss" in entry:
            rows.append(
                {
                    "step": entry["step"],
                    "train_loss": last.get("loss"),
                    "val_loss": entry["eval_loss"],
                    "lr": last.get("learning_rate"),
                    "seconds": entry.get("seconds"),
                }
            )
    best_step = state.best_global_step if state.best_model_checkpoint else 0
    best = state.best_metric if state.best_model_checkpoint else start
    return {
        "rows": rows,
        "train_loss": train_loss,
        "best_step": best_step or 0,
        "best_val_loss": best,
        "steps": state.global_step,
        "planned_steps": steps,
        "stopped": _reason(state.global_step, steps, clock, patience),
        "seconds": clock.seconds(),
    }


def _reason(done: int, steps: int, clock: _Clock, patience: int) -> str:
    if clock.fired:
        return f"time budget of {clock.max_minutes} min reached"
    if done < steps:
        return f"early stop: held-out loss did not improve for {patience} evaluations"
    return "steps"
