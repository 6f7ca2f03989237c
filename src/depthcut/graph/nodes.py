"""The thesis graph G of an exported module: typed nodes, channel spaces and their links.

ATen nodes are collapsed to one node per call of a *transformation* (Linear, ConvNd, GPT-2
``Conv1D``), *norm*, *activation* module or *attention* region (the innermost module that runs
scaled-dot-product attention / softmax, with its projections inside). The remaining free ops
are typed: ``arith`` (add/sub/mul/div of two tensors), ``act``/``pass`` (element-wise on one
tensor), ``concat``, ``pool``, ``reshape``, ``slice``, ``reduce``. Ops outside these sets are
refused with their name and module.

Widths are tracked as *spaces*: union-find classes of (value, dim) pairs that must keep the
same size and index order (element-wise ops, norms, residual adds, broadcasting). A concat
links each input's space into a segment of its output space. Spaces touched by graph inputs
or outputs, slicing, reductions or attention regions are *frozen* (never width-pruned), with
the reason kept for error messages.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from depthcut.errors import UnsupportedModelError
from depthcut.graph.structure import is_norm
from depthcut.ops import ATTENTION_OPS, is_transform

TRANSPARENT = {"to", "_to_copy", "clone", "contiguous", "alias", "detach", "dropout"}
TRANSPARENT |= {"lift_fresh_copy", "type_as", "feature_dropout", "native_dropout"}
SILENT = {"_assert_tensor_metadata", "_assert_scalar", "sym_size", "sym_constrain_range_for_size"}
ACT_OPS = {"relu", "silu", "gelu", "sigmoid", "tanh", "hardswish", "hardtanh", "leaky_relu"}
ACT_OPS |= {"elu", "mish", "hardsigmoid", "relu6", "softplus"}
UNARY_OPS = {"neg", "exp", "pow", "rsqrt", "sqrt", "abs", "clamp", "reciprocal", "log", "erf"}
ARITH_OPS = {"add", "sub", "mul", "div"}
POOL_OPS = {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "max_pool1d", "avg_pool1d"}
POOL_OPS |= {"upsample_nearest2d", "upsample_bilinear2d", "max_pool2d_with_indices"}
POOL_OPS |= {"constant_pad_nd", "pad", "_adaptive_avg_pool2d"}
RESHAPE_OPS = {"view", "reshape", "flatten", "unsqueeze", "squeeze", "_unsafe_view"}
PERMUTE_OPS = {"permute", "transpose", "t"}
SLICE_OPS = {"slice", "split", "split_with_sizes", "chunk", "narrow", "select", "index"}
SLICE_OPS |= {"unbind", "getitem"}
REDUCE_OPS = {"mean", "sum", "amax", "max", "min", "std", "var", "softmax", "_softmax"}
CONCAT_OPS = {"cat", "concat", "concatenate"}
ELEMENTWISE = ACT_OPS | UNARY_OPS | ARITH_OPS | TRANSPARENT | SILENT


@dataclass
class FNode:
    """One node of G. ``inputs`` are value names (main input first for module nodes)."""

    name: str
    kind: str  # input, transform, attention, norm, act, arith, pass, concat, pool, ...
    op: str
    module: str | None
    inputs: list[str]
    shape: tuple[int, ...] | None
    stack: tuple[str, ...] = ()  # module paths the value was produced inside, outer → inner
    extra: dict = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The module path of a module node (an error for a function node, which has none)."""
        if self.module is None:
            raise ValueError(f"graph node {self.name} ({self.op}) is not a module call")
        return self.module

    @property
    def dims(self) -> tuple[int, ...]:
        """The traced output shape (an error where none was traced)."""
        if self.shape is None:
            raise ValueError(f"graph node {self.name} ({self.op}) has no traced shape")
        return self.shape


@dataclass
class Link:
    """Concat: labels [offset, offset + size) of space ``out`` are the labels of ``src``."""

    out: tuple
    offset: int
    src: tuple
    size: int


class _Spaces:
    """Union-find over (value, dim) pairs."""

    def __init__(self) -> None:
        self.parent: dict[tuple, tuple] = {}

    def find(self, key: tuple) -> tuple:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: tuple, b: tuple) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def op_name(node: torch.fx.Node) -> str:
    if node.target is operator.getitem:
        return "getitem"
    text = str(getattr(node.target, "__name__", node.target))
    parts = text.split(".")
    return parts[1] if text.startswith("aten.") and len(parts) > 1 else parts[0]


def node_shape(node) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape)
    return None


def module_stack(node: torch.fx.Node) -> tuple[str, ...]:
    stack = node.meta.get("nn_module_stack") or {}
    return tuple(path for path, _cls in stack.values() if path)


def tensor_args(node: torch.fx.Node) -> list[torch.fx.Node]:
    out = []
    for arg in node.args:
        items = arg if isinstance(arg, (list, tuple)) else [arg]
        out += [a for a in items if isinstance(a, torch.fx.Node) and node_shape(a) is not None]
    return out


