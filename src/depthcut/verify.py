"""Check a saved depth- or width-pruned directory against the in-memory model, one block at a
time.

``depthcut.load`` rebuilds the base architecture from the plan's config, replays the plan and
loads the weights. Here the same rebuild happens on the ``meta`` device (no memory; the block
structure comes from a two-block copy, as in streaming): every saved tensor outside the blocks
must equal the in-memory one, and every rebuilt block, filled from the saved files, must give
exactly the in-memory block's output on the in-memory block's own probe input. Peak memory:
the model plus one block. Heads / neurons are sliced on ``meta`` too (their groups come from
the structure's traced views, not from a forward). Fine, multi-plan and quantized results are
checked by a full reload instead (their replay traces a forward, which ``meta`` tensors cannot
run).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from depthcut.errors import OutputWriteError
from depthcut.graph.structure import ModelStructure, discover_structure, probe_inputs
from depthcut.methods.width.apply import prune_width
from depthcut.methods.width.surgery import layers_of
from depthcut.planning.plan import Plan
from depthcut.skeleton import build_from_config
from depthcut.stream.source import read_tensors, shard_index, shell_and_structure
from depthcut.surgery.patch import recorded_patches
from depthcut.weights import checkpoint_to_model_keys, tied_keys


def _rebuilt(plan: Plan) -> tuple[nn.Module, ModelStructure]:
    """The architecture ``depthcut.load`` builds for ``plan``, on ``meta``, and its structure."""
    from depthcut.methods.depth import DepthFamily

    with torch.device("meta"):
        model = build_from_config(plan.model["config"])
    _, structure = shell_and_structure(model.config)
    width = [a for a in plan.actions if a.kind.family == "width"]
    if width:  # sliced first, as apply_plan does; shapes only (meta)
        layers = layers_of(model, structure, width)
        for action in width:
            prune_width(model, layers[action.unit_id], list(action.members or ()))
    return DepthFamily().apply(model, plan, structure), structure


def _saved(folder: Path, model: nn.Module) -> dict[str, tuple[Path, str]]:
    """{model key: (file, saved key)} as ``load`` maps the saved names."""
    files = shard_index(folder)
    return {
        name: (files[key], key)
        for name, key in checkpoint_to_model_keys(model, {k: k for k in files}).items()
    }


def _read(saved: dict, names: list[str]) -> dict[str, torch.Tensor]:
    """The saved tensors of model keys ``names`` (each shard opened once)."""
    keys = {saved[n][1]: n for n in names}
    files = {key: saved[n][0] for key, n in keys.items()}
    return {keys[k]: t for k, t in read_tensors(files, list(keys)).items()}


def _check_rest(model: nn.Module, rebuilt: nn.Module, saved: dict, blocks_path: str) -> None:
    mine, tied = model.state_dict(), tied_keys(rebuilt)
    for name in rebuilt.state_dict():
        if name.startswith(blocks_path + ".") or (name in tied and name not in saved):
            continue
        if name not in saved or name not in mine:
            raise OutputWriteError(f"saved weights lack {name}")
        if not torch.equal(_read(saved, [name])[name], mine[name].detach().cpu()):
            raise OutputWriteError(f"saved tensor {name} differs from the model's")


def _check_blocks(model: nn.Module, rebuilt: nn.Module, saved: dict) -> None:
    from depthcut.calibrate import BlockCache
    from depthcut.data import CalibData

    structure = discover_structure(model)
    cache = BlockCache(model, structure, CalibData.of(probe_inputs(model, 16)), progress=False)
    shells = structure.block_list(rebuilt)
    if len(shells) != cache.num_blocks:
        raise OutputWriteError(
            f"the plan rebuilds {len(shells)} blocks, the model has {cache.num_blocks}"
        )
    for i, live in enumerate(cache.blocks):
        prefix = f"{structure.blocks_path}.{i}."
        names = [n for n in saved if n.startswith(prefix)]
        twin = shells[i].to_empty(device=cache.inputs[i][0].device)  # live may be offloaded
        twin.load_state_dict({n[len(prefix) :]: t for n, t in _read(saved, names).items()})
        persistent = set(twin.state_dict())
        for name, buf in live.named_buffers():
            if name not in persistent:
                twin.get_buffer(name).copy_(buf)  # not saved: derived from the config
        with torch.no_grad():
            out = cache.calls[i][0].run(twin.eval(), cache.inputs[i][0])
        found = out[0] if isinstance(out, (tuple, list)) else out
        torch.testing.assert_close(found, cache.inputs[i + 1][0], rtol=0, atol=0)
        shells[i] = twin.to("meta")


def blockwise_applies(model: nn.Module, plans: list[Plan]) -> bool:
    from depthcut.quantization import is_quantized

    sliced = all(a.kind.family in ("depth", "width") for a in plans[0].actions)
    patched = recorded_patches(plans[0].run)
    return len(plans) == 1 and sliced and not patched and not is_quantized(model)


def verify_blockwise(model: nn.Module, plan: Plan, folder: Path) -> None:
    """Raise unless ``folder`` holds ``model`` pruned by the depth / width ``plan``."""
    rebuilt, structure = _rebuilt(plan)
    saved = _saved(folder, model)
    _check_rest(model, rebuilt, saved, structure.blocks_path)
    _check_blocks(model, rebuilt, saved)
