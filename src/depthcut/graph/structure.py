"""Find blocks, residual sublayers, their coupled norms and the model tail from a call trace."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from depthcut.errors import UnsupportedModelError
from depthcut.graph.capture import Call, trace_calls
from depthcut.ops import ATTENTION_OPS, TRANSFORM_OPS, is_transform


@dataclass
class Sublayer:
    """A residual branch inside a block: the module plus the norms that only serve it."""

    kind: str  # "attention" | "mlp"
    path: str
    pre_norms: list[str] = field(default_factory=list)
    post_norms: list[str] = field(default_factory=list)
    out_arity: int | None = None
    inputs: list[str] = field(default_factory=list)  # transforms reading the sublayer input
    output: str | None = None  # the transform whose output is the sublayer output
    residual: bool = True  # False: its output comes out of a norm inside it (post-norm)
    # per input transform: the channel lists of the views taken of its output (capture.py),
    # which say how a fused projection splits into q/k/v or gate/up (capture.channel_segments)
    views: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)

    @property
    def modules(self) -> list[str]:
        return [*self.pre_norms, self.path, *self.post_norms]


@dataclass
class BlockInfo:
    index: int
    path: str
    attention: Sublayer | None
    mlp: Sublayer | None
    out_arity: int | None = None

    def sublayer(self, kind: str) -> Sublayer | None:
        return self.attention if kind == "attention" else self.mlp


@dataclass
class ModelStructure:
    """What depthcut knows about a model's depth structure."""

    blocks_path: str
    blocks: list[BlockInfo]
    tail: list[str] | None
    tail_error: str | None = None

    def require_tail(self) -> list[str]:
        if self.tail is None:
            raise UnsupportedModelError(self.tail_error or "the model tail is unknown")
        return self.tail

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def block_list(self, model: nn.Module) -> nn.ModuleList:
        """``model``'s block stack (the ModuleList at ``blocks_path``)."""
        return cast(nn.ModuleList, model.get_submodule(self.blocks_path))


def is_norm(module: nn.Module) -> bool:
    """A norm is a parametrised module whose parameters are all 1-D (scale and shift)."""
    params = list(module.parameters())
    return bool(params) and all(p.dim() == 1 for p in params)


def find_block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of same-class modules holding the most parameters."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size and (best is None or size > best[0]):
            best = (size, name, module)
    if best is None:
        raise UnsupportedModelError(
            f"{type(model).__name__}: no repeated block stack (ModuleList of same-class modules)"
        )
    return best[1], best[2]


def probe_inputs(model: nn.Module, length: int = 8) -> dict[str, torch.Tensor]:
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 100)
    ids = (torch.arange(length) * 7 + 3) % max(vocab, 2)
    device = next(model.parameters()).device
    ids = ids.unsqueeze(0).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _children(calls: list[Call], parent: str) -> list[Call]:
    return [c for c in calls if c.parent == parent]


def _check_chain(blocks_path: str, block_calls: list[Call], n: int) -> None:
    if len(block_calls) != n:
        raise UnsupportedModelError(
            f"{blocks_path}: {len(block_calls)} block calls seen for {n} blocks; "
            "each block must run once per forward"
        )
    for prev, nxt in zip(block_calls, block_calls[1:]):
        if prev.out_id != nxt.in_id:
            raise UnsupportedModelError(
                f"{nxt.path}: its input is not the output of {prev.path} (blocks must be chained)"
            )


def _tail(calls: list[Call], blocks_path: str, last: Call) -> list[str]:
    ancestors = {""}
    parts = blocks_path.split(".")
    ancestors.update(".".join(parts[:i]) for i in range(1, len(parts)))
    tail = [c for c in calls if c.start > last.end and c.parent in ancestors]
    current = last.out_id
    for call in tail:
        if call.in_id != current:
            raise UnsupportedModelError(
                f"{call.path}: the model tail after {blocks_path} is not a simple chain"
            )
        current = call.out_id
    return [c.path for c in tail]


