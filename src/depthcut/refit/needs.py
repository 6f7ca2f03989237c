"""How much calibration text a run's ``--repair ls`` needs, known before any scoring.

Every least-squares fit solves for the kept inputs of one linear layer per output: a width
refit for the kept input channels of the consumer (attention output / MLP down-projection),
a depth fold for a hidden × hidden map after the run's last writer, a fine-grained refit for
the writer's kept inputs. Half of the calibration batches fit (``refit.ls.split``), so the
fitting tokens must reach the widest layer's unknowns. A model's widest consumer is read from
its structure (no forward), so a run that would fail after scoring fails first instead, and
``auto_samples`` sizes the default calibration so the default command works on any model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from depthcut.config import PruneConfig
from depthcut.data import CalibData
from depthcut.errors import ConfigError
from depthcut.graph.structure import ModelStructure
from depthcut.kinds import Kind
from depthcut.ops import in_features, out_features
from depthcut.refit.ls import split, writes_through_one_linear

FLOOR_SAMPLES = 16  # the calibration size every metric was tuned with: auto never goes below


@dataclass(frozen=True)
class Need:
    """The widest fit of a run: ``unknowns`` per output, in ``layer``."""

    unknowns: int
    layer: str = ""


def repair_need(model: nn.Module, structure: ModelStructure, cfg: PruneConfig) -> Need:
    """The widest least-squares fit ``cfg``'s repair can make on ``model`` (an upper bound:
    a plan keeps at most every input). No fit (``repair`` none or patch): ``Need(0)``."""
    if cfg.repair != "ls":
        return Need(0)
    width = {str(Kind(k).sublayer) for k in cfg.width_units}
    found = [Need(0)]
    for block in structure.blocks:
        for kind in ("attention", "mlp"):
            sub = block.sublayer(kind)
            if sub is None or sub.output is None:
                continue
            layer = model.get_submodule(sub.output)
            if cfg.fine or kind in width:
                found.append(Need(in_features(layer), sub.output))
            if cfg.depth_units and writes_through_one_linear(sub):
                found.append(Need(out_features(layer), sub.output))
    return max(found, key=lambda n: n.unknowns)


def fit_tokens(n_samples: int, seq_len: int, batch_size: int) -> int:
    """Fitting tokens of ``n_samples`` packed windows (every token real): the even batches."""
    batches = math.ceil(n_samples / batch_size)
    fit, _ = split(batches)
    return sum(min(batch_size, n_samples - b * batch_size) for b in fit) * seq_len


def auto_samples(need: Need, seq_len: int, batch_size: int) -> int:
    """The fewest windows (at least ``FLOOR_SAMPLES``) whose fitting half covers ``need``."""
    n = FLOOR_SAMPLES
    while fit_tokens(n, seq_len, batch_size) < need.unknowns:
        n += batch_size
    return n


def check_samples(need: Need, n_samples: int, seq_len: int, batch_size: int) -> None:
    """Refuse a calibration size whose fitting half cannot determine ``need``, naming the
    smallest ``--n-samples`` that would."""
    tokens = fit_tokens(n_samples, seq_len, batch_size)
    if tokens < need.unknowns:
        _refuse(need, tokens, auto_samples(need, seq_len, batch_size), seq_len)


def check_calibration(need: Need, calib: CalibData) -> None:
    """The same check on calibration data already built (real tokens of the even batches)."""
    batches = calib.batches()
    tokens = sum(int(batches[b]["attention_mask"].sum()) for b in split(len(batches))[0])
    if tokens < need.unknowns:
        seq_len = calib.input_ids.shape[1]
        _refuse(need, tokens, auto_samples(need, seq_len, calib.batch_size), seq_len)


def _refuse(need: Need, tokens: int, fix: int, seq_len: int) -> None:
    raise ConfigError(
        f"--repair ls: {tokens} fitting tokens (half the calibration batches fit, half check) "
        f"for {need.unknowns} unknowns per output in {need.layer}: give --n-samples {fix} or "
        f"more at --seq-len {seq_len} (or leave --n-samples out: it is then sized for the "
        "repair), or --repair none"
    )
