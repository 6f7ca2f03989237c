"""A model read one block at a time from its safetensors shards (``--streaming``).

The whole architecture is built on the ``meta`` device (no memory). What is not a block —
embeddings, rotary tables, final norm, LM head — is materialised once from the shards; each
block is materialised when it is needed (``loaded(i)``) and put back on ``meta`` afterwards,
so at most one block's weights are in memory beside the small remainder. The structure
(blocks, sublayers, their norms, the tail) is discovered on a two-block copy of the
architecture with random weights and applied to every block, as the stack is homogeneous.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from depthcut.calibrate import linear_tail
from depthcut.errors import ModelLoadError
from depthcut.graph.structure import BlockInfo, Sublayer, discover_structure
from depthcut.surgery.hf import LAYER_COUNT_KEY, per_layer_keys


def shard_index(folder: Path) -> dict[str, Path]:
    """{tensor name: shard file} from ``model.safetensors.index.json`` or the single file."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weights = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weights.items()}
    single = folder / "model.safetensors"
    if not single.exists():
        raise ModelLoadError(f"{folder}: no safetensors weights to stream")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as handle:
        return dict.fromkeys(handle.keys(), single)  # noqa: SIM118 (not a dict)


_ITEMSIZE = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}
_BLOCK_INDEX = re.compile(r"\.(\d+)\.")


def tensor_bytes(files: dict[str, Path]) -> dict[str, int]:
    """{tensor name: bytes} from the shard headers (no tensor is read)."""
    from safetensors import safe_open

    out: dict[str, int] = {}
    for file in sorted(set(files.values())):
        with safe_open(str(file), framework="pt") as handle:
            for name in (n for n in files if files[n] == file):
                piece = handle.get_slice(name)
                out[name] = math.prod(piece.get_shape()) * _ITEMSIZE.get(piece.get_dtype(), 1)
    return out


def block_bytes(folder: Path) -> list[int]:
    """Bytes of each block's tensors (the first ``.N.`` of a name), from the shard headers."""
    sizes: dict[int, int] = {}
    for name, size in tensor_bytes(shard_index(folder)).items():
        found = _BLOCK_INDEX.search(name)
        if found:
            sizes[int(found.group(1))] = sizes.get(int(found.group(1)), 0) + size
    return list(sizes.values()) or [0]