def _sublayer(
    kind: str, call: Call, norms: list[Call], transforms: list[Call], inner_norms: list[Call]
) -> Sublayer:
    pre = [n.path for n in norms if n.out_id == call.in_id]
    post = [n.path for n in norms if n.in_id == call.out_id]
    inside = [t for t in transforms if t.path.startswith(call.path + ".")]
    readers = [t for t in inside if t.in_id == call.in_id]
    inputs = [t.path for t in readers]
    output = next((t.path for t in inside if t.out_id == call.out_id), None)
    if output is None:  # post-norm: the first other transform consumes the context
        output = next((t.path for t in inside if t.path not in inputs), None)
    residual = not any(n.out_id == call.out_id for n in inner_norms)
    views = {t.path: t.views for t in readers}
    return Sublayer(kind, call.path, pre, post, call.out_arity, inputs, output, residual, views)


def _split_mlp(mlps: list[Call], transforms: list[Call]) -> Sublayer | None:
    """An MLP split over two chained modules (BERT's intermediate → output): width only."""
    first = [t for t in transforms if t.path.startswith(mlps[0].path + ".")]
    second = [t for t in transforms if t.path.startswith(mlps[1].path + ".")]
    if not first or not second:
        return None
    return Sublayer(
        "mlp",
        mlps[0].path,
        [],
        [],
        mlps[0].out_arity,
        [first[0].path],
        second[0].path,
        residual=False,
    )


def _block_info(model: nn.Module, index: int, call: Call, calls: list[Call]) -> BlockInfo:
    children = _children(calls, call.path)
    modules = dict(model.named_modules())
    norms = [c for c in children if is_norm(modules[c.path])]
    attn = [c for c in children if c.ops & ATTENTION_OPS and c not in norms]
    mlps = [
        c
        for c in children
        if c not in norms and c not in attn and c.ops & TRANSFORM_OPS and c.in_id is not None
    ]
    transforms = [c for c in calls if c.path.startswith(call.path + ".")]
    transforms = [c for c in transforms if is_transform(modules[c.path])]
    inner = [c for c in calls if c.path.startswith(call.path + ".") and is_norm(modules[c.path])]
    attention = (
        _sublayer("attention", attn[0], norms, transforms, inner) if len(attn) == 1 else None
    )
    mlp = _sublayer("mlp", mlps[0], norms, transforms, inner) if len(mlps) == 1 else None
    if len(mlps) == 2 and mlps[0].out_id == mlps[1].in_id:
        mlp = _split_mlp(mlps, transforms)
    return BlockInfo(index, call.path, attention, mlp, call.out_arity)


def discover_structure(model: nn.Module) -> ModelStructure:
    """Trace ``model`` once on a short probe input and describe its depth structure."""
    blocks_path, blocks = find_block_list(model)
    inputs = probe_inputs(model)
    was_training = model.training
    model.eval()
    try:
        calls = trace_calls(model, lambda: model(**inputs, use_cache=False))
    finally:
        model.train(was_training)
    block_calls = [c for c in calls if _is_block(c, blocks_path)]
    _check_chain(blocks_path, block_calls, len(blocks))
    infos = [_block_info(model, i, c, calls) for i, c in enumerate(block_calls)]
    try:
        tail = _tail(calls, blocks_path, block_calls[-1])
    except UnsupportedModelError as err:  # encoders (pooler): width pruning still works
        return ModelStructure(blocks_path, infos, None, str(err))
    return ModelStructure(blocks_path, infos, tail)


def _is_block(call: Call, blocks_path: str) -> bool:
    head, _, tail = call.path.rpartition(".")
    return head == blocks_path and tail.isdigit()


def require_sublayer(block: BlockInfo, kind: str) -> Sublayer:
    sub = block.sublayer(kind)
    if sub is not None and not sub.residual:
        raise UnsupportedModelError(
            f"{sub.path}: its output leaves through a norm inside it (post-norm block), so it is "
            "not a removable residual branch; remove whole blocks instead"
        )
    if sub is None:
        raise UnsupportedModelError(
            f"{block.path}: no single residual {kind} sublayer found (post-norm or fused "
            "blocks are handled at block level only)"
        )
    return sub
