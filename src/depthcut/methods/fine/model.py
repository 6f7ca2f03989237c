"""Fine-grained units of a whole model: one graph per repeated block (LLMs) or one graph of
the whole network (CNNs), and the per-root states that plans replay.

LLMs: the first block is exported on the arguments the model really passes it (probe forward),
and its graph is reused for every block of the same class and parameter shapes — the thesis'
per-layer search space (Llama: attention, gate, up, down = 4 units per block). CNNs (no
repeated block stack, or ``example`` given): the whole model is one graph.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass

import torch
from torch import nn

from depthcut.errors import UnsupportedModelError
from depthcut.graph.export import record_call
from depthcut.graph.groups import build_graph
from depthcut.graph.nodes import FineGraph
from depthcut.graph.structure import discover_structure, probe_inputs
from depthcut.kinds import Kind
from depthcut.methods.fine.state import FineState, FineUnit, fine_units, param_dims
from depthcut.methods.fine.surgery import materialize, state_params
from depthcut.units.discover import Unit


@dataclass(frozen=True)
class Root:
    """One graph instance: block ``index`` at ``path`` (index -1, path "" for a whole CNN)."""

    index: int
    path: str

    def full(self, rel: str) -> str:
        return f"{self.path}.{rel}" if self.path else rel

    def relative(self, path: str) -> str:
        """The inverse of :meth:`full`: ``path`` relative to this root."""
        return path[len(self.path) + 1 :] if self.path else path


def _signature(module: nn.Module) -> tuple:
    return (type(module).__name__, tuple((n, tuple(p.shape)) for n, p in module.named_parameters()))


def _tensor_sig(value) -> object:
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype))
    if isinstance(value, (tuple, list)):
        return tuple(_tensor_sig(v) for v in value)
    return type(value).__name__


def _graph_key(root: nn.Module, args: tuple, kwargs: dict, config) -> tuple:
    """What an exported graph depends on: the module tree, parameter shapes, the call's
    tensor shapes and the model config (attention implementation, sizes)."""
    tree = tuple((n, type(m).__qualname__) for n, m in root.named_modules())
    params = tuple((n, tuple(p.shape), str(p.dtype)) for n, p in root.named_parameters())
    call = (_tensor_sig(args), tuple((k, _tensor_sig(v)) for k, v in sorted(kwargs.items())))
    facts = config.to_dict() if hasattr(config, "to_dict") else {}
    for where in ("_name_or_path", "transformers_version"):  # not what the graph depends on
        facts.pop(where, None)
    cfg = json.dumps(facts, sort_keys=True, default=str)
    return (type(root).__qualname__, tree, params, call, cfg)


_GRAPHS: dict[tuple, FineGraph] = {}
GRAPH_CACHE_SIZE = 4
graph_builds = 0  # torch.export runs in this process (tests check the graph is built once)


def cached_graph(root: nn.Module, args: tuple, kwargs: dict, config=None) -> FineGraph:
    """``build_graph`` once per (module tree, shapes, call, config): score, plan, apply, the
    report and save-verify of one run share one ``torch.export`` (graphs are read-only)."""
    global graph_builds
    key = _graph_key(root, args, kwargs, config)
    if key not in _GRAPHS:
        graph_builds += 1
        _GRAPHS[key] = build_graph(root, args, kwargs)
        while len(_GRAPHS) > GRAPH_CACHE_SIZE:
            _GRAPHS.pop(next(iter(_GRAPHS)))
    return _GRAPHS[key]


def graph_fingerprint(graph: FineGraph, units: list[FineUnit]) -> dict:
    """A plan's record of the graph it was made on: a hash of every node (kind, op, module,
    shape) in order, the node count and the unit modules (to name a difference)."""
    digest = hashlib.sha256()
    for name in graph.order:
        node = graph.nodes[name]
        digest.update(repr((node.kind, node.op, node.module, node.shape)).encode())
    return {
        "sha256": digest.hexdigest()[:16],
        "nodes": len(graph.order),
        "units": [u.module for u in units],
    }


def check_fingerprint(expected: dict | None, found: dict) -> None:
    """Refuse a fine plan made on another traced graph, naming the first difference."""
    if expected is None or expected["sha256"] == found["sha256"]:
        return
    if expected["units"] != found["units"]:
        pairs = zip(expected["units"], found["units"])
        a, b = next(
            ((x, y) for x, y in pairs if x != y),
            (len(expected["units"]), len(found["units"])),
        )
        what = f"unit {a!r} where this model has {b!r}"
    elif expected["nodes"] != found["nodes"]:
        what = f"{expected['nodes']} graph nodes where this model has {found['nodes']}"
    else:
        what = "the same units and node count but other ops or shapes"
    raise UnsupportedModelError(
        f"fine plan was made on another block graph ({what}; fingerprint "
        f"{expected['sha256']} vs {found['sha256']})"
    )


class FineModel:
    """The graph(s) of ``model`` and its fine-grained units."""

    def __init__(self, model: nn.Module, example: torch.Tensor | None = None):
        self.model = model
        was_training = model.training
        model.eval()
        try:
            if example is None:
                self._init_blocks(model)
            else:
                self.roots = [Root(-1, "")]
                self.graph = cached_graph(model, (example,), {})
        finally:
            model.train(was_training)
        self.example_shape = None if example is None else list(example.shape)

    @classmethod
    def of_blocks(cls, model: nn.Module, structure, graph: FineGraph) -> FineModel:
        """The fine units of ``model``'s block stack (``structure``) sharing ``graph``, the
        graph of its first block exported elsewhere (streaming: blocks on ``meta`` until
        loaded)."""
        fm = cls.__new__(cls)
        fm.model, fm.structure, fm.graph = model, structure, graph
        fm.roots = [Root(b.index, b.path) for b in structure.blocks]
        fm.example_shape = None
        return fm

    def _init_blocks(self, model: nn.Module) -> None:
        structure = discover_structure(model)
        self.structure = structure
        self.roots = [Root(b.index, b.path) for b in structure.blocks]
        first = model.get_submodule(self.roots[0].path)
        sig = _signature(first)
        for root in self.roots[1:]:
            if _signature(model.get_submodule(root.path)) != sig:
                raise UnsupportedModelError(
                    f"{root.path}: blocks differ in class or parameter shapes from "
                    f"{self.roots[0].path}; fine-grained pruning shares one block graph "
                    "(prune a model whose blocks are uniform)"
                )
        inputs = probe_inputs(model)
        args, kwargs = record_call(model, first, lambda: model(**inputs, use_cache=False))
        self.graph = cached_graph(first, args, kwargs, getattr(model, "config", None))

    def fingerprint(self) -> dict:
        return graph_fingerprint(self.graph, self.local_units())

    def module(self, root: Root) -> nn.Module:
        return self.model.get_submodule(root.path) if root.path else self.model

    def local_units(self, include_excluded: bool = False) -> list[FineUnit]:
        return fine_units(self.graph, self.module(self.roots[0]), include_excluded)

    def units(self) -> list[Unit]:
        """Every unit of every root, as depthcut Units (id = full module path)."""
        out = []
        for root in self.roots:
            for u in self.local_units():
                out.append(
                    Unit(
                        Kind.FINE,
                        root.index,
                        root.full(u.module),
                        (root.full(u.module),),
                        u.params,
                        u.op,
                    )
                )
        return out

    def local(self, unit: Unit) -> tuple[Root, FineUnit]:
        return self.local_at(unit.block, unit.path)

    def local_at(self, block: int, path: str) -> tuple[Root, FineUnit]:
        """(root, graph-local unit) of the fine unit at module ``path`` in block ``block``."""
        root = self.root_of(block)
        rel = root.relative(path)
        local = next((u for u in self.local_units() if u.module == rel), None)
        if local is None:
            raise UnsupportedModelError(f"{path}: not a fine-grained unit of this model")
        return root, local

    def root_of(self, index: int) -> Root:
        return next(r for r in self.roots if r.index == index)

    def new_state(self) -> FineState:
        return FineState(self.graph)

    def params(self, root: Root, state: FineState) -> int:
        return state_params(state, self.module(root))

    def try_prune(self, root: Root, state: FineState, node: str, channel=None, labels=None):
        """(new state, labels, params removed) of Prune(node) on a copy of ``state``; raises
        UnitRefused and leaves ``state`` untouched when the unit cannot be pruned."""
        new = state.copy()
        before = self.params(root, new)
        labels = new.prune(node, labels=labels, scores=channel)
        return new, labels, before - self.params(root, new)

    def unprotected(self, units: list[Unit], first: int, last: int) -> list[Unit]:
        """``units`` outside the first/last protected blocks (a whole CNN is never protected)."""
        n = len(self.roots)
        return [u for u in units if n == 1 or first <= u.block < n - last]

    def replay(self, actions: list) -> dict[int, FineState]:
        """The per-root states of fine plan actions, with their recorded channels."""
        states: dict[int, FineState] = {}
        for action in actions:
            root, local = self.local_at(action.block, action.path)
            state = states.setdefault(root.index, self.new_state())
            state.prune(local.node, labels=list(action.channels) if action.channels else None)
        return states

    def pruned_copy(self, root: Root, state: FineState) -> nn.Module:
        """A deep copy of the root module with ``state`` realised (the model is untouched)."""
        return materialize(state, copy.deepcopy(self.module(root)))

    def apply(self, states: dict[int, FineState]) -> nn.Module:
        """Realise the states on the model in place (each root from its current weights)."""
        for root in self.roots:
            state = states.get(root.index)
            if state is not None and state.pruned:
                materialize(state, self.module(root))
        return self.model


def describe_cnn(model: nn.Module, example: torch.Tensor) -> dict:
    """The ``plan.model`` facts of a CNN (no config; the example shape rebuilds its graph)."""
    total = sum(p.numel() for p in model.parameters())
    return {
        "model_type": type(model).__name__,
        "num_blocks": 1,
        "params_all": total,
        "params_non_embedding": total,
        "config": {},
        "example_shape": list(example.shape),
    }


def fine_plan_info(fm: FineModel, info: dict) -> dict:
    """``plan.model`` of a fine plan: the model facts plus the graph's fingerprint."""
    return info | {"fine_graph": fm.fingerprint()}


