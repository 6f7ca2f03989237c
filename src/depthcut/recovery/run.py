"""recover(): fine-tune a pruned model (LoRA or full; LM loss or distillation) on packaged
training text, validated on held-out text, and return an ordinary model."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from depthcut.data import CalibData, pack_tokens, recovery_texts, tokenize_until
from depthcut.errors import ConfigError
from depthcut.losses import kd_loss, lm_loss, sparse_kd_loss
from depthcut.quantization import refuse_quantized
from depthcut.recovery.config import RecoverConfig, refuse_cpu_fsdp
from depthcut.recovery.lora import add_lora, merge_lora
from depthcut.recovery.targets import TeacherTargets
from depthcut.recovery.train import forward_logits, train


def recovery_data(tokenizer, cfg: RecoverConfig) -> tuple[CalibData, CalibData]:
    """(training, held-out) windows of ``seq_len`` tokens from the calibration articles."""
    train_text, val_text = recovery_texts(cfg.source)
    n_train = cfg.max_steps * cfg.batch_size  # enough windows for every step
    train_ids = tokenize_until(tokenizer, train_text, n_train * cfg.seq_len)
    val_ids = tokenize_until(tokenizer, val_text, cfg.val_samples * cfg.seq_len)
    train_data = pack_tokens(train_ids, n_train, cfg.seq_len, cfg.batch_size)
    val_data = pack_tokens(val_ids, cfg.val_samples, cfg.seq_len, cfg.batch_size)
    return train_data, val_data


def make_loss(cfg: RecoverConfig, teacher: nn.Module | TeacherTargets | None):
    """loss(model, batch): LM cross-entropy, or KL to ``teacher`` (a live model: its full
    distribution; stored targets: their top-k) plus ``lm_weight`` × LM."""
    if cfg.loss == "lm":

        def loss(model, batch):
            logits = forward_logits(model, batch)
            return lm_loss(logits, batch["input_ids"], batch["attention_mask"])

        return loss
    if teacher is None:
        raise ConfigError("loss='kd' needs the dense teacher model or its stored targets")

    def distill(model, batch):
        logits = forward_logits(model, batch)
        mask = batch["attention_mask"]
        if isinstance(teacher, TeacherTargets):
            value = sparse_kd_loss(logits, *teacher.rows(batch["index"], logits.device), mask)
        else:
            with torch.no_grad():
                target = forward_logits(teacher, batch)
            value = kd_loss(logits, target, mask, cfg.temperature)
        if cfg.lm_weight:
            value = value + cfg.lm_weight * lm_loss(logits, batch["input_ids"], mask)
        return value

    return distill


@dataclass(frozen=True)
class Checkpoints:
    """Where a recovery keeps its checkpoints, and whether it continues from them."""

    folder: Path | None
    resume: bool = False


def recover(
    model: nn.Module,
    tokenizer,
    cfg: RecoverConfig | None = None,
    teacher: nn.Module | TeacherTargets | None = None,
    progress: bool = True,
    data: tuple[CalibData, CalibData] | None = None,
    checkpoints: Checkpoints | None = None,
) -> tuple[nn.Module, dict]:
    """A recovered copy of ``model`` (the input is left as it is) and the training history.

    ``teacher``: the dense model (a live teacher; with ``cfg.teacher_topk`` its top-k
    targets are computed first, once) or stored ``TeacherTargets`` of the training windows.
    ``data`` overrides the (training, held-out) windows taken from ``cfg.source``.
    ``checkpoints``: keep them in a folder (and resume from it); by default a temporary one.

    >>> recovered, history = recover(pruned, tok, RecoverConfig("lora"))  # doctest: +SKIP
    """
    refuse_quantized(model, "recover")
    refuse_cpu_fsdp()
    cfg = cfg or RecoverConfig()
    train_data, val_data = data if data is not None else recovery_data(tokenizer, cfg)
    if cfg.loss == "kd" and cfg.teacher_topk and isinstance(teacher, nn.Module):
        teacher = live_targets(teacher, tokenizer, train_data, cfg.teacher_topk, progress)
    loss = make_loss(cfg, teacher if cfg.loss == "kd" else None)
    torch.manual_seed(cfg.seed)
    student = copy.deepcopy(model)
    if cfg.method == "lora":
        student = add_lora(student, cfg)
    else:
        student.requires_grad_(True)
    where = checkpoints or Checkpoints(None)
    history = train(student, train_data, val_data, cfg, loss, progress, where.folder, where.resume)
    if history["best_step"] == 0:  # no evaluation beat the start: keep the input
        student = copy.deepcopy(model)
    elif cfg.method == "lora":
        student = merge_lora(student)
    student.requires_grad_(False)
    history["config"] = cfg.to_dict()
    if isinstance(teacher, TeacherTargets):
        history["teacher_targets"] = {"k": teacher.k, "bytes_per_token": teacher.bytes_per_token()}
    return student.eval(), history


def live_targets(
    teacher: nn.Module, tokenizer, data: CalibData, k: int, progress: bool = True
) -> TeacherTargets:
    """The top-``k`` targets of ``teacher`` on ``data``, computed now (not stored)."""
    from depthcut.recovery.targets import compute_targets, fingerprint

    return compute_targets(teacher, data, k, fingerprint(tokenizer, data, k), progress)
