"""Typed, validated, versioned configuration of a pruning run (frozen dataclasses)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from depthcut.errors import ConfigError
from depthcut.kinds import DEPTH_KINDS, UNIT_KINDS, WIDTH_KINDS

CONFIG_VERSION = 2
# version 1 had other defaults: a version-1 config that leaves a field out replays with these
V1_DEFAULTS = {"units": ["block"], "importance": "bi", "width_importance": "magnitude"}
V1_DEFAULTS |= {"repair": "none"}
# every string option of the configs: a Literal type for type checkers and IDEs, and its tuple of
# values (derived from it: one list) that ``__post_init__`` validates against, in one place
Strategy = Literal["ranked", "contiguous", "iterative", "interleave", "unified"]
# metric names, checked here so that a config is validated without loading the metric code
# (the registry and the width metrics assert they implement exactly these)
DepthMetric = Literal["angular", "bi", "ce", "gromov", "kl", "ls", "ppl", "random"]
WidthMetric = Literal["magnitude", "taylor", "output_norm", "activation_frequency", "ls"]
FineMetric = Literal["angular", "bi", "taylor", "kl", "ce", "ls"]
Order = Literal["ascending", "descending", "random"]
TokenSet = Literal["all", "last"]
ParamCount = Literal["all", "non_embedding"]
BudgetMode = Literal["at_least", "at_most", "nearest"]
Repair = Literal["auto", "none", "ls", "patch"]
WidthScope = Literal["global", "per_layer"]
UnitName = Literal["block", "attention", "mlp", "head", "neuron", "fine", "auto"]
# quantization: in-process int8 (PyTorch), 4-bit through llm-compressor, GGUF through llama.cpp
Int8Method = Literal["dynamic_int8", "torchao_int8_weight_only"]
Int4Method = Literal["gptq", "awq"]
GGUFType = Literal[
    "f32",
    "f16",
    "q8_0",
    "q4_k_m",
    "q4_k_s",
    "q5_k_m",
    "q6_k",
    # the k-quants with llama.cpp's importance matrix of the calibration text
    "q4_k_m+imatrix",
    "q4_k_s+imatrix",
    "q5_k_m+imatrix",
    "q6_k+imatrix",
]

STRATEGIES: tuple[str, ...] = get_args(Strategy)
DEPTH_METRICS: tuple[str, ...] = get_args(DepthMetric)
WIDTH_METRICS: tuple[str, ...] = get_args(WidthMetric)
FINE_METRICS: tuple[str, ...] = get_args(FineMetric)
ORDERS: tuple[str, ...] = get_args(Order)
TOKEN_SETS: tuple[str, ...] = get_args(TokenSet)
PARAM_COUNTS: tuple[str, ...] = get_args(ParamCount)
BUDGET_MODES: tuple[str, ...] = get_args(BudgetMode)
REPAIRS: tuple[str, ...] = get_args(Repair)
WIDTH_SCOPES: tuple[str, ...] = get_args(WidthScope)
INT8_METHODS: tuple[str, ...] = get_args(Int8Method)
INT4_METHODS: tuple[str, ...] = get_args(Int4Method)
GGUF_TYPES: tuple[str, ...] = get_args(GGUFType)
# the one list of ``depthcut quantize --method`` values (gguf-*: a GGUF file of that type)
QUANTIZE_METHODS = (*INT8_METHODS, *INT4_METHODS, *(f"gguf-{t}" for t in GGUF_TYPES))
DEFAULT_IMPORTANCE = "bi"  # the depth metric when none is named
REPAIRED_ONCE = {"head", "neuron"}  # width kinds that auto repairs (fine plans too)
AUTO: Literal["auto"] = "auto"  # units="auto": the joint search over every unit kind


@dataclass(frozen=True)
class Budget:
    """How much to remove.

    ``params`` is a fraction in (0, 1) of the parameters counted by ``count`` ("all" or
    "non_embedding"), or, when ``params_count`` is given instead, an absolute number of
    parameters to remove, or, when ``latency`` is given instead, the fraction of the decode
    time per token to remove (block / sublayer units, or heads or neurons alone; a per-unit
    latency table is measured on the model's device when scoring); ``kv`` and ``prefill`` are
    fractions of the KV cache and of the prefill time (the joint search only). ``mode`` says on
    which side of the target the removed total may land: ``at_least`` (never under),
    ``at_most`` (never over) or ``nearest`` (closest).

    >>> Budget(params=0.25).fraction
    0.25
    """

    params: float | None = None
    params_count: int | None = None
    count: ParamCount = "all"
    mode: BudgetMode = "at_least"
    latency: float | None = None
    kv: float | None = None  # share of the KV cache to remove (units="auto" only)
    prefill: float | None = None  # share of the prefill time to remove (units="auto" only)

    def __post_init__(self) -> None:
        shares = (self.params, self.params_count, self.latency, self.kv, self.prefill)
        given = [x is not None for x in shares]
        if not any(given) or (self.params_count is not None and sum(given) > 1):
            raise ConfigError(
                "budget: give params (fraction), latency, kv or prefill (several at once for "
                "the joint search), or params_count alone"
            )
        for key in ("latency", "kv", "prefill"):
            value = getattr(self, key)
            if value is not None and not 0.0 < float(value) < 1.0:
                raise ConfigError(f"budget {key}={value} must be a fraction in (0, 1)")
        if self.params is not None and not 0.0 < float(self.params) < 1.0:
            raise ConfigError(f"budget params={self.params} must be a fraction in (0, 1)")
        if self.params_count is not None and int(self.params_count) <= 0:
            raise ConfigError(f"budget params_count={self.params_count} must be positive")
        if self.count not in PARAM_COUNTS:
            raise ConfigError(f"budget count={self.count!r}; choose one of {PARAM_COUNTS}")
        if self.mode not in BUDGET_MODES:
            modes = ", ".join(BUDGET_MODES)
            raise ConfigError(f"budget mode {self.mode!r} unknown; choose one of {modes}")

    @property
    def fraction(self) -> float | None:
        """The parameter fraction to remove, or None for a count, latency or KV budget."""
        return None if self.params is None else float(self.params)

    @property
    def several(self) -> bool:
        """Whether more than one budget is given (a joint search's, ``units="auto"``)."""
        shares = (self.params, self.latency, self.kv, self.prefill)
        return sum(x is not None for x in shares) > 1

    def target(self, total_all: int, total_non_embedding: int) -> int:
        """Number of parameters to remove."""
        if self.latency is not None or self.kv is not None or self.prefill is not None:
            raise ConfigError(
                "--budget latency / kv / prefill has no parameter target: --steps and sweeps "
                "count parameters"
            )
        if self.params_count is not None:
            return int(self.params_count)
        base = total_all if self.count == "all" else total_non_embedding
        return int(round(float(self.params or 0.0) * base))

    @classmethod
    def parse(cls, text: str, mode: BudgetMode = "at_least") -> Budget:
        """Parse CLI text: ``params=0.25``, ``params=0.25:non_embedding`` or ``count=5000000``."""
        key, _, value = text.partition("=")
        value, _, count = value.partition(":")
        try:
            counted = cast(ParamCount, count or "all")  # checked by __post_init__
            if key == "params":
                return cls(params=float(value), count=counted, mode=mode)
            if key == "count":
                return cls(params_count=int(float(value)), count=counted, mode=mode)
            if key == "latency" and not count:
                return cls(latency=float(value), mode=mode)
            if key == "kv" and not count:
                return cls(kv=float(value), mode=mode)
            if key == "prefill" and not count:
                return cls(prefill=float(value), mode=mode)
        except ValueError as err:
            raise ConfigError(f"budget {text!r}: {err}") from None
        raise ConfigError(
            f"budget {text!r}: use params=FRACTION, count=N, latency=FRACTION, kv=FRACTION or "
            "prefill=FRACTION"
        )

    @classmethod
    def parse_all(cls, texts: list[str], mode: BudgetMode = "at_least") -> Budget:
        """Several ``--budget`` flags as one budget (``latency=0.3``, ``kv=0.5``: the joint
        search meets both); a budget given twice is refused."""
        fields: dict[str, Any] = {}
        for text in texts:
            one = dataclasses.asdict(cls.parse(text, mode))
            for key in ("params", "params_count", "latency", "kv", "prefill"):
                if one[key] is None:
                    continue
                name = "params" if key == "params_count" else key
                if name in fields or (name == "params" and "params_count" in fields):
                    raise ConfigError(f"--budget {name} given twice: give each budget once")
                fields[key] = one[key]
            if one["params"] is not None or one["params_count"] is not None:
                fields["count"] = one["count"]
        return cls(**fields, mode=mode)


@dataclass(frozen=True)
class PruneConfig:
    """Everything that decides a pruning run; serialisable with a version.

    The defaults are the recommended method (``benchmarks/bench_quality.py``): MLP neurons
    ranked by what the least-squares refit of their down-projection cannot recover
    (``width_importance="ls"``), as many as the budget asks, then that refit
    (``repair="auto"``). Name other units to prune blocks, sublayers, heads or fine units.

    units: unit kinds to consider (block, attention, mlp, head, neuron; or fine alone; or
        ``auto``: the joint search, one option per block across all of them, ``dc.frontier``);
        omitted: blocks when ``importance`` or ``strategy`` is named, auto under a latency or
        kv budget, the width kinds whose ``heads`` / ``neurons`` fraction is given, else
        neurons (the recommended method).
    importance: depth metric of block / sublayer / fine units (``depthcut.importance``; bi).
    width_importance: metric of head / neuron units.
    strategy: ranked (one shot), contiguous (Gromov span), iterative (greedy re-scoring).
    protect_first/protect_last: blocks never pruned at the ends of the stack.
    tokens: token set of angular metrics ("all" non-padding tokens, or the "last" one).
    repair: none, ls (least-squares refit of kept weights), patch (LinearPatch) or auto: ls
        for head / neuron / fine plans pruned once in memory (where it was measured to help),
        none otherwise; ``resolved()`` says which.

    >>> PruneConfig().resolved().repair
    'ls'
    >>> PruneConfig(units=("block",)).resolved().repair
    'none'
    """

    units: tuple[UnitName, ...] = ()  # empty (or None): see ``default_units``
    importance: DepthMetric | FineMetric | None = None  # None: bi
    budget: Budget = field(default_factory=lambda: Budget(params=0.25))
    strategy: Strategy | None = None  # None: "interleave" for fine units, else "ranked"
    protect_first: int = 1
    protect_last: int = 1
    tokens: TokenSet = "all"
    seed: int = 0
    heads: float = 0.0
    neurons: float = 0.0
    width_importance: WidthMetric = "ls"
    min_heads: int = 1
    round_to: int = 1
    tau: float = 0.01
    width_steps: int = 1
    width_scope: WidthScope = "global"
    order: Order = "ascending"
    repair: Repair = "auto"

    def resolved(self, steps: int = 1, streamed: bool = False) -> PruneConfig:
        """This config with ``repair="auto"`` made concrete: ls for head / neuron / fine plans
        pruned once (``steps`` 1) with the model in memory, none otherwise."""
        if self.repair != "auto":
            return self
        helped = set(self.units) <= REPAIRED_ONCE or self.fine or self.auto
        concrete: Repair = "ls" if helped and steps == 1 and not streamed else "none"
        return dataclasses.replace(self, repair=concrete)

    @property
    def metric(self) -> str:
        """The depth / fine metric: ``importance`` with its default (bi) filled in."""
        return self.importance or DEFAULT_IMPORTANCE

    @property
    def fine(self) -> bool:
        """Fine-grained depth units (thesis Chapter 3): attention regions and single layers."""
        return "fine" in self.units

    @property
    def auto(self) -> bool:
        """The joint search (``depthcut.search``): one option per block across blocks,
        sublayers, KV groups and MLP widths, under measured budgets."""
        return self.units == (AUTO,)

    @property
    def depth_units(self) -> tuple[str, ...]:
        """The depth kinds (block, attention, mlp) among the units."""
        return DEPTH_KINDS if self.auto else tuple(u for u in self.units if u in DEPTH_KINDS)

    @property
    def width_units(self) -> tuple[str, ...]:
        """The width kinds (head, neuron) among the units."""
        return WIDTH_KINDS if self.auto else tuple(u for u in self.units if u in WIDTH_KINDS)

    def width_fraction(self, kind: str) -> float:
        """The fraction of ``kind`` (head or neuron) to remove in each layer (0: follow the
        budget)."""
        return self.heads if kind == "head" else self.neurons

    def default_units(self) -> tuple[UnitName, ...]:
        """The units of a config that names none (the CLI's ``--units`` omitted, too)."""
        if self.importance is not None or self.strategy is not None:
            return ("block",)
        joint = (self.budget.latency, self.budget.kv, self.budget.prefill)
        if any(x is not None for x in joint) or self.budget.several:
            return (AUTO,)  # buying decode time, prefill time or KV cache: the joint search
        fractions: tuple[tuple[UnitName, float], ...] = (
            ("head", self.heads),
            ("neuron", self.neurons),
        )
        return tuple(kind for kind, f in fractions if f) or ("neuron",)

    def __post_init__(self) -> None:
        if not self.units:
            object.__setattr__(self, "units", self.default_units())
        if self.importance is None:
            object.__setattr__(self, "importance", DEFAULT_IMPORTANCE)
        units = (self.units,) if isinstance(self.units, str) else tuple(self.units)
        object.__setattr__(self, "units", units)
        if AUTO in units:
            self._check_auto(units)
            return
        bad = [u for u in units if u not in UNIT_KINDS]
        if bad:
            raise ConfigError(f"units {bad or units} unknown; choose from {UNIT_KINDS} or auto")
        if self.strategy is None:  # the same default in the API and the CLI
            object.__setattr__(self, "strategy", "interleave" if self.fine else "ranked")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy {self.strategy!r} unknown; choose from {STRATEGIES}")
        if self.tokens not in TOKEN_SETS:
            raise ConfigError(f"tokens {self.tokens!r}; choose one of {TOKEN_SETS}")
        if self.protect_first < 0 or self.protect_last < 0:
            raise ConfigError("protect_first/protect_last must be >= 0")
        self._check_width()
        if self.budget.several:
            raise ConfigError(
                "several budgets at once are met by the joint search: use --units auto"
            )
        for key in ("kv", "prefill"):
            if getattr(self.budget, key) is not None:
                raise ConfigError(
                    f"--budget {key}=F is a budget of the joint search: use --units auto"
                )
        if self.budget.latency is not None and (
            self.fine or (self.width_units and not self.width_from_budget)
        ):
            raise ConfigError(
                "--budget latency covers block, attention and mlp units, or heads or neurons "
                "alone (no --heads/--neurons fraction); give fine-grained and mixed units a "
                "params budget"
            )
        if self.repair not in REPAIRS:
            raise ConfigError(f"repair {self.repair!r} unknown; choose one of {REPAIRS}")
        if self.fine:
            self._check_fine()
            return
        if self.strategy in ("interleave", "unified"):
            raise ConfigError(f"strategy {self.strategy!r} is for units='fine'")
        if self.strategy == "contiguous" and self.depth_units not in ((), ("block",)):
            raise ConfigError("strategy 'contiguous' removes block spans: use units=('block',)")
        if self.importance not in DEPTH_METRICS:
            known = ", ".join(DEPTH_METRICS)
            raise ConfigError(f"unknown importance {self.importance!r}; known: {known}")

    def _check_auto(self, units: tuple[UnitName, ...]) -> None:
        if units != (AUTO,):
            raise ConfigError("units 'auto' (the joint search) cannot be mixed with unit kinds")
        if self.repair not in REPAIRS:
            raise ConfigError(f"repair {self.repair!r} unknown; choose one of {REPAIRS}")
        if self.budget.params_count is not None:
            raise ConfigError(
                "units 'auto': give a fraction budget (latency=F, prefill=F, kv=F, params=F)"
            )

    def _check_fine(self) -> None:
        if self.units != ("fine",):
            raise ConfigError("units 'fine' cannot be mixed with other unit kinds")
        if self.importance not in FINE_METRICS:
            raise ConfigError(
                f"fine units: importance {self.importance!r}; use one of {FINE_METRICS}"
            )
        if self.strategy == "contiguous":
            raise ConfigError("fine units: use strategy interleave, unified, ranked or iterative")
        if self.order not in ORDERS:
            raise ConfigError(f"order {self.order!r}; choose one of {ORDERS}")

    @property
    def width_from_budget(self) -> bool:
        """One width kind alone with no fraction given: how many go follows the budget (a
        parameter or a latency target)."""
        return (
            len(self.units) == 1
            and self.units[0] in WIDTH_KINDS
            and self.width_fraction(self.units[0]) == 0.0
            and self.width_steps == 1
        )

    def _check_width(self) -> None:
        for kind in self.width_units:
            if not self.width_from_budget and not 0.0 < self.width_fraction(kind) < 1.0:
                flag = "heads" if kind == "head" else "neurons"
                raise ConfigError(
                    f"units include {kind}: give {flag}=FRACTION in (0, 1) (or prune {kind}s "
                    "alone, to follow the parameter budget)"
                )
        if self.width_importance not in WIDTH_METRICS:
            raise ConfigError(
                f"unknown width importance {self.width_importance!r}; known: "
                + ", ".join(WIDTH_METRICS)
            )
        if self.width_scope not in WIDTH_SCOPES:
            raise ConfigError(f"width_scope {self.width_scope!r}; choose global or per_layer")
        if self.width_steps > 1 and self.depth_units:
            raise ConfigError("width_steps > 1 (iterative width) needs width-only units")
        if self.min_heads < 1 or self.round_to < 1 or self.width_steps < 1:
            raise ConfigError("min_heads, round_to and width_steps must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready data with its version (what recipes and plans record)."""
        data = dataclasses.asdict(self)
        for key in ("kv", "prefill"):  # saved configs stay as they were before these budgets
            if data["budget"][key] is None:
                del data["budget"][key]
        data["units"] = list(self.units)
        data["version"] = CONFIG_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        """The config ``to_dict`` wrote (version 1 replays with its own defaults)."""
        data = dict(data)
        version = data.pop("version", CONFIG_VERSION)
        if version not in (1, CONFIG_VERSION):
            raise ConfigError(f"config version {version} is not supported ({CONFIG_VERSION})")
        if version == 1:
            data = V1_DEFAULTS | data
        data["budget"] = Budget(**data["budget"])
        data["units"] = tuple(data["units"])
        return cls(**data)

    def to_json(self) -> str:
        """The config as indented JSON (``to_dict``)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
