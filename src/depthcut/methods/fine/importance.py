"""Importance of fine-grained units (thesis §3.3).

* Channel Taylor (Eq. 3.8 summed over a width group): for every space, per channel label,
  Σ (∂E/∂w · w)² over every parameter slice of that channel (producer rows, consumer columns,
  norm entries). It chooses the reconciliation indices R of Prune(f).
* ``taylor`` (Eq. 3.10): I*_f = Σ_{w∈f} (g·w)² + Σ_{j∈R} I_j — no extra forward.
* ``angular`` / ``bi`` (Eq. 3.11): the block output with Prune(f) applied vs the dense block
  output, re-running only that block on its cached input (a pruned block costs its share of
  parameters, so the cost is reported in full-forward equivalents).
* ``kl`` / ``ce`` (ablation): KL of the final next-token distribution, or the increase of
  the next-token cross-entropy, running from the unit's block to the LM head.
* ``ls`` (repair-aware): what Prune(f) leaves after the fine refit (``--repair ls``) of the
  block's kept writers: the writers are refit on the even calibration batches, and the score is
  KL(dense ‖ pruned) of the next-token distribution on the odd (held-back) ones, so a unit the
  refit can make up for ranks as cheap. Where no writer can be refit (every one pruned, or
  behind a post-norm) it is the plain KL, on the same scale. (The block-output error left after
  the refit ranks badly: on SmolLM2-135M at 25% it found removing attention regions cheap —
  the stream's norm hides them — and gave perplexity 6,884 after the refit, vs 56 for the
  angular ranking of Algorithm 8.)
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from depthcut.calibrate import BlockCache
from depthcut.graph.nodes import FineGraph
from depthcut.importance import functional as F
from depthcut.importance.registry import get_importance, register_importance
from depthcut.methods.fine.model import FineModel, Root, channel_sums
from depthcut.methods.fine.refit import block_writers, dense_targets, fit_writer
from depthcut.methods.fine.state import FineState, FineUnit, UnitRefused
from depthcut.refit.ls import split


def taylor_value(p: torch.Tensor) -> torch.Tensor | None:
    """Eq. 3.8 per parameter: (∂E/∂w · w)²."""
    return None if p.grad is None else (p.grad.double() * p.data.double()) ** 2


def channel_taylor(graph: FineGraph, root: nn.Module) -> dict[tuple, torch.Tensor]:
    """{space root: per-label Σ (g·w)²} from the ``.grad`` of ``root``'s parameters."""
    return channel_sums(graph, root, taylor_value)


def own_taylor(root: nn.Module, unit: FineUnit) -> float:
    values = [taylor_value(p) for p in root.get_submodule(unit.module).parameters()]
    return float(sum(v.sum() for v in values if v is not None))


def eq310(state: FineState, unit: FineUnit, labels: list[int], channel, own: float) -> float:
    """Eq. 3.10: the unit's own Taylor plus the channels its reconciliation removed
    (``state`` is the state *before* Prune(unit))."""
    node = state.g.nodes[unit.node]
    a, b = state.in_out(node)
    anchor = a if len(state.alive_of(a)) > len(state.alive_of(b)) else b
    keys = set().union(*(state.closure((anchor, lab)) for lab in labels)) if labels else set()
    return own + state.closure_score(keys, channel)


def block_distance(cache: BlockCache, i: int, pruned: nn.Module, scale: float, metric) -> float:
    """Mean per-token metric between block i's cached output and the pruned block's output."""
    total, count = 0.0, 0
    with cache.swapped(i, pruned, scale):
        for b in range(len(cache.batches)):
            y_removed = cache.run_block(i, b)
            mask = F.token_mask(cache.masks(b), metric.tokens)
            s, n = F.masked_sum(metric.per_token(cache.inputs[i + 1][b], y_removed), mask)
            total, count = total + s, count + n
    return total / max(count, 1)


