"""Weights replaced or removed by surgery give back their memory-mapped pages (a pruned model
loaded from safetensors no longer holds its dense original beside it)."""

import os
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthcut.calibrate import RollingCache
from depthcut.graph.structure import discover_structure
from depthcut.methods.depth.surgery import remove_blocks
from depthcut.surgery.release import page_out, release
from depthcut.surgery.slice import slice_in, slice_out
from tiny import tiny_calib, tiny_llama

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="madvise and /proc: Linux only")

MLP = 1024  # 64 × 1024 float32 weights: 64 whole pages each


def resident_kib(path) -> int:
    """Resident KiB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                inside = len(fields) >= 6 and fields[-1] == str(path)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


@pytest.fixture
def mapped(tmp_path):
    """A tiny Llama saved and loaded back from safetensors (memory-mapped), every page read."""
    tiny_llama(layers=2, hidden_size=64, intermediate_size=MLP).save_pretrained(tmp_path)
    with open(tmp_path / "model.safetensors", "rb") as written:
        os.fsync(written.fileno())  # the kernel pages out clean pages only, not dirty ones
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        sum(float(p.sum()) for p in model.parameters())
    return model, tmp_path / "model.safetensors"


def mlp_kib(blocks: int) -> int:
    return 3 * blocks * 64 * MLP * 4 // 1024  # gate, up and down of ``blocks`` blocks


def test_slicing_neurons_releases_the_dense_weights_pages(mapped):
    model, file = mapped
    before = resident_kib(file)
    assert before > mlp_kib(2)  # the MLPs' pages are resident
    keep = torch.arange(MLP // 2)
    for block in model.model.layers:
        slice_out(block.mlp.gate_proj, keep)
        slice_out(block.mlp.up_proj, keep)
        slice_in(block.mlp.down_proj, keep)
    freed = before - resident_kib(file)
    assert mlp_kib(2) - 6 * 8 <= freed <= mlp_kib(2)  # at most two edge pages kept a weight


def test_removing_a_block_releases_its_pages(mapped):
    model, file = mapped
    before = resident_kib(file)
    remove_blocks(model, discover_structure(model), {1})
    attention = (64 * 64 * 2 + 64 * 32 * 2) * 4 // 1024  # q, o and the two KV projections
    freed = before - resident_kib(file)
    assert mlp_kib(1) + attention - 8 * 8 <= freed <= mlp_kib(1) + attention


def test_a_released_weight_reads_the_checkpoint_and_shared_storage_is_kept(mapped):
    model, _ = mapped
    mlp = model.model.layers[0].mlp
    weight = mlp.up_proj.weight
    del mlp.up_proj.weight  # the weight is the storage's only tensor
    saved = weight.detach().clone()
    view = weight.detach()[1:]
    assert release([weight]) == 0  # ``view`` shares the storage
    del view
    with torch.no_grad():
        weight.add_(1.0)  # copy-on-write: the process's own pages now
    assert release([weight]) >= 64 * MLP * 4 - 2 * 4096  # its whole pages
    inner = slice(1024, -1024)  # whole pages inside the weight read the file's bytes again
    torch.testing.assert_close(weight.detach().flatten()[inner], saved.flatten()[inner])
    assert release([torch.ones(64, MLP)]) == 0  # anonymous memory is the allocator's


def test_a_walk_over_the_blocks_pages_out_what_it_passed_and_changes_nothing(mapped):
    """RollingCache pages the mapped weights out at the start and each block once passed:
    after the walk less than one block is resident; the model computes what it did."""
    model, file = mapped
    calib = tiny_calib(n=4)
    batch = calib.batches()[0]
    with torch.no_grad():
        before = model(**batch).logits
    assert resident_kib(file) > mlp_kib(2)
    cache = RollingCache(model, discover_structure(model), calib, progress=False)
    with torch.no_grad():
        for i in range(cache.num_blocks):
            cache.advance(i)
            assert resident_kib(file) < mlp_kib(1)  # the block just passed is gone too
        torch.testing.assert_close(model(**batch).logits, before, rtol=0, atol=0)


def test_paging_out_keeps_what_was_written_after_the_load(mapped):
    model, file = mapped
    weight = model.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        weight.mul_(2.0)  # copy-on-write: these pages are the process's own now
    written = weight.detach().clone()
    assert page_out(model.parameters()) > 0
    assert resident_kib(file) < mlp_kib(1)
    torch.testing.assert_close(weight.detach(), written, rtol=0, atol=0)
    assert page_out([torch.ones(64, MLP)]) == 0  # anonymous memory is the allocator's
