"""The fine-grained graph engine (thesis Chapter 3): graph, Prune(f), patching, surgery."""

import copy
import random

import pytest
import torch
from torch import nn

from depthcut.errors import UnsupportedModelError
from depthcut.graph.groups import build_graph
from depthcut.methods.fine.model import FineModel
from depthcut.methods.fine.patch import patches_of
from depthcut.methods.fine.reference import fine_reference
from depthcut.methods.fine.state import FineState, UnitRefused, fine_units
from depthcut.methods.fine.surgery import materialize, state_params
from tiny import tiny_gemma3, tiny_gpt2, tiny_llama, tiny_neox
from tiny_cnn import image_batch, tiny_resnet, tiny_yolo

LLMS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "neox": tiny_neox, "gemma3": tiny_gemma3}


def _bert():
    from tiny import tiny_bert

    return tiny_bert()


LLMS["bert"] = _bert
CNNS = {"resnet": tiny_resnet, "yolo": tiny_yolo}
# units per block (LLMs) / per model (CNNs), and the units excluded with their reason
EXPECTED_UNITS = {
    "llama": {"attention": 1, "linear": 3},
    "gemma3": {"attention": 1, "linear": 3},
    "gpt2": {"attention": 1, "linear": 2},
    "neox": {"attention": 1, "linear": 2},
    "bert": {"attention": 1, "linear": 3},
    "resnet": {"conv": 8, "linear": 1},
    "yolo": {"conv": 14},
}
EXCLUDED = {"resnet": 2, "yolo": 1}


def _llm_case(arch):
    model = LLMS[arch]()
    fm = FineModel(model)
    block = fm.module(fm.roots[0])
    call = _block_call(model, block)
    return fm.graph, block, call


def _block_call(model, block):
    from depthcut.graph.export import record_call

    ids = torch.tensor([[5, 9, 3, 17, 30, 2, 8, 11, 40, 6]])
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "bert" not in type(model).__name__.lower():
        kwargs["use_cache"] = False
    args, kw = record_call(model, block, lambda: model(**kwargs))
    return lambda m: _main(m(*args, **kw))


def _main(out):
    return out[0] if isinstance(out, tuple) else out


def _cnn_case(arch):
    model = CNNS[arch]()
    x = image_batch()
    return build_graph(model, (x,)), model, lambda m: m(x)


def case(arch):
    return _llm_case(arch) if arch in LLMS else _cnn_case(arch)


def check_state(graph, root, run, state):
    """Physical surgery equals the hook reference, and the symbolic parameter count holds."""
    with torch.no_grad(), fine_reference(root, state):
        expected = run(root)
    pruned = materialize(state, copy.deepcopy(root))
    with torch.no_grad():
        got = run(pruned)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) == state_params(state, root)
    return expected, pruned


@pytest.mark.parametrize("arch", [*LLMS, *CNNS])
def test_unit_counts_and_exclusions(arch):
    graph, root, _ = case(arch)
    units = fine_units(graph, root, include_excluded=True)
    kept = [u for u in units if u.reason is None]
    counts = {k: sum(1 for u in kept if u.op == k) for k in {u.op for u in kept}}
    assert counts == EXPECTED_UNITS[arch]
    excluded = [u for u in units if u.reason]
    assert len(excluded) == EXCLUDED.get(arch, 0)
    assert all("spatial size" in u.reason for u in excluded)


@pytest.mark.parametrize("arch", [*LLMS, *CNNS])
def test_every_unit_physical_equals_reference(arch):
    graph, root, run = case(arch)
    with torch.no_grad():
        dense = run(root)
    for unit in fine_units(graph, root):
        state = FineState(graph)
        state.prune(unit.node)
        expected, pruned = check_state(graph, root, run, state)
        assert not torch.allclose(expected, dense), unit.module  # the unit did something
        removed = sum(p.numel() for p in root.parameters()) - state_params(state, root)
        assert removed >= unit.params
        assert not isinstance(pruned.get_submodule(unit.module), (nn.Linear, nn.Conv2d))


@pytest.mark.parametrize("arch", [*LLMS, *CNNS])
def test_random_unit_sequences_physical_equals_reference(arch):
    graph, root, run = case(arch)
    units = fine_units(graph, root)
    rng = random.Random(7)
    with torch.no_grad():
        dense = run(root)
    for trial in range(4):
        state = FineState(graph)
        pruned = 0
        for unit in rng.sample(units, min(len(units), 2 + trial)):
            try:
                state.prune(unit.node)
                pruned += 1
            except UnitRefused:
                continue
        assert pruned >= 1, f"trial {trial}: every pick was refused, nothing was compared"
        expected, _ = check_state(graph, root, run, state)
        assert not torch.allclose(expected, dense)