def final_logits_metric(
    cache: BlockCache, i: int, pruned, scale: float, tokens: str, kind, ref, batches=None
):
    """``kl``: mean KL(dense ‖ pruned) of the next-token distribution; ``ce``: increase of the
    mean next-token cross-entropy (nats), both over the real tokens of ``batches`` (default
    all); ``ref``: the dense logits."""
    total, count = 0.0, 0
    with cache.swapped(i, pruned, scale):
        for b in range(len(cache.batches)) if batches is None else batches:
            batch = cache.batches[b]
            logits = cache.logits(cache.run_from(i, b))
            if kind == "kl":
                values = F.token_kl(F.log_probs(ref[b]), logits)
                mask = F.token_mask(cache.masks(b), tokens)
            else:
                ids = batch["input_ids"]
                values = F.token_nll(logits, ids) - F.token_nll(ref[b], ids)
                mask = F.shifted_targets(ids, batch["attention_mask"])[1]
            s, n = F.masked_sum(values, mask)
            total, count = total + s, count + n
    return total / max(count, 1)


class _FineRule:
    """How a fine metric scores Prune(f) of a unit, for one ``FineScorer``."""

    data_free = False  # True: Eq. 3.10 from weights and gradients, no block re-run
    name: str  # the metric's name (set by ``register_importance``)

    def __init__(self, scorer: FineScorer):
        self.scorer = scorer


@register_importance("taylor", family="fine")
class _TaylorRule(_FineRule):
    data_free = True


class _LocalRule(_FineRule):
    """Block-output distance (Eq. 3.11) with the depth registry's metric of the same name."""

    def __init__(self, scorer: FineScorer):
        super().__init__(scorer)
        self.metric = get_importance(self.name)(tokens=scorer.tokens)

    def distance(self, block: int, pruned: nn.Module, scale: float, state=None) -> float:
        return block_distance(self.scorer.cache, block, pruned, scale, self.metric)


class _LogitRule(_FineRule):
    """KL / CE of the final next-token distribution against the dense model."""

    def distance(self, block: int, pruned: nn.Module, scale: float, state=None) -> float:
        sc = self.scorer
        return final_logits_metric(sc.cache, block, pruned, scale, sc.tokens, self.name, sc.ref())


@register_importance("ls", family="fine")
class _RepairedRule(_FineRule):
    """Next-token KL left after the fine refit of the pruned block's kept writers."""

    RIDGE = 3.0  # the fine refit's usual choice from FINE_RIDGES on SmolLM2-135M

    def __init__(self, scorer: FineScorer):
        super().__init__(scorer)
        self.fit, self.check = split(len(scorer.cache.batches))
        self.targets: dict = {}  # (block, kind): the dense stream after that sublayer

    def _targets(self, writer) -> dict:
        key = (writer.block, writer.kind)
        if key not in self.targets:
            self.targets[key] = dense_targets(self.scorer.cache, writer, self.fit)
        return self.targets[key]

    def distance(self, block: int, pruned: nn.Module, scale: float, state=None) -> float:
        sc = self.scorer
        writers, _ = block_writers(sc.fm, sc.cache, block, state)
        targets = [self._targets(w) for w in writers]
        with sc.cache.swapped(block, pruned, scale):
            for writer, target in zip(writers, targets, strict=True):
                fit_writer(sc.cache, writer, pruned, target, self.fit, self.RIDGE)
        ref = sc.ref()
        return final_logits_metric(sc.cache, block, pruned, scale, sc.tokens, "kl", ref, self.check)


for _name in ("angular", "bi"):
    register_importance(_name, family="fine")(type(f"_{_name}_rule", (_LocalRule,), {}))
for _name in ("kl", "ce"):
    register_importance(_name, family="fine")(type(f"_{_name}_rule", (_LogitRule,), {}))


