"""The one unit vocabulary: ``Kind``, ``UnitRef`` ids and their parser, and how actions and
units are saved (the plain names of plan format 1)."""

import json

import pytest

from depthcut.kinds import DEPTH_KINDS, UNIT_KINDS, WIDTH_KINDS, FineOp, Kind, UnitRef
from depthcut.planning.plan import Action
from depthcut.units.discover import Unit

REFS = [
    UnitRef(Kind.BLOCK, 3, "model.layers.3"),
    UnitRef(Kind.MLP, 7, "model.layers.7.mlp"),
    UnitRef(Kind.ATTENTION, 0, "model.layers.0.self_attn"),
    UnitRef(Kind.HEAD, 2, "model.layers.2.self_attn"),
    UnitRef(Kind.NEURON, 11, "model.layers.11.mlp"),
    UnitRef(Kind.FINE, 4, "model.layers.4.mlp.down_proj"),
    UnitRef(Kind.FINE, -1, "layer1.0.conv2"),
]


@pytest.mark.parametrize("ref", REFS, ids=lambda r: r.id)
def test_parse_is_the_inverse_of_id(ref):
    parsed = UnitRef.parse(ref.id)
    assert parsed == ref and parsed.id == ref.id and parsed.kind is ref.kind
    if ref.kind is not Kind.FINE:
        assert parsed.block == ref.block


def test_ids_and_families():
    assert [r.id for r in REFS[:5]] == ["block:3", "mlp:7", "attention:0", "head:2", "neuron:11"]
    assert REFS[5].id == "model.layers.4.mlp.down_proj"
    assert {k: Kind(k).family for k in UNIT_KINDS} == {
        "block": "depth",
        "attention": "depth",
        "mlp": "depth",
        "head": "width",
        "neuron": "width",
        "fine": "fine",
    }
    assert (DEPTH_KINDS, WIDTH_KINDS) == (("block", "attention", "mlp"), ("head", "neuron"))
    assert Kind.HEAD.sublayer is Kind.ATTENTION and Kind.NEURON.sublayer is Kind.MLP
    assert UnitRef.parse("mlp:x").kind is Kind.FINE  # not a block index: a module path
    assert len({*REFS, UnitRef(Kind.BLOCK, 3)}) == len(REFS)  # identity is the id


def test_actions_keep_members_and_channels_apart_and_save_as_indices():
    head = Action(Kind.HEAD, 2, "m.2.attn", 96, 0.5, members=(0, 3))
    fine = Action("fine", 4, "m.4.mlp.up", 640, None, channels=(5, 9))
    saved = [json.loads(json.dumps(a.to_dict())) for a in (head, fine)]
    assert saved[0]["indices"] == [0, 3] and saved[1]["indices"] == [5, 9]
    assert saved[1]["kind"] == "fine" and fine.kind is Kind.FINE
    back = [Action.from_dict(d) for d in saved]
    assert back == [head, fine]
    assert back[0].channels is None and back[1].members is None


def test_fine_units_save_their_op_in_the_kind():
    unit = Unit(Kind.FINE, 4, "m.4.mlp.up", ("m.4.mlp.up",), 640, FineOp.LINEAR)
    data = unit.to_dict()
    assert data["kind"] == "fine.linear" and "op" not in data
    assert Unit.from_dict(data) == unit
    block = Unit(Kind.BLOCK, 1, "m.1", ("m.1",), 10)
    assert Unit.from_dict(block.to_dict()) == block and block.to_dict()["kind"] == "block"
