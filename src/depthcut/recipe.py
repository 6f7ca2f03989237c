"""Recipe: the whole run in one file — prune (PruneConfig), ``steps`` rounds with recovery
(RecoverConfig) after each, and quantization last (QuantizeConfig). Every ``depthcut prune``
output carries its ``recipe.json``; ``--recipe`` replays one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depthcut.config import PruneConfig
from depthcut.errors import ConfigError
from depthcut.quantization import QuantizeConfig
from depthcut.recovery.config import RecoverConfig

RECIPE_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """layers/heads/neurons (``prune``) → ``recover`` → ``quantize``, in that order only.

    >>> Recipe(PruneConfig(), steps=3, recover=RecoverConfig("lora")).steps
    3
    """

    prune: PruneConfig
    steps: int = 1
    recover: RecoverConfig | None = None
    quantize: QuantizeConfig | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"recipe steps={self.steps} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON-ready data: every field of every step, with the version."""
        return {
            "version": RECIPE_VERSION,
            "prune": self.prune.to_dict(),
            "steps": self.steps,
            "recover": None if self.recover is None else self.recover.to_dict(),
            "quantize": None if self.quantize is None else self.quantize.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """The recipe ``to_dict`` wrote (old versions replay with their own defaults)."""
        from depthcut.files import check_version

        check_version(data.get("version"), RECIPE_VERSION, "recipe")
        unknown = set(data) - {"version", "prune", "steps", "recover", "quantize"}
        if unknown:
            raise ConfigError(f"recipe has unknown sections {sorted(unknown)}")
        rec = data.get("recover")
        if rec is not None:
            rec = RecoverConfig(**{k: v for k, v in rec.items() if k != "learning_rate"})
        quant = data.get("quantize")
        if quant is not None:
            quant = QuantizeConfig(**(quant | {"skip": tuple(quant.get("skip", ()))}))
        return cls(PruneConfig.from_dict(data["prune"]), int(data.get("steps", 1)), rec, quant)

    def save(self, path: str | Path) -> None:
        """Write the recipe as JSON to ``path``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """The recipe saved at ``path``."""
        from depthcut.files import read_json

        data = read_json(path, "recipe")
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        except (KeyError, TypeError, AttributeError) as err:
            raise ConfigError(f"{path}: not a depthcut recipe ({err})") from None
