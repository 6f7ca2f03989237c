"""The one architecture × unit-kind matrix: what works where, and the error of what does not.

``test_matrix.py`` runs every pair; ``python tests/matrix.py`` prints the README's
"what works where" table from the same lists, and a test checks the README holds it verbatim.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import depthcut as dc  # noqa: E402
from tiny import (  # noqa: E402
    tiny_bert,
    tiny_gemma3,
    tiny_gpt2,
    tiny_llama,
    tiny_neox,
    tiny_phi3,
    tiny_qwen2,
)

ARCHS = {
    "llama": ("Llama, GQA 4/2", tiny_llama),
    "gpt2": ("GPT-2, fused stacked c_attn", tiny_gpt2),
    "neox": ("GPT-NeoX, parallel residual, per-head fused QKV", tiny_neox),
    "gemma3": ("Gemma3, sliding window, QK-norm", tiny_gemma3),
    "phi3": ("Phi-3, fused qkv_proj (GQA) + gate_up_proj", tiny_phi3),
    "qwen2": ("Qwen2, q/k/v bias, sliding window", tiny_qwen2),
    "bert": ("BERT encoder, post-norm", tiny_bert),
}
# no repair: the matrix checks pruned == original with the units bypassed
DEPTH = {"protect_first": 1, "protect_last": 1, "repair": "none"}
WIDTH = {"protect_first": 0, "protect_last": 0, "width_scope": "per_layer", "repair": "none"}
KINDS = {
    "block": dict(units=("block",), budget=dc.Budget(params=0.2), **DEPTH),
    "attention": dict(units=("attention",), budget=dc.Budget(params=0.05), **DEPTH),
    "mlp": dict(units=("mlp",), budget=dc.Budget(params=0.1), **DEPTH),
    "attention+mlp": dict(units=("attention", "mlp"), budget=dc.Budget(params=0.15), **DEPTH),
    "fine": dict(
        units=("fine",), importance="angular", strategy="interleave", budget=dc.Budget(0.1), **DEPTH
    ),
    "head": dict(units=("head",), heads=0.5, **WIDTH),
    "neuron": dict(units=("neuron",), neurons=0.25, **WIDTH),
    "head+neuron": dict(units=("head", "neuron"), heads=0.5, neurons=0.25, **WIDTH),
    "block+head+neuron": dict(
        units=("block", "head", "neuron"),
        budget=dc.Budget(params=0.1),
        heads=0.5,
        neurons=0.25,
        **WIDTH,
    ),
}
# results that keep the source architecture: plain from_pretrained must give the same logits
PLAIN = {"block", "head", "neuron", "head+neuron", "block+head+neuron"}
# pairs that are refused, with the one-line error they give (a substring of it)
POST_NORM = "its output leaves through a norm inside it (post-norm block)"
REFUSED = {
    ("bert", "attention"): POST_NORM,
    ("bert", "mlp"): POST_NORM,
    ("bert", "attention+mlp"): POST_NORM,
    ("bert", "fine"): "BertModel has no language-model head: gradient scores",
}
# uniform results whose config cannot say what was pruned: they reload with depthcut.load only
NO_HEAD_DIM = "head size = hidden / heads in this config"
LOAD_ONLY = {
    (arch, kind): NO_HEAD_DIM
    for arch in ("gpt2", "neox")
    for kind in ("head", "head+neuron", "block+head+neuron")
}


def config(kind: str) -> dc.PruneConfig:
    return dc.PruneConfig(**KINDS[kind])


def is_causal(model) -> bool:
    return hasattr(model, "generate") and getattr(model, "lm_head", None) is not None


def output(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits of a causal LM, the last hidden state of an encoder."""
    kw = {"use_cache": False} if is_causal(model) else {}
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    return out.logits if is_causal(model) else out.last_hidden_state


def reference(model, plan: dc.Plan):
    """A context in which the unmodified ``model`` computes what ``plan`` should leave:
    depth units bypassed, width units zeroed at their consumer, fine units by their hooks."""
    from depthcut.graph.structure import discover_structure
    from depthcut.units.bypass import bypassed
    from depthcut.units.discover import discover_units

    stack = ExitStack()
    structure = discover_structure(model)
    depth = [a for a in plan.actions if a.kind in ("block", "attention", "mlp")]
    if depth:
        kinds = tuple(sorted({a.kind for a in depth}))
        units = {u.id: u for u in discover_units(model, structure, kinds)}
        stack.enter_context(bypassed(model, structure, [units[a.unit_id] for a in depth]))
    _zero_width(stack, model, structure, [a for a in plan.actions if a.kind in ("head", "neuron")])
    fine = [a for a in plan.actions if a.kind == "fine"]
    if fine:
        _fine_hooks(stack, model, fine)
    return stack


def _zero_width(stack: ExitStack, model, structure, actions) -> None:
    from depthcut.methods.width.layers import width_layers

    modules = dict(model.named_modules())
    layers = {}
    for kind in {a.kind for a in actions}:
        layers.update({w.id: w for w in width_layers(model, structure, kind)})
    for a in actions:
        part = layers[a.unit_id].parts[-1]
        channels = part.channels(list(a.members))

        def hook(module, args, channels=channels):
            x = args[0].clone()
            x[..., channels] = 0
            return (x, *args[1:])

        stack.callback(modules[part.path].register_forward_pre_hook(hook).remove)


def _fine_hooks(stack: ExitStack, model, actions) -> None:
    from depthcut.methods.fine.model import FineModel
    from depthcut.methods.fine.reference import fine_reference

    fm = FineModel(model)
    for block, state in fm.replay(actions).items():
        stack.enter_context(fine_reference(fm.module(fm.root_of(block)), state))


def plain_loadable(arch: str, kind: str) -> bool:
    return arch != "bert" and kind in PLAIN and (arch, kind) not in LOAD_ONLY


def cell(arch: str, kind: str) -> str:
    if (arch, kind) in REFUSED:
        return f"refused: {REFUSED[(arch, kind)]}"
    if (arch, kind) in LOAD_ONLY:
        return f"✓ depthcut.load ({LOAD_ONLY[(arch, kind)]})"
    return "✓ from_pretrained" if plain_loadable(arch, kind) else "✓ depthcut.load"


def table() -> str:
    head = "| architecture | " + " | ".join(KINDS) + " |"
    rule = "|---" * (len(KINDS) + 1) + "|"
    rows = [f"| {ARCHS[a][0]} | " + " | ".join(cell(a, k) for k in KINDS) + " |" for a in ARCHS]
    return "\n".join([head, rule, *rows])


if __name__ == "__main__":
    print(table())
