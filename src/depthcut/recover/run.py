"""recover(): fine-tune a pruned model (LoRA or full; LM loss or distillation) on packaged
training text, validated on held-out text, and return an ordinary model."""

from __future__ import annotations

import copy

import torch
from torch import nn

from depthcut.data import CalibData, pack_tokens, recovery_texts, tokenize_until
from depthcut.errors import ConfigError
from depthcut.losses import kd_loss, lm_loss
from depthcut.quantize import refuse_quantized
from depthcut.recover.config import RecoverConfig
from depthcut.recover.lora import add_lora, merge_lora
from depthcut.recover.train import train


def recovery_data(tokenizer, cfg: RecoverConfig) -> tuple[CalibData, CalibData]:
    """(training, held-out) windows of ``seq_len`` tokens from the calibration articles."""
    train_text, val_text = recovery_texts(cfg.source)
    n_train = cfg.max_steps * cfg.batch_size  # enough windows for every step
    train_ids = tokenize_until(tokenizer, train_text, n_train * cfg.seq_len)
    val_ids = tokenize_until(tokenizer, val_text, cfg.val_samples * cfg.seq_len)
    train_data = pack_tokens(train_ids, n_train, cfg.seq_len, cfg.batch_size)
    val_data = pack_tokens(val_ids, cfg.val_samples, cfg.seq_len, cfg.batch_size)
    return train_data, val_data


def make_loss(cfg: RecoverConfig, teacher: nn.Module | None):
    """loss(model, batch): LM cross-entropy, or KL to ``teacher`` (+ ``lm_weight`` × LM)."""
    if cfg.loss == "lm":

        def loss(model, batch):
            logits = model(**batch, use_cache=False).logits
            return lm_loss(logits, batch["input_ids"], batch["attention_mask"])

        return loss
    if teacher is None:
        raise ConfigError("loss='kd' needs the dense teacher model")

    def distill(model, batch):
        with torch.no_grad():
            target = teacher(**batch, use_cache=False).logits
        logits = model(**batch, use_cache=False).logits
        value = kd_loss(logits, target, batch["attention_mask"], cfg.temperature)
        if cfg.lm_weight:
            value = value + cfg.lm_weight * lm_loss(
                logits, batch["input_ids"], batch["attention_mask"]
            )
        return value

    return distill


def recover(
    model: nn.Module,
    tokenizer,
    cfg: RecoverConfig | None = None,
    teacher: nn.Module | None = None,
    progress: bool = True,
    data: tuple[CalibData, CalibData] | None = None,
) -> tuple[nn.Module, dict]:
    """A recovered copy of ``model`` (the input is left as it is) and the training history.

    ``data`` overrides the (training, held-out) windows taken from ``cfg.source``.

    >>> recovered, history = recover(pruned, tok, RecoverConfig("lora"))  # doctest: +SKIP
    """
    refuse_quantized(model, "recover")
    cfg = cfg or RecoverConfig()
    train_data, val_data = data if data is not None else recovery_data(tokenizer, cfg)
    torch.manual_seed(cfg.seed)
    student = copy.deepcopy(model)
    if cfg.method == "lora":
        student = add_lora(student, cfg)
    else:
        student.requires_grad_(True)
    history = train(student, train_data, val_data, cfg, make_loss(cfg, teacher), progress)
    if cfg.method == "lora":
        student = merge_lora(student)
    student.requires_grad_(False)
    history["config"] = cfg.to_dict()
    return student.eval(), history