def test_llama_gate_prune_shrinks_up_and_down_to_hidden():
    graph, root, run = case("llama")
    state = FineState(graph)
    gate = graph.by_module("mlp.gate_proj").name
    state.prune(gate)
    pruned = materialize(state, copy.deepcopy(root))
    assert isinstance(pruned.mlp.gate_proj, nn.Identity)
    assert isinstance(pruned.mlp.act_fn, nn.Identity)  # FindAct
    assert tuple(pruned.mlp.up_proj.weight.shape) == (32, 32)
    assert tuple(pruned.mlp.down_proj.weight.shape) == (32, 32)
    # 9280 params: gate 2048 + up's 32 extra rows 1024 + down's 32 extra columns 1024 go
    assert state_params(state, root) == 9280 - 4096


def test_all_units_of_a_block_leave_the_identity():
    graph, root, run = case("llama")
    state = FineState(graph)
    for unit in fine_units(graph, root):
        state.prune(unit.node)
    fills = sorted((p.fill, p.module) for p in patches_of(state))
    assert fills == [("one", "mlp.up_proj"), ("zero", "mlp"), ("zero", "self_attn")]
    pruned = materialize(state, copy.deepcopy(root))
    assert sum(p.numel() for p in pruned.parameters()) == 0
    with torch.no_grad():
        torch.testing.assert_close(run(pruned), _identity_of(root, run))


def _identity_of(root, run):
    """The block input the run feeds (the pruned block must return it unchanged)."""
    seen = {}

    def hook(module, args, kwargs):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).clone()

    handle = root.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            run(root)
    finally:
        handle.remove()
    return seen["x"]


class AddToy(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Linear(4, 4)

    def forward(self, x):
        return self.f(x) + x


class MulToy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.a(x) * self.b(x))


class CatToy(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = self.pre(x)
        return self.out(torch.cat((h, self.b(h)), -1))


def _toy(model, prune):
    x = torch.randn(5, 4)
    graph = build_graph(model, (x,))
    state = FineState(graph)
    for path in prune:
        state.prune(graph.by_module(path).name)
    return x, state, materialize(state, copy.deepcopy(model))


def test_patch_add_x_plus_x_becomes_x_plus_zero():
    model = AddToy()
    x, state, pruned = _toy(model, ["f"])
    assert [(p.fill, p.module) for p in patches_of(state)] == [("zero", "f")]
    torch.testing.assert_close(pruned(x), x)  # x + 0, not 2x


def test_patch_mul_x_times_x_becomes_x_times_one():
    model = MulToy()
    x, state, pruned = _toy(model, ["a", "b"])
    assert [(p.fill, p.module) for p in patches_of(state)] == [("one", "b")]
    torch.testing.assert_close(pruned(x), model.out(x))  # out(x ⊙ 1)


def test_patch_duplicated_concat_keeps_one_copy_and_folds_the_consumer():
    model = CatToy()
    x, state, pruned = _toy(model, ["b"])
    (patch,) = patches_of(state)
    assert (patch.fill, patch.module) == ("empty", "b")
    assert pruned.out.in_features == 4  # the consumer was width-pruned to one copy
    h = model.pre(x)
    w = model.out.weight
    expected = h @ (w[:, :4] + w[:, 4:]).T + model.out.bias  # out(cat(h, h)), exactly
    torch.testing.assert_close(pruned(x), expected)


def test_yolo_concat_of_identity_branches_is_patched_and_equal():
    graph, root, run = case("yolo")
    state = FineState(graph)
    for path in ["c3.cv1.conv", "c3.m.0.cv1.conv", "c3.m.0.cv2.conv", "c3.cv2.conv"]:
        state.prune(graph.by_module(path).name)
    fills = sorted((p.fill, p.module) for p in patches_of(state))
    assert ("empty", "c3.cv2") in fills and ("zero", "c3.m.0.cv2") in fills
    _, pruned = check_state(graph, root, run, state)
    assert pruned.c3.cv3.conv.in_channels == 8


def test_spatial_changing_conv_is_refused_with_reason():
    graph, root, _ = case("resnet")
    (unit,) = [u for u in fine_units(graph, root, True) if u.module == "layer2.0.conv1"]
    assert unit.reason == "changes the spatial size (16, 16) → (8, 8)"


def test_unknown_op_is_named_in_the_error():
    class Sorter(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Linear(4, 4)

        def forward(self, x):
            return torch.sort(self.f(x), dim=-1).values

    with pytest.raises(UnsupportedModelError, match="op sort"):
        build_graph(Sorter(), (torch.randn(2, 4),))


def test_frozen_space_refuses_reconciliation():
    class Sliced(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.Linear(4, 8)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.up(x)[..., :4])

    x = torch.randn(3, 4)
    graph = build_graph(Sliced(), (x,))
    with pytest.raises(UnitRefused, match="slice"):
        FineState(graph).prune(graph.by_module("up").name)


def test_a_module_called_twice_is_refused_by_name():
    class SharedRelu(nn.Module):  # torchvision's BasicBlock reuses self.relu like this
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.b(self.relu(self.a(x))))

    with pytest.raises(UnsupportedModelError, match="relu: this module is called more than once"):
        build_graph(SharedRelu(), (torch.randn(2, 4),))
