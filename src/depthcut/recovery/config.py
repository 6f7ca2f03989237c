"""RecoverConfig: one typed, validated configuration of a recovery run."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Literal, get_args

from depthcut.errors import ConfigError

RecoverMethod = Literal["lora", "full"]
RecoverLoss = Literal["lm", "kd"]
METHODS: tuple[str, ...] = get_args(RecoverMethod)
LOSSES: tuple[str, ...] = get_args(RecoverLoss)
DEFAULT_LR = {"full": 2e-5, "lora": 2e-4}  # lesson: 5e-6–2e-5 for full; LoRA needs ~10× more


def rank() -> int:
    """This process's rank under ``torchrun`` / ``accelerate launch`` (0 alone)."""
    return int(os.environ.get("RANK", "0"))


def refuse_cpu_fsdp() -> None:
    """FSDP asked for (``accelerate launch --use_fsdp`` or its config) on a machine without
    CUDA: accelerate (1.15) turns FSDP on only for accelerator process groups — CPU processes
    would silently train data-parallel with every parameter on every process — so refuse."""
    import torch

    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp and not torch.cuda.is_available():
        raise ConfigError(
            "FSDP needs GPUs: accelerate runs CPU processes data-parallel only (every process "
            "holds the whole model); launch without --use_fsdp / the FSDP config on the CPU"
        )


@dataclass(frozen=True)
class RecoverConfig:
    """How to recover a pruned model.

    ``method``: "lora" (adapters on every Linear in the block stack, merged before saving) or
    "full" (all weights). ``loss``: "lm" (next-token cross-entropy on text) or "kd"
    (KL to the dense teacher's logits at ``temperature``, plus ``lm_weight`` × LM loss).
    Training stops at ``max_steps`` optimizer steps, ``epochs`` passes over the training text,
    ``max_minutes`` of wall time, or when the held-out loss has not improved for ``patience``
    evaluations (every ``eval_every`` steps); the best held-out state is kept. Cosine
    schedule with ``warmup`` (a fraction of the steps) linear warmup. Distillation reads the
    teacher's ``teacher_topk`` most likely tokens and the rest's mass per position, computed
    once and stored (0: the live teacher's full distribution). Checkpoints every
    ``save_every`` steps (default ``eval_every``; a multiple of it), from which a killed run
    resumes.

    >>> RecoverConfig(method="lora").learning_rate
    0.0002
    """

    method: RecoverMethod = "lora"
    loss: RecoverLoss = "lm"
    lr: float | None = None
    max_steps: int = 200
    epochs: float = 3.0
    max_minutes: float | None = None
    batch_size: int = 4
    seq_len: int = 256
    warmup: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 20
    patience: int = 3
    val_samples: int = 16
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    temperature: float = 1.0
    lm_weight: float = 0.0
    source: str = "wiki"
    seed: int = 0
    teacher_topk: int = 64
    save_every: int | None = None
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"recover method {self.method!r}; choose one of {METHODS}")
        if self.loss not in LOSSES:
            raise ConfigError(f"recover loss {self.loss!r}; choose one of {LOSSES}")
        positive = ("max_steps", "batch_size", "eval_every", "patience", "val_samples", "lora_r")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"recover {name}={getattr(self, name)} must be >= 1")
        if self.seq_len < 2 or self.epochs <= 0 or self.temperature <= 0:
            raise ConfigError("recover seq_len >= 2, epochs > 0 and temperature > 0 are needed")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"recover warmup={self.warmup} must be a fraction in [0, 1)")
        if self.teacher_topk < 0:
            raise ConfigError(f"recover teacher_topk={self.teacher_topk} must be >= 0")
        if self.save_every is not None and (
            self.save_every < 1 or self.save_every % self.eval_every
        ):
            raise ConfigError(
                f"recover save_every={self.save_every} must be a multiple of "
                f"eval_every={self.eval_every} (the best state is kept from the checkpoints)"
            )
        if self.teacher_topk and self.loss == "kd" and self.temperature != 1.0:
            raise ConfigError(
                f"recover temperature={self.temperature} with stored top-{self.teacher_topk} "
                "teacher targets (kept at temperature 1); pass teacher_topk=0 for a live teacher"
            )
        if self.lr is not None and not 0.0 < self.lr < 1.0:
            raise ConfigError(f"recover lr={self.lr} must be in (0, 1)")

    @property
    def learning_rate(self) -> float:
        """The peak learning rate: ``lr`` if given, else the method's default."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def to_dict(self) -> dict:
        """The config as JSON-ready data, with the learning rate it resolves to."""
        return asdict(self) | {"learning_rate": self.learning_rate}