def apply_fine_actions(
    model: nn.Module, actions: list, example_shape: list | None = None, graph: dict | None = None
):
    """Replay fine actions (Prune(f) with their recorded channels) and realise them;
    ``graph``: the plan's fingerprint, checked against this model's graph first."""
    example = torch.zeros(example_shape) if example_shape else None
    fm = FineModel(model, example)
    check_fingerprint(graph, fm.fingerprint())
    return fm.apply(fm.replay(actions))


def channel_sums(graph: FineGraph, root: nn.Module, value) -> dict[tuple, torch.Tensor]:
    """Per space, per channel label: Σ ``value(p)`` over every parameter slice of that
    channel (producer rows, consumer columns, norm entries); ``value`` may return None."""
    out: dict[tuple, torch.Tensor] = {}
    for node in graph.module_nodes(("transform", "norm")):
        try:
            module = root.get_submodule(node.path)
        except AttributeError:  # inside a patched stand-in
            continue
        for name, p in module.named_parameters(recurse=False):
            t = value(p)
            if t is None:
                continue
            for axis, space in enumerate(param_dims(graph, node, name, p, module)):
                if space is not None:
                    other = [d for d in range(t.dim()) if d != axis]
                    out[space] = out.get(space, 0) + (t.sum(dim=other) if other else t)
    return out


def magnitude_channels(graph: FineGraph, root: nn.Module) -> dict[tuple, torch.Tensor]:
    """Σ w² per channel: data-free reconciliation for hand-made plans."""
    return channel_sums(graph, root, lambda p: p.detach().double() ** 2)
