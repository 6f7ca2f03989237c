"""Apply a depth plan on disk: the pruned checkpoint is written shard by shard, never loading
the model. Kept tensors are copied (removed blocks and removed sublayers with their coupled
norms are left out), block indices renumbered, the config's layer count and per-layer lists
synced, and the plan recorded as ``depthcut.save`` does, so ``depthcut.load`` (and, for block
plans, plain ``from_pretrained``) reads the result. Verification streams too: every written
tensor is read back and compared with the source tensor it came from.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch

from depthcut.errors import OutputWriteError, UnsupportedModelError
from depthcut.graph.structure import ModelStructure
from depthcut.kinds import Kind
from depthcut.planning.plan import Plan
from depthcut.stream.source import BlockSource, read_tensors
from depthcut.surgery.hf import sync_config
from depthcut.units.discover import discover_units


def _removed_modules(source: BlockSource, plan: Plan) -> list[str]:
    """Module paths whose tensors go: sublayers (with their norms) of blocks that stay."""
    drop = set(plan.removed_blocks)
    wanted = {a.unit_id for a in plan.actions if a.kind is not Kind.BLOCK and a.block not in drop}
    kinds = tuple(sorted({a.kind for a in plan.actions if a.kind is not Kind.BLOCK}))
    units = discover_units(source.model, source.structure, kinds) if kinds else []
    return [m for u in units if u.id in wanted for m in u.modules]


def rename_map(source: BlockSource, plan: Plan) -> dict[str, str]:
    """{source tensor name: pruned tensor name} of every tensor the pruned model keeps."""
    if any(a.kind.family != "depth" for a in plan.actions):
        raise UnsupportedModelError("--streaming applies block and sublayer plans on disk")
    structure: ModelStructure = source.structure
    drop = set(plan.removed_blocks)
    new_index = {
        old: new for new, old in enumerate(i for i in range(structure.num_blocks) if i not in drop)
    }
    gone = tuple(m + "." for m in _removed_modules(source, plan))
    pattern = re.compile(re.escape(structure.blocks_path) + r"\.(\d+)\.")
    out = {}
    for name in source.files:
        found = pattern.match(name)
        if found is None:
            out[name] = name
            continue
        old = int(found.group(1))
        if old in drop or name.startswith(gone):
            continue
        out[name] = f"{structure.blocks_path}.{new_index[old]}." + name[found.end() :]
    return out


def write_shards(source: BlockSource, names: dict[str, str], tmp: Path) -> dict[str, str]:
    """One output shard per source shard, read one at a time; returns {name: file}."""
    from safetensors.torch import save_file

    shards = sorted({source.files[n] for n in names})
    weight_map = {}
    for k, shard in enumerate(shards, 1):
        file = (
            "model.safetensors"
            if len(shards) == 1
            else f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        )
        mine = [n for n in names if source.files[n] == shard]
        tensors = {names[n]: t.contiguous() for n, t in read_tensors(source.files, mine).items()}
        save_file(tensors, str(tmp / file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(tensors, file)
    if len(shards) > 1:
        size = sum((tmp / f).stat().st_size for f in set(weight_map.values()))
        index = {"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return weight_map


def verify_copy(source: BlockSource, names: dict[str, str], weight_map: dict, tmp: Path) -> None:
    """Every written tensor equals its source tensor (read back one shard at a time)."""
    back = {new: old for old, new in names.items()}
    for file in sorted(set(weight_map.values())):
        written = [n for n, f in weight_map.items() if f == file]
        got = read_tensors(dict.fromkeys(written, tmp / file), written)
        for name, tensor in got.items():
            original = read_tensors(source.files, [back[name]])[back[name]]
            if not torch.equal(tensor, original):
                raise OutputWriteError(f"{tmp.name}: {name} differs from {back[name]}")


def apply_on_disk(source: BlockSource, plan: Plan, tmp: Path, meta: dict | None = None) -> str:
    """Write the pruned checkpoint of ``plan`` into ``tmp`` (``meta``: extra keys of
    depthcut.json, as for ``depthcut.save``); returns how it was verified."""
    from depthcut.version import FORMAT_VERSION, __version__

    names = rename_map(source, plan)
    weight_map = write_shards(source, names, tmp)
    config = copy.deepcopy(source.config)
    drop = set(plan.removed_blocks)
    n = source.structure.num_blocks
    sync_config(config, [i for i in range(n) if i not in drop], n)
    config.save_pretrained(tmp)
    plan.save(tmp / "plan.json")
    info = {"format": FORMAT_VERSION, "depthcut": __version__, "plans": [plan.to_dict()]}
    info |= meta or {}
    (tmp / "depthcut.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    verify_copy(source, names, weight_map, tmp)
    return f"{len(weight_map)} tensors copied and read back equal, shard by shard"