def read_tensors(files: dict[str, Path], names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors, each file opened once."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    for file in sorted({files[n] for n in names}):
        with safe_open(str(file), framework="pt") as handle:
            for name in (n for n in names if files[n] == file):
                out[name] = handle.get_tensor(name)
    return out


def small_config(config, blocks: int = 2, vocab: int = 256):
    """The config with ``blocks`` blocks (per-layer lists cut to match) and a small
    vocabulary: enough to discover the structure, without two more vocabulary-sized tensors."""
    small = copy.deepcopy(config)
    if getattr(small, "vocab_size", None):
        small.vocab_size = min(small.vocab_size, vocab)
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if isinstance(getattr(small, key, None), int) and getattr(small, key) >= vocab:
                setattr(small, key, 0)
    n = getattr(config, LAYER_COUNT_KEY)
    for key in per_layer_keys(config, n):
        setattr(small, key, getattr(config, key)[:blocks])
    setattr(small, LAYER_COUNT_KEY, blocks)
    return small


def _block_like(template: BlockInfo, prefix: str, i: int) -> BlockInfo:
    """``template`` (block 0) moved to block ``i``: every path under it renamed."""
    old, new = f"{prefix}.0", f"{prefix}.{i}"

    def move(path: str) -> str:
        return new + path[len(old) :] if path == old or path.startswith(old + ".") else path

    def sub(s: Sublayer | None) -> Sublayer | None:
        if s is None:
            return None
        return replace(
            s,
            path=move(s.path),
            pre_norms=[move(p) for p in s.pre_norms],
            post_norms=[move(p) for p in s.post_norms],
            inputs=[move(p) for p in s.inputs],
            output=move(s.output) if s.output else None,
            views={move(k): v for k, v in s.views.items()},
        )

    return replace(
        template,
        index=i,
        path=move(template.path),
        attention=sub(template.attention),
        mlp=sub(template.mlp),
    )


def shell_and_structure(config, dtype: torch.dtype = torch.float32) -> tuple:
    """(a two-block, small-vocabulary copy of the architecture with random weights, the
    structure discovered on it and extended to every block of ``config``)."""
    from depthcut.skeleton import build_from_config

    shell = build_from_config(small_config(config).to_dict(), dtype).eval()
    small = discover_structure(shell)
    n = getattr(config, LAYER_COUNT_KEY)
    blocks = [_block_like(small.blocks[0], small.blocks_path, i) for i in range(n)]
    return shell, replace(small, blocks=blocks)


class BlockSource:
    """The model of a checkpoint directory with its blocks on ``meta`` until loaded."""

    def __init__(self, folder: str | Path, dtype: torch.dtype = torch.float32, device="cpu"):
        from transformers import AutoConfig, AutoModelForCausalLM

        self.folder, self.dtype, self.device = Path(folder), dtype, torch.device(device)
        self.config = AutoConfig.from_pretrained(self.folder, local_files_only=True)
        self.files = shard_index(self.folder)
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(self.config, dtype=dtype)
        shell, self.structure = shell_and_structure(self.config, dtype)
        buffers = {n: b.to(self.device) for n, b in shell.named_buffers()}
        del shell  # before the embeddings are read: the two are never in memory together
        self._materialize_rest(buffers)
        self.model.eval()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.structure.block_list(self.model)

    def _materialize_rest(self, shell_buffers: dict[str, torch.Tensor]) -> None:
        """Everything outside the block stack, from the shards; buffers that are not saved
        (rotary tables) from the two-block copy, which computed them from the same config."""
        prefix = self.structure.blocks_path + "."
        self.load_rest()
        for name, buf in list(self.model.named_buffers()):
            if buf.is_meta and not name.startswith(prefix):
                owner, _, leaf = name.rpartition(".")
                module = self.model.get_submodule(owner) if owner else self.model
                module._buffers[leaf] = shell_buffers[name]
        head = tuple(p + "." for p in self.head_paths())
        params = self.model.named_parameters()
        still = [n for n, p in params if p.is_meta and not n.startswith((prefix, *head))]
        if still:
            raise ModelLoadError(f"{self.folder}: tensors {still[:3]} are not in the shards")
        first = self.structure.blocks_path + ".0."
        self._block_buffers = {
            n[len(first) :]: b for n, b in shell_buffers.items() if n.startswith(first)
        }

    def load_rest(self) -> None:
        """Read the saved tensors outside the blocks and the LM head (embeddings, final norm)
        that are not in memory: at start, and again after ``release_embeddings``."""
        prefix = self.structure.blocks_path + "."
        head = tuple(p + "." for p in self.head_paths())
        names = [
            n
            for n, t in self.model.state_dict().items()
            if t.is_meta and not n.startswith((prefix, *head)) and n in self.files
        ]
        state = {k: self._here(v) for k, v in read_tensors(self.files, names).items()}
        self.model.load_state_dict(state, strict=False, assign=True)
        if getattr(self.config, "tie_word_embeddings", False) and hasattr(
            self.model, "tie_weights"
        ):
            self.model.tie_weights()

    def load_head(self) -> None:
        """Materialise the LM head (for logits: perplexity, KL / CE / PPL scores, Taylor's
        loss); a tied head reads the input embedding's saved tensor."""
        tied = getattr(self.config, "tie_word_embeddings", False)
        embedding = self.model.get_input_embeddings()
        emb_name = next(n + ".weight" for n, m in self.model.named_modules() if m is embedding)
        for path in self.head_paths():
            module = self.model.get_submodule(path)
            for leaf, param in list(module.named_parameters(recurse=False)):
                if not param.is_meta:
                    continue
                name = f"{path}.{leaf}"
                if name not in self.files and tied and leaf == "weight":
                    name = emb_name
                tensor = self._here(read_tensors(self.files, [name])[name])
                setattr(module, leaf, nn.Parameter(tensor, requires_grad=False))

    def _here(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` on this source's device, floating point in its dtype."""
        dtype = self.dtype if tensor.is_floating_point() else tensor.dtype
        return tensor.to(self.device, dtype)

    def head_paths(self) -> list[str]:
        """The tail's Linear layers (the LM head): the streamed local metrics never apply it,
        so it stays on ``meta``."""
        return linear_tail(self.model, self.structure)

    def release_embeddings(self) -> None:
        """Put the embeddings back on ``meta`` once block 0's inputs are recorded."""
        prefix = self.structure.blocks_path + "."
        for name, module in self.model.named_modules():
            if isinstance(module, nn.Embedding) and not name.startswith(prefix):
                module.to("meta")

    def block_tensors(self, i: int, convert: bool = True) -> dict[str, torch.Tensor]:
        """Block ``i``'s saved tensors by their name inside the block; on this source's device
        and in its dtype unless not ``convert``."""
        prefix = f"{self.structure.blocks_path}.{i}."
        names = [n for n in self.files if n.startswith(prefix)]
        read = read_tensors(self.files, names)
        return {n[len(prefix) :]: self._here(t) if convert else t for n, t in read.items()}

    def walk(self, indices: Iterable[int]) -> Iterator[int]:
        """Load the blocks ``indices`` in turn (each loaded while the caller works on it),
        reading the next block's tensors in a background thread meanwhile: at most two
        blocks' weights are in memory."""
        order = list(indices)
        if not order:
            return
        with ThreadPoolExecutor(1, thread_name_prefix="depthcut-prefetch") as pool:
            pending = pool.submit(self.block_tensors, order[0])
            for k, i in enumerate(order):
                tensors = pending.result()
                if k + 1 < len(order):
                    pending = pool.submit(self.block_tensors, order[k + 1])
                with self.loaded(i, tensors):
                    yield i
                del tensors

    @contextmanager
    def loaded(self, i: int, tensors: dict | None = None) -> Iterator[nn.Module]:
        """Block ``i`` with its weights (``tensors``: already read by ``block_tensors``), in
        the model, for the duration of the context."""
        shell = self.blocks[i]
        block = copy.deepcopy(shell).to_empty(device=self.device)
        own = self.block_tensors(i) if tensors is None else tensors
        block.load_state_dict(own, strict=False, assign=True)
        persistent = set(block.state_dict())
        missing = [k for k in persistent if k not in own and k not in self._block_buffers]
        if missing:
            raise ModelLoadError(f"{self.folder}: block {i} lacks {missing[:3]}")
        for name, buf in self._block_buffers.items():
            if name not in own:
                block.get_buffer(name).copy_(buf)
        self.blocks[i] = block.eval()
        try:
            yield block
        finally:
            self.blocks[i] = shell