@dataclass
class FineGraph:
    """G for one root module. Module paths are relative to the root."""

    nodes: dict[str, FNode]
    order: list[str]
    spaces: _Spaces
    sizes: dict[tuple, int]
    links: list[Link]
    frozen: dict[tuple, str]
    arity: dict[str, int | None]
    outputs: list[str]

    def space(self, value: str, dim: int) -> tuple:
        ndim = len(self.nodes[value].dims)
        return self.spaces.find((value, dim % ndim))

    @cached_property
    def _users(self) -> dict[str, list[FNode]]:
        users: dict[str, list[FNode]] = {}
        for name in self.order:
            node = self.nodes[name]
            for value in dict.fromkeys(node.inputs):  # once per consumer, in graph order
                users.setdefault(value, []).append(node)
        return users

    def consumers(self, value: str) -> list[FNode]:
        return list(self._users.get(value, ()))

    def module_nodes(self, kinds: tuple[str, ...]) -> list[FNode]:
        return [self.nodes[n] for n in self.order if self.nodes[n].kind in kinds]

    def by_module(self, path: str) -> FNode:
        return next(n for n in self.nodes.values() if n.module == path)


def collapsible(root: nn.Module, ep: torch.export.ExportedProgram) -> dict[str, str]:
    """{module path: kind} for the module calls G shows as single nodes."""
    modules = dict(root.named_modules())
    kinds: dict[str, str] = {}
    for node in ep.graph.nodes:
        stack = module_stack(node)
        if node.op == "call_function" and op_name(node) in ATTENTION_OPS and stack:
            kinds[stack[-1]] = "attention"
    for path, module in modules.items():
        if not path or any(path.startswith(a + ".") or path == a for a in kinds):
            continue
        if is_transform(module) or isinstance(module, nn.modules.conv._ConvNd):
            kinds[path] = "transform"
        elif is_norm(module) and not list(module.children()):
            kinds[path] = "norm"
        elif not list(module.parameters()) and not list(module.children()):
            kinds[path] = "act?"  # confirmed by its ops below
    return kinds