class FineScorer:
    """Scores the units of every block of an LLM on a gradient-carrying block cache."""

    def __init__(self, fm: FineModel, cache: BlockCache, metric: str, tokens: str = "all"):
        self.fm, self.cache, self.metric, self.tokens = fm, cache, metric, tokens
        self.rule = get_importance(metric, family="fine")(self)
        self.channel = {r.index: channel_taylor(fm.graph, fm.module(r)) for r in fm.roots}
        self.base = {r.index: fm.params(r, fm.new_state()) for r in fm.roots}
        self._ref: list[torch.Tensor] | None = None

    def ref(self) -> list[torch.Tensor]:
        """The dense model's logits per calibration batch (computed once)."""
        if self._ref is None:
            self._ref = [self.cache.logits(h) for h in self.cache.inputs[-1]]
        return self._ref

    def score(self, root: Root, unit: FineUnit, state: FineState | None = None):
        """(score, params removed, labels) of Prune(unit) on top of ``state`` (not changed)."""
        prior = state or self.fm.new_state()
        state, labels, removed = self.fm.try_prune(root, prior, unit.node, self.channel[root.index])
        if self.rule.data_free:
            own = own_taylor(self.fm.module(root), unit)
            return eq310(prior, unit, labels, self.channel[root.index], own), removed, labels
        return self.distance(root, state), removed, labels

    def distance(self, root: Root, state: FineState) -> float:
        """Block-local (or final-logit) distance of ``state`` realised on block ``root``
        from the dense model; 0 for an unpruned state or the data-free Taylor metric."""
        if not state.pruned or self.rule.data_free:
            return 0.0
        pruned = self.fm.pruned_copy(root, state)
        scale = sum(p.numel() for p in pruned.parameters()) / max(self.base[root.index], 1)
        return self.rule.distance(root.index, pruned, scale, state)

    def score_all(self, progress: bool = True) -> tuple[dict, dict, dict]:
        """{unit id: score}, {unit id: params removed alone}, {unit id: refusal reason}."""
        scores, alone, refused = {}, {}, {}
        units = self.fm.units()
        for unit in tqdm(units, desc=f"score fine {self.metric}", disable=not progress):
            root, local = self.fm.local(unit)
            try:
                scores[unit.id], alone[unit.id], _ = self.score(root, local)
            except UnitRefused as err:
                refused[unit.id] = str(err)
        return scores, alone, refused

    def channel_json(self) -> dict:
        return {
            str(i): {f"{r[0]}:{r[1]}": v.tolist() for r, v in ch.items()}
            for i, ch in self.channel.items()
        }


def channel_from_json(data: dict, graph: FineGraph) -> dict[int, dict[tuple, torch.Tensor]]:
    out: dict[int, dict[tuple, torch.Tensor]] = {}
    for i, spaces in data.items():
        out[int(i)] = {}
        for key, values in spaces.items():
            value, _, dim = key.rpartition(":")
            out[int(i)][graph.spaces.find((value, int(dim)))] = torch.tensor(
                values, dtype=torch.float64
            )
    return out


def iterative_fine(scorer: FineScorer, cfg, target: int, progress: bool = True) -> list[dict]:
    """Greedy selection with cheap re-scoring (beyond the thesis, which could not afford it).

    Units are ranked by importance per removed parameter. After each cut in block T, only the
    remaining units of block T are re-scored — as the *marginal* change of block T's output
    distance given the units already cut there — on T's cached input (≤ 4 block runs per cut,
    where a full re-score would re-run the whole model per unit).
    """
    fm = scorer.fm
    pool = fm.unprotected(fm.units(), cfg.protect_first, cfg.protect_last)
    current: dict[str, tuple[float, int]] = {}
    for unit in tqdm(pool, desc="score fine (iterative)", disable=not progress):
        try:
            value, removed, _ = scorer.score(*fm.local(unit))
            current[unit.id] = (value, removed)
        except UnitRefused:
            continue
    by_id = {u.id: u for u in pool}
    states: dict[int, FineState] = {}
    sequence, total = [], 0
    bar = tqdm(total=target, desc="iterative fine", disable=not progress, unit="param")
    while total < target and current:
        uid = min(current, key=lambda k: (current[k][0] / max(current[k][1], 1), k))
        value, _ = current.pop(uid)
        root, local = fm.local(by_id[uid])
        state = states.get(root.index) or fm.new_state()
        try:
            state, labels, delta = fm.try_prune(root, state, local.node, scorer.channel[root.index])
        except UnitRefused:
            continue
        states[root.index] = state
        total += delta
        bar.update(delta)
        sequence.append({"unit": uid, "score": value, "params": delta, "labels": labels})
        _rescore_block(scorer, root, state, current, by_id)
    bar.close()
    return sequence


def _rescore_block(scorer, root: Root, state: FineState, current: dict, by_id: dict) -> None:
    base = scorer.distance(root, state)
    for uid in [k for k in current if by_id[k].block == root.index]:
        _, local = scorer.fm.local(by_id[uid])
        try:
            value, removed, _ = scorer.score(root, local, state)
            current[uid] = (value - base, removed)
        except UnitRefused:
            current.pop(uid)
