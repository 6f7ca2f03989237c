"""Streamed scoring that survives being killed: after every block the walk's state is written
to a checkpoint file (atomically: a temporary file renamed over the last one), and a run
started with ``resume`` continues from the block after the last one saved.

The state after block i is what the rest of the walk reads: block i + 1's cached inputs (one
hidden state per calibration batch), the scores of the units of blocks 0..i, the width sums
and the forward-equivalent counters. The per-batch block calls (masks, rotary embeddings) are
not saved: the cheap recording forward recomputes them. A checkpoint names the run it belongs
to (model folder, config, calibration tokens); another run's is refused, not used.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from depthcut.config import PruneConfig
from depthcut.data import CalibData
from depthcut.errors import ConfigError


def run_key(folder: Path, cfg: PruneConfig, calib: CalibData) -> str:
    """What a checkpoint must match to be resumed: the model, the config, the tokens."""
    digest = hashlib.sha256()
    digest.update(str(Path(folder).resolve()).encode())
    digest.update(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    digest.update(calib.input_ids.numpy().tobytes() + calib.attention_mask.numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Checkpoint:
    """The file of one run's walk state (``path``) and the run it belongs to (``key``)."""

    path: Path
    key: str

    def save(self, state: dict) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        torch.save(state | {"key": self.key}, tmp)
        os.replace(tmp, self.path)

    def load(self) -> dict | None:
        """The saved state, None when there is none; another run's is refused."""
        if not self.path.exists():
            return None
        state = torch.load(self.path, weights_only=False)
        if state.get("key") != self.key:
            raise ConfigError(
                f"{self.path}: a checkpoint of another run (model, config or calibration "
                "differ); delete it or run without --resume"
            )
        return state

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
