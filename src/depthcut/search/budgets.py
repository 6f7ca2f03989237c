"""Budgets of a joint search: ``latency=F`` (share of the decode time per token to remove),
``prefill=F`` (share of the prefill time of a 512-token prompt), ``kv=F`` (share of the KV
cache), ``params=F`` or ``params=F:non_embedding``; several at once."""

from __future__ import annotations

from dataclasses import dataclass

from depthcut.config import BUDGET_MODES, PARAM_COUNTS, Budget, BudgetMode, ParamCount
from depthcut.errors import ConfigError

KEYS = ("latency", "kv", "params", "prefill")


@dataclass(frozen=True)
class Budgets:
    """Fractions to remove (``None``: no limit) and on which side ``mode`` lets them land."""

    latency: float | None = None
    kv: float | None = None
    params: float | None = None
    count: ParamCount = "all"
    mode: BudgetMode = "at_least"
    prefill: float | None = None

    def __post_init__(self) -> None:
        given = {k: getattr(self, k) for k in KEYS if getattr(self, k) is not None}
        if not given:
            raise ConfigError("give at least one budget: latency=F, prefill=F, kv=F or params=F")
        for key, value in given.items():
            if not 0.0 < float(value) < 1.0:
                raise ConfigError(f"budget {key}={value} must be a fraction in (0, 1)")
        if self.count not in PARAM_COUNTS:
            raise ConfigError(f"budget params=F:{self.count}; use one of {PARAM_COUNTS}")
        if self.mode not in BUDGET_MODES:
            raise ConfigError(f"budget mode {self.mode!r} unknown; choose one of {BUDGET_MODES}")

    def given(self) -> dict[str, float]:
        """The budgets given (``latency``, ``kv``, ``params``, ``prefill``) as {name: fraction}."""
        return {k: float(getattr(self, k)) for k in KEYS if getattr(self, k) is not None}

    @property
    def label(self) -> str:
        """``latency-0.3`` or ``latency-0.3+kv-0.5``: a file name for the plan."""
        return "+".join(f"{k}-{v:g}" for k, v in self.given().items())

    def to_budget(self) -> Budget:
        """Every given budget as one config ``Budget``."""
        return Budget(
            params=self.params,
            count=self.count,
            mode=self.mode,
            latency=self.latency,
            kv=self.kv,
            prefill=self.prefill,
        )

    @classmethod
    def from_budget(cls, budget: Budget) -> Budgets:
        """A config's ``Budget`` (fractions of parameters, decode and prefill time, KV cache)."""
        shares = (budget.fraction, budget.latency, budget.kv, budget.prefill)
        if all(x is None for x in shares):
            raise ConfigError(
                "units 'auto': give a fraction budget (latency=F, prefill=F, kv=F, params=F)"
            )
        return cls(
            budget.latency, budget.kv, budget.fraction, budget.count, budget.mode, budget.prefill
        )

    @classmethod
    def parse(cls, texts: list[str], mode: str = "at_least") -> Budgets:
        """``["latency=0.3", "kv=0.5"]`` → Budgets; unknown keys and repeats are refused."""
        values: dict[str, float | str] = {}
        for text in texts:
            key, sep, value = text.partition("=")
            value, _, count = value.partition(":")
            if not sep or key not in KEYS or (count and key != "params"):
                raise ConfigError(
                    f"budget {text!r}: use latency=F, prefill=F, kv=F or params=F[:non_embedding]"
                )
            if key in values:
                raise ConfigError(f"budget {key} given twice: give each budget once")
            try:
                values[key] = float(value)
            except ValueError:
                raise ConfigError(f"budget {text!r}: {value!r} is not a number") from None
            if count:
                values["count"] = count
        return cls(**values, mode=mode)  # type: ignore[arg-type]