class _Builder:
    """Turns an ExportedProgram into FNodes (collapsing module calls, resolving aliases)."""

    def __init__(self, root: nn.Module, ep: torch.export.ExportedProgram):
        self.root, self.ep = root, ep
        sig = ep.graph_signature
        self.weights = set(sig.inputs_to_parameters) | set(sig.inputs_to_buffers)
        self.weights |= set(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})
        self.fx = [n for n in ep.graph.nodes]
        self.kinds = collapsible(root, ep)
        self.alias: dict[str, str] = {}
        self.owner: dict[str, str] = {}
        self.nodes: dict[str, FNode] = {}
        self.order: list[str] = []

    def res(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def _is_alias(self, node: torch.fx.Node) -> bool:
        name = op_name(node)
        if name in TRANSPARENT:
            return True
        if name == "getitem" and isinstance(node.args[0], torch.fx.Node):
            return bool(op_name(node.args[0]) == "max_pool2d_with_indices" and node.args[1] == 0)
        return False

    def _confirm_acts(self) -> None:
        ops: dict[str, set[str]] = {}
        for node in self.fx:
            stack = module_stack(node)
            if node.op == "call_function" and stack and self.kinds.get(stack[-1]) == "act?":
                ops.setdefault(stack[-1], set()).add(op_name(node))
        for path, kind in list(self.kinds.items()):
            if kind != "act?":
                continue
            names = ops.get(path, set()) - TRANSPARENT - SILENT
            if names and names <= ELEMENTWISE and names & (ACT_OPS | UNARY_OPS):
                self.kinds[path] = "act"
            else:
                del self.kinds[path]

    def _assign(self) -> None:
        for node in self.fx:
            if node.op != "call_function" or op_name(node) in SILENT:
                continue
            if self._is_alias(node):
                self.alias[node.name] = tensor_args(node)[0].name
                continue
            path = next((p for p in module_stack(node) if p in self.kinds), None)
            if path is not None:
                self.owner[node.name] = path

    def _uses(self) -> dict[str, list[str]]:
        uses: dict[str, list[str]] = {}
        for node in self.fx:
            if node.op == "output":
                args = [a for a in torch.utils._pytree.tree_leaves(node.args)]
                args = [a for a in args if isinstance(a, torch.fx.Node)]
            elif node.op == "call_function" and node.name not in self.alias:
                if op_name(node) in SILENT:
                    continue
                args = tensor_args(node)
            else:
                continue
            user = self.owner.get(node.name, node.name)
            for arg in args:
                uses.setdefault(self.res(arg.name), []).append(user)
        return uses

    def build(self) -> tuple[dict[str, FNode], list[str], list[str]]:
        self._confirm_acts()
        self._assign()
        uses = self._uses()
        made: set[str] = set()
        for node in self.fx:
            if node.op == "placeholder" and node.name not in self.weights:
                if node_shape(node) is not None:
                    self._add(FNode(node.name, "input", "input", None, [], node_shape(node)))
            elif node.op == "call_function" and node.name in self.owner:
                path = self.owner[node.name]
                if path not in made and self._escapes(node, path, uses):
                    made.add(path)
                    self._add(self._module_node(node, path))
            elif self._is_free(node):
                self._add(self._free_node(node))
        out = next(n for n in self.fx if n.op == "output")
        leaves = [
            a for a in torch.utils._pytree.tree_leaves(out.args) if isinstance(a, torch.fx.Node)
        ]
        outputs = [self.res(a.name) for a in leaves if node_shape(a) is not None]
        return self.nodes, self.order, outputs

    def _is_free(self, node: torch.fx.Node) -> bool:
        return (
            node.op == "call_function"
            and node.name not in self.alias
            and op_name(node) not in SILENT
        )

    def _add(self, node: FNode) -> None:
        self.nodes[node.name] = node
        self.order.append(node.name)

    def _escapes(self, node, path: str, uses: dict[str, list[str]]) -> bool:
        return any(user != path for user in uses.get(node.name, []))

    def _owned(self, path: str) -> list[torch.fx.Node]:
        return [n for n in self.fx if self.owner.get(n.name) == path]

    def _module_node(self, out: torch.fx.Node, path: str) -> FNode:
        owned = self._owned(path)
        self._check_single_call(path, owned)
        names = {n.name for n in owned}
        external: list[str] = []
        for n in owned:
            for arg in tensor_args(n):
                r = self.res(arg.name)
                outside = r not in names and arg.name not in self.weights and r not in self.weights
                if outside and r not in external and r in self.nodes:
                    external.append(r)
        escaping = [n.name for n in owned if n.name != out.name and self._escape_any(n, path)]
        if escaping:
            raise UnsupportedModelError(
                f"{path or '<root>'}: more than one tensor leaves this module call "
                f"({[out.name, *escaping]}); the fine-grained engine needs one output per call"
            )
        kind = self.kinds[path]
        main = self._main_input(kind, external, out)
        inputs = [main, *[e for e in external if e != main]] if main else external
        cls = type(self.root.get_submodule(path)).__name__
        return FNode(out.name, kind, cls, path, inputs, node_shape(out), module_stack(out))

    def _escape_any(self, node, path: str) -> bool:
        for user in node.users:
            if user.op == "output":
                return True
            if user.name in self.alias:
                if self._escape_any(user, path):
                    return True
            elif self.owner.get(user.name) != path and op_name(user) not in SILENT:
                return True
        return False

    def _main_input(self, kind: str, external: list[str], out) -> str | None:
        if kind != "attention" or len(external) <= 1:
            return external[0] if external else None
        same = [e for e in external if self.nodes[e].shape == node_shape(out)]
        return (same or external)[0]

    def _check_single_call(self, path: str, owned: list[torch.fx.Node]) -> None:
        index = {n.name: i for i, n in enumerate(self.fx)}
        lo, hi = index[owned[0].name], index[owned[-1].name]
        for n in self.fx[lo : hi + 1]:
            if n.op != "call_function" or n.name in self.alias or op_name(n) in SILENT:
                continue
            if self.owner.get(n.name) != path:
                raise UnsupportedModelError(
                    f"{path}: this module is called more than once (or interleaved with "
                    f"{n.name}: {op_name(n)}); give each call its own module"
                )

    def _free_node(self, node: torch.fx.Node) -> FNode:
        name, stack = op_name(node), module_stack(node)
        args = [self.res(a.name) for a in tensor_args(node)]
        kind = free_kind(name, len(args))
        if kind is None:
            where = stack[-1] if stack else "<root>"
            raise UnsupportedModelError(
                f"{where}: op {name} (node {node.name}) is not handled by the fine-grained graph "
                "engine; depthcut can prune this model with coarse units (blocks, sublayers)"
            )
        extra = {"args": [a if not isinstance(a, torch.fx.Node) else None for a in node.args]}
        return FNode(node.name, kind, name, None, args, node_shape(node), stack, extra)


def free_kind(name: str, n_tensors: int) -> str | None:
    """The kind of a free (non-module) ATen op, or None when it is not handled."""
    if name in ARITH_OPS:
        return "arith" if n_tensors >= 2 else "pass"
    table = [
        (ACT_OPS, "act"),
        (UNARY_OPS, "pass"),
        (CONCAT_OPS, "concat"),
        (POOL_OPS, "pool"),
        (RESHAPE_OPS | PERMUTE_OPS | {"expand"}, "reshape"),
        (SLICE_OPS, "slice"),
        (REDUCE_OPS, "reduce"),
    ]
    return next((kind for ops, kind in table if name in ops), None)
