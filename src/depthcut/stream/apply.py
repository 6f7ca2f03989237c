"""Apply a plan on disk: the pruned checkpoint is written shard by shard, never loading the
model. Kept tensors are copied (removed blocks and removed sublayers with their coupled norms
are left out), the tensors of blocks that lose heads / neurons are sliced by the in-memory
width surgery on that one loaded block, block indices renumbered, the config's layer count,
per-layer lists and uniform widths synced, and the plan recorded as ``depthcut.save`` does,
so ``depthcut.load`` (and, for block plans, plain ``from_pretrained``) reads the result.
Verification streams too: every written tensor is read back and compared with the tensor it
was made from.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import torch

from depthcut.errors import OutputWriteError
from depthcut.graph.structure import ModelStructure
from depthcut.methods.width.surgery import sync_uniform_width
from depthcut.planning.plan import Plan
from depthcut.stream.edit import PlanEdit
from depthcut.stream.rawcopy import copy_tensors, same_bytes
from depthcut.stream.source import BlockSource, read_tensors
from depthcut.surgery.hf import sync_config


def rename_map(source: BlockSource, edit: PlanEdit) -> dict[str, str]:
    """{source tensor name: pruned tensor name} of every source tensor the pruned model keeps
    (the tensors of edited blocks are renamed by ``Tensors``, from the edited block)."""
    structure: ModelStructure = source.structure
    new_index = {old: new for new, old in enumerate(edit.kept())}
    pattern = re.compile(re.escape(structure.blocks_path) + r"\.(\d+)\.")
    out = {}
    for name in source.files:
        found = pattern.match(name)
        if found is None:
            out[name] = name
            continue
        old = int(found.group(1))
        if old in edit.drop or name.startswith(edit.gone):
            continue
        out[name] = f"{structure.blocks_path}.{new_index[old]}." + name[found.end() :]
    return out


class Tensors:
    """The pruned model's tensors, shard by shard: copied from the source shards, or, for a
    block that loses heads / neurons or fine-grained units, taken from that block loaded and
    edited by the in-memory surgery (one block held at a time)."""

    def __init__(self, source: BlockSource, edit: PlanEdit):
        self.source, self.edit = source, edit
        self.names = rename_map(source, edit)
        self.prefix = source.structure.blocks_path + "."
        kept = edit.kept()
        self.new_index = {old: new for new, old in enumerate(kept)}
        self.edited = [i for i in kept if edit.edits(i)]
        self.homes = {  # the source shard whose output shard holds edited block i
            i: min(f for n, f in source.files.items() if self.block_of(n) == i) for i in self.edited
        }
        self.origin: dict[str, tuple] = {}  # written name -> ("file", source name) | ("block", i)
        self._block: tuple[int, dict] | None = None

    def block_of(self, name: str) -> int | None:
        if not name.startswith(self.prefix):
            return None
        return int(name[len(self.prefix) :].split(".", 1)[0])

    def edited_block(self, i: int) -> dict[str, torch.Tensor]:
        """Block ``i`` loaded as saved (not cast), edited; its kept tensors by pruned name."""
        if self._block is None or self._block[0] != i:
            self._block = None
            raw = self.source.block_tensors(i, convert=False)
            with self.source.loaded(i, raw) as block:
                self.edit.slice(i)
                state = {k: v.detach() for k, v in block.state_dict().items()}
            new = f"{self.prefix}{self.new_index[i]}."
            gone = self.edit.gone
            kept = {k: v for k, v in state.items() if not f"{self.prefix}{i}.{k}".startswith(gone)}
            self._block = (i, {new + k: v for k, v in kept.items()})
        return self._block[1]

    def groups(self) -> list[tuple[str, object]]:
        """The output shards, in source-shard order: ("plain", names) for the copied tensors
        of one source shard, and ("block", i) for each edited block (the only tensors ever
        held whole: one block)."""
        out: list[tuple[str, object]] = []
        for shard in sorted(set(self.source.files.values())):
            plain = [
                n
                for n, f in self.source.files.items()
                if f == shard and n in self.names and self.block_of(n) not in self.edited
            ]
            out += [("plain", plain)] if plain else []
            out += [("block", i) for i in self.edited if self.homes[i] == shard]
        return out

    def write(self, group: tuple[str, Any], dest: Path) -> list[str]:
        """Write one output group into ``dest``; returns the names written. Copied tensors
        go as bytes (never whole in memory); an edited block through ``save_file``."""
        from safetensors.torch import save_file

        kind, what = group
        if kind == "block":
            block = {n: t.contiguous() for n, t in self.edited_block(what).items()}
            save_file(block, str(dest), metadata={"format": "pt"})
            self.origin |= dict.fromkeys(block, ("block", what))
            return list(block)
        copy_tensors(self.source.files[what[0]], {n: self.names[n] for n in what}, dest)
        self.origin |= {self.names[n]: ("file", n) for n in what}
        return [self.names[n] for n in what]

    def check(self, name: str, file: Path) -> bool:
        """Whether the written tensor ``name`` in ``file`` equals what it was made from (the
        source bytes, or the re-edited block)."""
        kind, what = self.origin[name]
        if kind == "file":
            return same_bytes(file, name, self.source.files[what], what)
        written = read_tensors({name: file}, [name])[name]
        return torch.equal(written, self.edited_block(what)[name])


def write_shards(tensors: Tensors, tmp: Path) -> dict[str, str]:
    """One output shard per group (``Tensors.groups``), made one at a time; returns
    {name: file}."""
    groups = tensors.groups()
    weight_map: dict[str, str] = {}
    for k, group in enumerate(groups, 1):
        file = (
            "model.safetensors"
            if len(groups) == 1
            else f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        )
        weight_map |= dict.fromkeys(tensors.write(group, tmp / file), file)
    if len(groups) > 1:
        size = sum((tmp / f).stat().st_size for f in set(weight_map.values()))
        index = {"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return weight_map


def verify_copy(tensors: Tensors, weight_map: dict, tmp: Path) -> None:
    """Every written tensor equals what it was made from (copies compared as bytes, a chunk
    at a time; edited blocks re-edited, one block at a time)."""
    for name, file in sorted(weight_map.items(), key=lambda kv: (kv[1], kv[0])):
        if not tensors.check(name, tmp / file):
            raise OutputWriteError(f"{tmp.name}: {name} differs from what it was made from")


def apply_on_disk(source: BlockSource, plan: Plan, tmp: Path, meta: dict | None = None) -> str:
    """Write the pruned checkpoint of ``plan`` into ``tmp`` (``meta``: extra keys of
    depthcut.json, as for ``depthcut.save``); returns how it was verified."""
    from depthcut.version import FORMAT_VERSION, __version__

    edit = PlanEdit(source, plan)
    tensors = Tensors(source, edit)
    weight_map = write_shards(tensors, tmp)
    config = copy.deepcopy(source.config)
    sync_config(config, edit.kept(), source.structure.num_blocks)
    if edit.width:
        sync_uniform_width(config, edit.layers, edit.width, edit.drop)
    config.save_pretrained(tmp)
    plan.save(tmp / "plan.json")
    info = {"format": FORMAT_VERSION, "depthcut": __version__, "plans": [plan.to_dict()]}
    info |= meta or {}
    (tmp / "depthcut.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    verify_copy(tensors, weight_map, tmp)
    n = len(tensors.edited)
    sliced = f", {n} edited blocks (heads / neurons / fine units) one at a time" if n else ""
    return f"{len(weight_map)} tensors written and read back equal, shard by shard{sliced}"
